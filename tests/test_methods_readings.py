"""Identities and switches of the methods that are readings (rekd, krdistill, ltkd): what each reading claims
about its loss, checked exactly. The registry-generated tests (naive reference, gradients, bf16) for every
method are in test_methods.py; this file reuses its helpers and naive references."""

import pytest
import torch
import torch.nn.functional as F

from ltcompress.errors import UsageError
from ltcompress.methods import METHODS, method_info
from ltcompress.methods.base import MethodContext, StepInputs, kl_rows
from method_references import naive_krdistill, naive_ltkd
from test_methods import C, COUNTS, batch, build, features, step


# ---------------------------------------------------------------- rekd
def test_rekd_weighted_decomposition_is_kd_per_sample():
    from ltcompress.methods.dkd import binary_log_probs
    from ltcompress.methods.rekd import rekd_terms, topk_mask

    zs, zt, y = batch(9)
    T = 4.0
    top = topk_mask(zs, 3)
    tisd, ntid = rekd_terms(zs, zt, top, T)
    mass = binary_log_probs(zt, top, T).exp()  # teacher's [P(M), P(not M)]
    binary = (
        T
        * T
        * F.kl_div(binary_log_probs(zs, top, T), binary_log_probs(zt, top, T), log_target=True, reduction="none").sum(1)
    )
    kd = T * T * F.kl_div(F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), log_target=True, reduction="none").sum(1)
    torch.testing.assert_close(mass[:, 0] * tisd + mass[:, 1] * ntid + binary, kd)


@pytest.mark.parametrize("k", [1, C - 1, C])
def test_rekd_refuses_k_outside_2_to_c_minus_2(k):
    with pytest.raises(UsageError, match="2 <= k <= C - 2") as info:
        build("rekd", k=k)
    assert info.value.exit_code == 2
    build("rekd", k=2)
    build("rekd", k=C - 2)


def test_rekd_default_k_is_capped_and_topk_source_matters():
    assert build("rekd").k == min(5, C - 2)
    zs, zt, y = batch(10)
    student_top = build("rekd", topk_from="student")(StepInputs(zs, y, 30.0, zt))
    teacher_top = build("rekd", topk_from="teacher")(StepInputs(zs, y, 30.0, zt))
    assert abs(float(student_top) - float(teacher_top)) > 1e-4


def test_krdistill_rectification_puts_the_true_class_first():
    from ltcompress.methods.krdistill import rectify_logits

    zs, zt, y = batch(12, n=64)
    rect = rectify_logits(zt, y, COUNTS, tau=1.0)
    assert torch.equal(rect.argmax(1), y)
    prior_free = zt - (COUNTS / COUNTS.sum()).log()
    already = prior_free.argmax(1) == y
    assert already.any() and not already.all()
    torch.testing.assert_close(rect[already], prior_free[already])
    assert torch.equal(rect.sort(1).values, prior_free.sort(1).values)  # entries swapped, none changed


def test_krdistill_parts_switch_off():
    zs, zt, y = batch(13)
    ce = F.cross_entropy(zs, y)
    none = build("krdistill", logit_term=False, feature_term=False)
    assert not none.needs_features and not list(none.parameters())
    torch.testing.assert_close(none(step(none, zs, zt, y, 1.0)), ce)
    logits_only = build("krdistill", feature_term=False)
    assert float(logits_only(step(logits_only, zs, zt, y, 1.0))) > float(ce)


# ---------------------------------------------------------------- krdistill switches
FIRST_READING = {"T": 4.0, "prior_after_temper": False, "swap": "all", "feature_term": True}
SWITCHES = [
    {},
    FIRST_READING,
    {"prior_after_temper": False},
    {"swap": "all"},
    {"swap": "none"},
    {"feature_term": True},
    {"feature_term": True, "feature_warmup": 5.0},
    {"feature_term": True, "swap": "tail", "feature_warmup": 2.5, "tau": 0.5, "lam": 0.2},
    {"swap": "none", "feature_term": False},
    {"feature_term": True, "logit_term": False},
]


@pytest.mark.parametrize("args", SWITCHES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "default")
def test_krdistill_switches_match_naive_reference(args):
    zs, zt, y = batch(15, n=16)
    fs, ft = features(15, n=16)
    method = build("krdistill", epochs=240, **args)
    extra = {"method": method, "fs": fs.double().tolist(), "ft": ft.double().tolist()}
    for epoch in (1.25, 3.0, 30.5):  # inside and after a feature warm-up
        got = float(method(step(method, zs, zt, y, epoch, fs, ft)).detach())
        want = naive_krdistill(
            zs.double().tolist(), zt.double().tolist(), y.tolist(), method.params, COUNTS.tolist(), epoch, 240, extra
        )
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_krdistill_defaults_are_the_second_reading():
    p = METHODS.get("krdistill").Params()
    assert (
        p.prior_after_temper,
        p.swap,
        p.feature_term,
        p.logit_term,
        p.feature_warmup,
        p.T,
        p.tau,
        p.lam,
        p.beta,
    ) == (True, "tail", False, True, 0.0, 2.0, 1.0, 0.5, 1.0)
    assert not METHODS.get("krdistill")(p, MethodContext(COUNTS, 10)).needs_features  # so the logit cache serves it
    assert "second reading" in method_info("krdistill").reading


def test_krdistill_prior_after_temper_is_tau_times_t_before():
    """softmax(zt/T - tau log pi) == softmax((zt - T tau log pi) / T), swap included."""
    zs, zt, y = batch(16, n=32)
    after = build("krdistill", feature_term=False, prior_after_temper=True, tau=1.0, T=4.0, swap="all")
    before = build("krdistill", feature_term=False, prior_after_temper=False, tau=4.0, T=4.0, swap="all")
    torch.testing.assert_close(after(StepInputs(zs, y, 1.0, zt)), before(StepInputs(zs, y, 1.0, zt)))
    first = build("krdistill", **{**FIRST_READING, "feature_term": False})
    assert abs(float(after(StepInputs(zs, y, 1.0, zt))) - float(first(StepInputs(zs, y, 1.0, zt)))) > 1e-3


def test_krdistill_swap_tail_touches_only_medium_and_few_labels():
    from ltcompress.methods.krdistill import rectified_target

    zs, zt, y = batch(17, n=64)
    tail = build("krdistill", swap="tail", feature_term=False)
    assert tail.tail_classes.tolist() == [n <= 100 for n in COUNTS.tolist()]
    got = rectified_target(zt, y, COUNTS, 4.0, 1.0, False, tail.swap_rows(y))
    every = rectified_target(zt, y, COUNTS, 4.0, 1.0, False, None)
    unswapped = F.log_softmax((zt - (COUNTS / COUNTS.sum()).log()) / 4.0, 1)
    is_tail = COUNTS[y] <= 100
    assert is_tail.any() and not is_tail.all()
    torch.testing.assert_close(got[is_tail], every[is_tail])
    torch.testing.assert_close(got[~is_tail], unswapped[~is_tail])
    assert not torch.allclose(every[~is_tail], unswapped[~is_tail])  # "all" would have swapped some of them
    assert torch.equal(got[is_tail].argmax(1), y[is_tail])
    none = build("krdistill", swap="none", feature_term=False)
    torch.testing.assert_close(rectified_target(zt, y, COUNTS, 4.0, 1.0, False, none.swap_rows(y)), unswapped)
    # the tail is the run's: with a lower many_threshold fewer classes are tail
    ctx = MethodContext(COUNTS, 10, many_threshold=50, few_threshold=10)
    cls = METHODS.get("krdistill")
    assert cls(cls.make_params({"swap": "tail"}), ctx).tail_classes.tolist() == [False, False, False, True, True, True]


def test_krdistill_feature_warmup_ramps_beta():
    zs, zt, y = batch(18)
    method = build("krdistill", logit_term=False, feature_term=True, feature_warmup=4.0, beta=2.0)
    flat = build("krdistill", logit_term=False, feature_term=True, beta=2.0)
    flat.projector.load_state_dict(method.projector.state_dict())
    ce = F.cross_entropy(zs, y)
    with torch.no_grad():
        full = float(flat(step(flat, zs, zt, y, 1.0)) - ce)
        for epoch, ramp in ((1.0, 0.25), (2.0, 0.5), (4.0, 1.0), (30.0, 1.0)):
            assert float(method(step(method, zs, zt, y, epoch)) - ce) == pytest.approx(ramp * full, rel=1e-5)
    assert method.feature_weight(1.0) == pytest.approx(0.5) and flat.feature_weight(1.0) == 2.0


@pytest.mark.parametrize(
    "args, match",
    [
        ({"swap": "head"}, "swap must be one of"),
        ({"feature_warmup": -1.0}, "feature_warmup >= 0"),
        ({"prior_after_temper": "yes"}, "prior_after_temper"),
    ],
)
def test_krdistill_bad_switches_are_usage_errors(args, match):
    with pytest.raises(UsageError, match=match) as info:
        build("krdistill", **args)
    assert info.value.exit_code == 2


# ---------------------------------------------------------------- ltkd
GROUPINGS = [
    (COUNTS, 100, 20, 3),
    (COUNTS, 1000, 20, 2),
    (COUNTS, 100, 3, 2),
    (COUNTS, 1, 1, 1),
    (torch.tensor([500.0, 400, 300, 150, 120, 101]), 100, 20, 1),
]


@pytest.mark.parametrize("counts, many, few, n_groups", GROUPINGS)
def test_ltkd_groups_are_the_reports_shot_groups(counts, many, few, n_groups):
    from ltcompress.data.core import shot_groups
    from ltcompress.methods.ltkd import shot_group_membership

    membership = shot_group_membership(counts, many, few)
    expected = [g for g in shot_groups(counts.numpy(), many, few).values() if g]  # absent groups dropped
    assert membership.shape == (C, n_groups) and membership.sum(1).tolist() == [1] * C
    assert [torch.nonzero(membership[:, g]).flatten().tolist() for g in range(n_groups)] == expected


@pytest.mark.parametrize("counts, many, few, n_groups", GROUPINGS)
def test_ltkd_group_decomposition_is_kd_exactly(counts, many, few, n_groups):
    """KL(p_t || p_s) = KL(P_t || P_s) + sum_g P_t(g) KL(p_t(.|g) || p_s(.|g)), per sample, in float64."""
    from ltcompress.methods.ltkd import ltkd_terms, shot_group_membership

    zs, zt, _ = batch(19, n=32)
    zs, zt, T = zs.double(), zt.double(), 4.0
    log_mass_s, log_mass_t, within = ltkd_terms(zs, zt, shot_group_membership(counts, many, few), T)
    assert within.dtype == torch.float64 and within.shape == (32, n_groups)
    kd = kl_rows(F.log_softmax(zt / T, 1), F.log_softmax(zs / T, 1))
    split = kl_rows(log_mass_t, log_mass_s) + (log_mass_t.exp() * within).sum(1)
    torch.testing.assert_close(split, kd, rtol=1e-6, atol=1e-6)
    if n_groups > 1:  # the weights P_t(g) matter: the plain sum is not KD
        assert not torch.allclose(kl_rows(log_mass_t, log_mass_s) + within.sum(1), kd)


def test_ltkd_with_a_single_group_is_kd():
    """One group: no cross-group term, within = KL, so ltkd is KD with a_ce = 1 and a_kd = beta."""
    zs, zt, y = batch(20)
    counts = torch.tensor([500.0, 400, 300, 150, 120, 101])
    ltkd = build("ltkd", counts=counts, T=3.0, alpha=5.0, beta=0.7)
    kd = build("kd", T=3.0, a_ce=1.0, a_kd=0.7)
    torch.testing.assert_close(ltkd(StepInputs(zs, y, 1.0, zt)), kd(StepInputs(zs, y, 1.0, zt)))


@pytest.mark.parametrize("many, few", [(100, 20), (50, 10), (1000, 20), (100, 3), (1, 1)])
@pytest.mark.parametrize("alpha, beta, T, tau", [(1.0, 1.0, 4.0, 1.0), (0.3, 2.0, 2.0, 0.5), (1.0, 1.0, 4.0, 0.0)])
def test_ltkd_matches_naive_reference_for_any_grouping(many, few, alpha, beta, T, tau):
    zs, zt, y = batch(21, n=16)
    cls = METHODS.get("ltkd")
    method = cls(
        cls.make_params({"alpha": alpha, "beta": beta, "T": T, "tau": tau}),
        MethodContext(COUNTS, 10, many_threshold=many, few_threshold=few),
    )
    got = float(method(StepInputs(zs, y, 1.0, zt)))
    want = naive_ltkd(
        zs.double().tolist(),
        zt.double().tolist(),
        y.tolist(),
        method.params,
        COUNTS.tolist(),
        1.0,
        10,
        {"method": method},
    )
    assert got == pytest.approx(want, rel=1e-6, abs=1e-6)


def test_ltkd_rebalanced_target_moves_mass_to_the_tail_groups():
    from ltcompress.methods.ltkd import group_image_shares, ltkd_terms, shot_group_membership

    _, zt, _ = batch(22, n=32)
    membership = shot_group_membership(COUNTS, 100, 20)
    shares = group_image_shares(COUNTS, membership)
    torch.testing.assert_close(shares, torch.tensor([700.0, 110, 17]) / 827)
    _, log_mass_t, _ = ltkd_terms(zt, zt, membership, 4.0)
    rebalanced = F.softmax(log_mass_t - shares.log(), 1)
    teacher = log_mass_t.exp()
    assert torch.all(rebalanced[:, 0] < teacher[:, 0]) and torch.all(rebalanced[:, 2] > teacher[:, 2])
