"""Generated from the method registry: every registered method must have a naive reference here, so a new
method cannot skip these tests."""

import pytest
import torch
import torch.nn.functional as F

from ltcompress.errors import UsageError
from ltcompress.methods import METHODS, list_methods
from ltcompress.methods.base import MethodContext, StepInputs, TrainingPass, effective_number_weights
from ltcompress.methods.bkd import bkd_loss
from ltcompress.methods.kd import kd_loss
from method_references import REFERENCES

C = 6
COUNTS = torch.tensor([500.0, 200, 80, 30, 12, 5])
D_STUDENT, D_TEACHER = 5, 7  # penultimate feature widths for methods that need features


NAMES = METHODS.names()


def build(name, counts=COUNTS, epochs=10, **args):
    """A method ready to use: prepare() gets a synthetic training pass when the method asks for one."""
    cls = METHODS.get(name)
    method = cls(cls.make_params(args), MethodContext(counts, epochs))
    if method.needs_training_pass:
        g = torch.Generator().manual_seed(99)
        labels = torch.arange(C).repeat(4)
        method.prepare(
            TrainingPass(
                labels,
                torch.randn(len(labels), C, generator=g),
                torch.randn(len(labels), D_TEACHER, generator=g),
                D_STUDENT,
            )
        )
    return method


def batch(seed=0, n=8, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(n, C, generator=g) * scale).to(dtype)
    zt = (torch.randn(n, C, generator=g) * scale).to(dtype)
    y = torch.randint(0, C, (n,), generator=g)
    return zs, zt, y


def features(seed=0, n=8, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 1000)
    return (
        (torch.randn(n, D_STUDENT, generator=g) * scale).to(dtype),
        (torch.randn(n, D_TEACHER, generator=g) * scale).to(dtype),
    )


def step(method, zs, zt, y, epoch, fs=None, ft=None):
    """StepInputs holding exactly what the method declares it needs."""
    if fs is None and method.needs_features:
        fs, ft = features(n=len(y))
    return StepInputs(
        zs,
        y,
        epoch,
        zt if method.uses_teacher else None,
        fs if method.needs_features else None,
        ft if method.needs_features else None,
    )


def test_every_registered_method_has_a_reference_and_metadata():
    assert set(NAMES) == set(REFERENCES), "add a naive reference for each new method"
    for info in list_methods():
        assert info.summary and info.source and info.status in ("exact", "reading")


@pytest.mark.parametrize("name", NAMES)
def test_matches_naive_reference(name):
    zs, zt, y = batch()
    fs, ft = features()
    method = build(name, epochs=240)
    extra = {"method": method, "fs": fs.double().tolist(), "ft": ft.double().tolist()}
    for epoch in (1.25, 30.5, 200.0):  # inside and after a warm-up of 20 of 240 epochs; after LDAM's deferral
        got = method(step(method, zs, zt, y, epoch, fs, ft))
        want = REFERENCES[name](
            zs.double().tolist(), zt.double().tolist(), y.tolist(), method.params, COUNTS.tolist(), epoch, 240, extra
        )
        assert got.dim() == 0
        assert float(got.detach()) == pytest.approx(want, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_finite_scalar_and_gradient_reaches_student_only(name):
    zs, zt, y = batch(1)
    fs, ft = features(1)
    student, student_feats = zs.clone().requires_grad_(True), fs.clone().requires_grad_(True)
    teacher_param, teacher_feats = zt.clone().requires_grad_(True), ft.clone().requires_grad_(True)
    method = build(name)
    with torch.no_grad():  # the loop runs the teacher like this
        teacher_logits, teacher_features = teacher_param * 1.0, teacher_feats * 1.0
    loss = method(step(method, student, teacher_logits, y, 1.0, student_feats, teacher_features))
    loss.backward()
    assert torch.isfinite(loss) and loss.dim() == 0
    assert student.grad is not None and student.grad.abs().sum() > 0
    if method.needs_features:
        assert student_feats.grad.abs().sum() > 0
    for param in method.parameters():  # a method's own parameters (projectors) train with the student
        assert param.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_no_nan_in_bf16_with_huge_logits(name):
    zs, zt, y = batch(2, scale=1e4, dtype=torch.bfloat16)
    fs, ft = features(2, scale=1e4, dtype=torch.bfloat16)
    method = build(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast keeps log_softmax in bf16 unless cast
        for epoch in (1.0, 9.5):
            assert torch.isfinite(method(step(method, zs, zt, y, epoch, fs, ft)))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_argument_is_usage_error(name):
    with pytest.raises(UsageError, match="does not exist") as info:
        build(name, not_a_param=1)
    assert info.value.exit_code == 2


def test_bkd_with_equal_counts_is_kd():
    zs, zt, y = batch(3)
    equal = torch.full((C,), 100.0)
    bkd = build("bkd", counts=equal, T=3.0, alpha=0.7)
    kd = build("kd", T=3.0, a_ce=1.0, a_kd=0.7)
    torch.testing.assert_close(bkd(StepInputs(zs, y, 1.0, zt)), kd(StepInputs(zs, y, 1.0, zt)))


def test_bkd_with_unequal_counts_is_not_kd():
    """BKD re-weights the teacher's classes (columns) by w_c; weighting each row by w[y] instead would cancel in
    the renormalisation and give KD back, so a loss equal to KD here means that pitfall."""
    zs, zt, y = batch(4)
    p = dict(T=2.0, alpha=1.0)
    bkd = bkd_loss(zs, zt, y, effective_number_weights(COUNTS, 0.9999), **p)
    kd = kd_loss(zs, zt, y, T=2.0, a_ce=1.0, a_kd=1.0)
    assert abs(float(bkd) - float(kd)) > 1e-3


def test_bkd_weights_switch_on_at_weights_from_epoch():
    zs, zt, y = batch(5)
    late = build("bkd", weights_from_epoch=3)
    kd = build("kd", T=2.0, a_ce=1.0, a_kd=1.0)
    early = StepInputs(zs, y, 3.9, zt)  # 0-based epoch 2: plain KD
    torch.testing.assert_close(late(early), kd(early))
    assert abs(float(late(StepInputs(zs, y, 4.0, zt))) - float(kd(early))) > 1e-3


def test_effective_number_weights():
    w = effective_number_weights(COUNTS, 0.9999)
    assert float(w.sum()) == pytest.approx(C, rel=1e-5)
    assert torch.all(w[1:] > w[:-1])  # rarer classes weigh more
    torch.testing.assert_close(effective_number_weights(COUNTS, 0.0), torch.ones(C))


def test_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="should be of type float"):
        build("kd", T="hot")
    with pytest.raises(UsageError, match="T > 0"):
        build("bkd", T=0.0)


def test_la_with_tau_1_is_bsce():
    zs, _, y = batch(6)
    torch.testing.assert_close(build("la")(StepInputs(zs, y, 1.0)), build("bsce")(StepInputs(zs, y, 1.0)))


def test_dive_power_equals_teacher_temperature():
    from ltcompress.methods.dive import dive_target_log_probs

    _, zt, _ = batch(7)
    for tau, power in ((3.0, 0.5), (2.0, 0.25), (4.0, 1.0)):
        torch.testing.assert_close(dive_target_log_probs(zt, tau, power), F.log_softmax(zt * power / tau, 1))


def test_dkd_weighted_decomposition_is_kd_per_sample():
    from ltcompress.methods.dkd import dkd_terms

    zs, zt, y = batch(8)
    T = 4.0
    tckd, nckd = dkd_terms(zs, zt, y, T)
    kd = T * T * F.kl_div(F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), log_target=True, reduction="none").sum(1)
    p_target = F.softmax(zt / T, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tckd + (1 - p_target) * nckd, kd)
    assert not torch.allclose(tckd + nckd, kd)  # the plain sum is not KD


@pytest.mark.parametrize("name", ["dkd", "rekd"])
def test_warmup_scales_with_the_run(name):
    zs, zt, y = batch(11)
    long_run, short_run = build(name, epochs=240), build(name, epochs=24)
    ce = F.cross_entropy(zs, y)
    kd_part_long = float(long_run(StepInputs(zs, y, 1.0, zt)) - ce)  # warm-up 1/20 after epoch 1 of 240
    kd_part_short = float(short_run(StepInputs(zs, y, 1.0, zt)) - ce)  # warm-up over 2 epochs of 24
    assert kd_part_short == pytest.approx(10 * kd_part_long, rel=1e-4)


def test_ldam_margins_and_cosine_classifier():
    from ltcompress.methods.ldam_drw import NormedLinear, ldam_margins

    m = ldam_margins(COUNTS, 0.5)
    assert float(m.max()) == pytest.approx(0.5) and torch.all(m[1:] > m[:-1])
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, C))
    student.get_classifier = lambda: student[1]
    adapted = build("ldam_drw").adapt_student(student)
    assert isinstance(adapted[1], NormedLinear)
    with torch.no_grad():
        out = adapted(torch.randn(4, 12))
    assert out.shape == (4, C) and float(out.abs().max()) <= 1.0 + 1e-6  # cosine logits


def test_virtual_example_distribution_sums_to_n_and_flattens_when_hot():
    from ltcompress.methods.dive import virtual_example_distribution

    _, zt, _ = batch(14, n=50)
    v = virtual_example_distribution(zt, tau=3.0, power=0.5)
    assert float(v.sum()) == pytest.approx(50, rel=1e-5)
    torch.testing.assert_close(virtual_example_distribution(zt, tau=1e6, power=0.5), torch.full((C,), 50 / C))
