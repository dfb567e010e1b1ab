"""Generated from the method registry: every registered method must have a naive reference here, so a new
method cannot skip these tests."""
import math

import pytest
import torch
import torch.nn.functional as F

from ltcompress.errors import UsageError
from ltcompress.methods import METHODS, list_methods
from ltcompress.methods.base import MethodContext, StepInputs, TrainingPass, effective_number_weights
from ltcompress.methods.bkd import bkd_loss
from ltcompress.methods.kd import kd_loss

C = 6
COUNTS = torch.tensor([500.0, 200, 80, 30, 12, 5])
D_STUDENT, D_TEACHER = 5, 7  # penultimate feature widths for methods that need features


# ---------------------------------------------------------------- naive per-sample references (float64)
def _log_softmax(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _kl(log_q, log_p):
    return sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p))


def _ce(z, y):
    return -_log_softmax(z)[y]


def naive_ce(zs, zt, y, params, counts, epoch, epochs, extra):
    return sum(_ce(zs[i], y[i]) for i in range(len(y))) / len(y)


def naive_kd(zs, zt, y, p, counts, epoch, epochs, extra):
    total = 0.0
    for i in range(len(y)):
        log_q = _log_softmax([v / p.T for v in zt[i]])
        log_p = _log_softmax([v / p.T for v in zs[i]])
        total += p.a_ce * _ce(zs[i], y[i]) + p.a_kd * p.T ** 2 * _kl(log_q, log_p)
    return total / len(y)


def naive_bkd(zs, zt, y, p, counts, epoch, epochs, extra):
    w = [(1 - p.beta) / (1 - p.beta ** n) for n in counts]
    w = [len(w) * v / sum(w) for v in w]
    if epoch < p.weights_from_epoch + 1:
        w = [1.0] * len(w)
    total = 0.0
    for i in range(len(y)):
        q = [math.exp(v / p.T) * wc for v, wc in zip(zt[i], w)]  # teacher softmax re-weighted per class
        log_q = [math.log(v / sum(q)) for v in q]
        log_p = _log_softmax([v / p.T for v in zs[i]])
        total += _ce(zs[i], y[i]) + p.alpha * p.T ** 2 * _kl(log_q, log_p)
    return total / len(y)


def naive_bsce(zs, zt, y, p, counts, epoch, epochs, extra):
    return sum(_ce([v + math.log(n) for v, n in zip(zs[i], counts)], y[i]) for i in range(len(y))) / len(y)


def naive_la(zs, zt, y, p, counts, epoch, epochs, extra):
    total = sum(counts)
    return sum(_ce([v + p.tau * math.log(n / total) for v, n in zip(zs[i], counts)], y[i])
               for i in range(len(y))) / len(y)


def _warm(epoch, warmup, epochs):
    return min(epoch / max(1, round(warmup * epochs / 240)), 1.0)


def _probs(z, T):
    e = [math.exp(v / T - max(z) / T) for v in z]
    return [v / sum(e) for v in e]


def _kl_probs(q, p):
    return sum(a * math.log(a / b) for a, b in zip(q, p) if a > 0)


def naive_dkd(zs, zt, y, p, counts, epoch, epochs, extra):
    total = 0.0
    for i in range(len(y)):
        ps, pt = _probs(zs[i], p.T), _probs(zt[i], p.T)
        t = y[i]
        tckd = _kl_probs([pt[t], 1 - pt[t]], [ps[t], 1 - ps[t]])
        others = [c for c in range(len(ps)) if c != t]
        qs = [ps[c] / sum(ps[o] for o in others) for c in others]
        qt = [pt[c] / sum(pt[o] for o in others) for c in others]
        kd = p.T ** 2 * (p.alpha * tckd + p.beta * _kl_probs(qt, qs))
        total += _ce(zs[i], t) + _warm(epoch, p.warmup, epochs) * kd
    return total / len(y)


def naive_dive(zs, zt, y, p, counts, epoch, epochs, extra):
    total = 0.0
    for i in range(len(y)):
        t = [v ** p.power for v in _probs(zt[i], p.tau)]
        t = [v / sum(t) for v in t]
        bsce = _ce([v + math.log(n) for v, n in zip(zs[i], counts)], y[i])
        total += (1 - p.alpha) * bsce + p.alpha * p.tau ** 2 * _kl_probs(t, _probs(zs[i], p.tau))
    return total / len(y)


def naive_rekd(zs, zt, y, p, counts, epoch, epochs, extra):
    k = min(5, len(zs[0]) - 2) if p.k is None else p.k
    total = 0.0
    for i in range(len(y)):
        source = zs[i] if p.topk_from == "student" else zt[i]
        top = sorted(range(len(source)), key=lambda c: -source[c])[:k]
        rest = [c for c in range(len(source)) if c not in top]
        ps, pt = _probs(zs[i], p.T), _probs(zt[i], p.T)

        def within(prob, members):
            return [prob[c] / sum(prob[m] for m in members) for c in members]

        tisd = _kl_probs(within(pt, top), within(ps, top))
        ntid = _kl_probs(within(pt, rest), within(ps, rest))
        total += _ce(zs[i], y[i]) + _warm(epoch, p.warmup, epochs) * p.T ** 2 * (p.alpha * tisd + p.beta * ntid)
    return total / len(y)


def naive_ldam_drw(zs, zt, y, p, counts, epoch, epochs, extra):
    m = [n ** -0.25 for n in counts]
    m = [v * p.max_m / max(m) for v in m]
    deferred = epoch >= round(p.defer_at * epochs) + 1
    if deferred:
        w = [(1 - p.beta) / (1 - p.beta ** n) for n in counts]
        w = [len(w) * v / sum(w) for v in w]
    else:
        w = [1.0] * len(counts)
    num = den = 0.0
    for i in range(len(y)):
        z = [p.s * (v - (m[c] if c == y[i] else 0.0)) for c, v in enumerate(zs[i])]
        num += w[y[i]] * _ce(z, y[i])
        den += w[y[i]]
    return num / den  # PyTorch's weight= semantics


def naive_krdistill(zs, zt, y, p, counts, epoch, epochs, extra):
    method, fs, ft = extra["method"], extra["fs"], extra["ft"]
    total_n = sum(counts)
    out = 0.0
    for i in range(len(y)):
        loss = _ce(zs[i], y[i])
        if p.logit_term:
            zr = [(v / p.T if p.prior_after_temper else v) - p.tau * math.log(n / total_n)
                  for v, n in zip(zt[i], counts)]
            if p.swap == "all" or (p.swap == "tail" and counts[y[i]] <= method.ctx.many_threshold):
                top = max(range(len(zr)), key=lambda c: zr[c])
                zr[top], zr[y[i]] = zr[y[i]], zr[top]
            target = _probs(zr, 1.0 if p.prior_after_temper else p.T)
            loss += p.alpha * p.T ** 2 * _kl_probs(target, _probs(zs[i], p.T))
        if p.feature_term:
            W, b = method.projector.weight.double().tolist(), method.projector.bias.double().tolist()
            proto = method.prototypes.double().tolist()[y[i]]
            proj = [sum(W[r][k] * fs[i][k] for k in range(len(fs[i]))) + b[r] for r in range(len(W))]
            target = [(1 - p.lam) * a + p.lam * m for a, m in zip(ft[i], proto)]
            na, nt = math.sqrt(sum(v * v for v in proj)), math.sqrt(sum(v * v for v in target))
            ramp = min(epoch / p.feature_warmup, 1.0) if p.feature_warmup > 0 else 1.0
            loss += p.beta * ramp * sum((a / na - t / nt) ** 2 for a, t in zip(proj, target))
        out += loss
    return out / len(y)


def naive_ltkd(zs, zt, y, p, counts, epoch, epochs, extra):
    ctx = extra["method"].ctx
    groups = [[c for c, n in enumerate(counts) if n > ctx.many_threshold],
              [c for c, n in enumerate(counts) if ctx.few_threshold <= n <= ctx.many_threshold],
              [c for c, n in enumerate(counts) if n < ctx.few_threshold]]
    groups = [g for g in groups if g]  # absent groups dropped
    pi = [sum(counts[c] for c in g) / sum(counts) for g in groups]
    total = 0.0
    for i in range(len(y)):
        ps, pt = _probs(zs[i], p.T), _probs(zt[i], p.T)
        mass_s, mass_t = [sum(ps[c] for c in g) for g in groups], [sum(pt[c] for c in g) for g in groups]
        rebalanced = [m / share ** p.tau for m, share in zip(mass_t, pi)]
        cross = _kl_probs([v / sum(rebalanced) for v in rebalanced], mass_s)
        within = sum(_kl_probs([pt[c] / mass_t[k] for c in g], [ps[c] / mass_s[k] for c in g])
                     for k, g in enumerate(groups)) / len(groups)
        total += _ce(zs[i], y[i]) + p.T ** 2 * (p.alpha * cross + p.beta * within)
    return total / len(y)


REFERENCES = {"ce": naive_ce, "kd": naive_kd, "bkd": naive_bkd, "bsce": naive_bsce, "la": naive_la,
              "dkd": naive_dkd, "dive": naive_dive, "rekd": naive_rekd, "ldam_drw": naive_ldam_drw,
              "krdistill": naive_krdistill, "ltkd": naive_ltkd}
NAMES = METHODS.names()


def build(name, counts=COUNTS, epochs=10, **args):
    """A method ready to use: prepare() gets a synthetic training pass when the method asks for one."""
    cls = METHODS.get(name)
    method = cls(cls.make_params(args), MethodContext(counts, epochs))
    if method.needs_training_pass:
        g = torch.Generator().manual_seed(99)
        labels = torch.arange(C).repeat(4)
        method.prepare(TrainingPass(labels, torch.randn(len(labels), C, generator=g),
                                    torch.randn(len(labels), D_TEACHER, generator=g), D_STUDENT))
    return method


def batch(seed=0, n=8, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(n, C, generator=g) * scale).to(dtype)
    zt = (torch.randn(n, C, generator=g) * scale).to(dtype)
    y = torch.randint(0, C, (n,), generator=g)
    return zs, zt, y


def features(seed=0, n=8, scale=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed + 1000)
    return ((torch.randn(n, D_STUDENT, generator=g) * scale).to(dtype),
            (torch.randn(n, D_TEACHER, generator=g) * scale).to(dtype))


def step(method, zs, zt, y, epoch, fs=None, ft=None):
    """StepInputs holding exactly what the method declares it needs."""
    if fs is None and method.needs_features:
        fs, ft = features(n=len(y))
    return StepInputs(zs, y, epoch, zt if method.uses_teacher else None,
                      fs if method.needs_features else None, ft if method.needs_features else None)


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
        want = REFERENCES[name](zs.double().tolist(), zt.double().tolist(), y.tolist(), method.params,
                                COUNTS.tolist(), epoch, 240, extra)
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
    assert teacher_param.grad is None and teacher_feats.grad is None
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


def test_bkd_with_unequal_counts_is_not_kd_and_is_not_row_weighting():
    zs, zt, y = batch(4)
    p = dict(T=2.0, alpha=1.0)
    bkd = bkd_loss(zs, zt, y, effective_number_weights(COUNTS, 0.9999), **p)
    kd = kd_loss(zs, zt, y, T=2.0, a_ce=1.0, a_kd=1.0)
    assert abs(float(bkd) - float(kd)) > 1e-3
    # the pitfall: weighting each row by w[y] cancels in the renormalisation and gives KD back
    w = effective_number_weights(COUNTS, 0.9999)
    q_rows = F.softmax(zt / 2, 1) * w[y][:, None]
    q_rows = q_rows / q_rows.sum(1, keepdim=True)
    torch.testing.assert_close(q_rows, F.softmax(zt / 2, 1))


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
    kd = T * T * F.kl_div(F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), log_target=True,
                          reduction="none").sum(1)
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
