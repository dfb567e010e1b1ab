"""Generated from the method registry: every registered method must have a naive reference here, so a new
method cannot skip these tests."""
import math

import pytest
import torch
import torch.nn.functional as F

from ltcompress.errors import UsageError
from ltcompress.methods import METHODS, list_methods
from ltcompress.methods.base import MethodContext, StepInputs, effective_number_weights
from ltcompress.methods.bkd import bkd_loss
from ltcompress.methods.kd import kd_loss

C = 6
COUNTS = torch.tensor([500.0, 200, 80, 30, 12, 5])


# ---------------------------------------------------------------- naive per-sample references (float64)
def _log_softmax(z):
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def _kl(log_q, log_p):
    return sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_q, log_p))


def _ce(z, y):
    return -_log_softmax(z)[y]


def naive_ce(zs, zt, y, params, counts, epoch):
    return sum(_ce(zs[i], y[i]) for i in range(len(y))) / len(y)


def naive_kd(zs, zt, y, p, counts, epoch):
    total = 0.0
    for i in range(len(y)):
        log_q = _log_softmax([v / p.T for v in zt[i]])
        log_p = _log_softmax([v / p.T for v in zs[i]])
        total += p.a_ce * _ce(zs[i], y[i]) + p.a_kd * p.T ** 2 * _kl(log_q, log_p)
    return total / len(y)


def naive_bkd(zs, zt, y, p, counts, epoch):
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


REFERENCES = {"ce": naive_ce, "kd": naive_kd, "bkd": naive_bkd}
NAMES = METHODS.names()


def build(name, counts=COUNTS, epochs=10, **args):
    cls = METHODS.get(name)
    return cls(cls.make_params(args), MethodContext(counts, epochs))


def batch(seed=0, n=8, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(n, C, generator=g) * scale).to(dtype)
    zt = (torch.randn(n, C, generator=g) * scale).to(dtype)
    y = torch.randint(0, C, (n,), generator=g)
    return zs, zt, y


def test_every_registered_method_has_a_reference_and_metadata():
    assert set(NAMES) == set(REFERENCES), "add a naive reference for each new method"
    for info in list_methods():
        assert info.summary and info.source and info.status in ("exact", "reading")


@pytest.mark.parametrize("name", NAMES)
def test_matches_naive_reference(name):
    zs, zt, y = batch()
    method = build(name)
    for epoch in (1.0, 5.5):
        got = method(StepInputs(zs, y, epoch, zt if method.uses_teacher else None))
        want = REFERENCES[name](zs.double().tolist(), zt.double().tolist(), y.tolist(), method.params,
                                COUNTS.tolist(), epoch)
        assert got.dim() == 0
        assert float(got) == pytest.approx(want, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_finite_scalar_and_gradient_reaches_student_only(name):
    zs, zt, y = batch(1)
    student = zs.clone().requires_grad_(True)
    teacher_param = zt.clone().requires_grad_(True)
    method = build(name)
    with torch.no_grad():  # the loop runs the teacher like this
        teacher_logits = teacher_param * 1.0
    loss = method(StepInputs(student, y, 1.0, teacher_logits if method.uses_teacher else None))
    loss.backward()
    assert torch.isfinite(loss)
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher_param.grad is None


@pytest.mark.parametrize("name", NAMES)
def test_no_nan_in_bf16_with_huge_logits(name):
    zs, zt, y = batch(2, scale=1e4, dtype=torch.bfloat16)
    method = build(name)
    loss = method(StepInputs(zs, y, 1.0, zt if method.uses_teacher else None))
    assert torch.isfinite(loss)


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
