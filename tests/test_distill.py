"""The training loop with tiny real timm models on small generated long-tailed data."""

import numpy as np
import pytest
import torch

from ltcompress import models
from ltcompress.config import TrainConfig
from ltcompress.loop import LoopOptions, train
from ltcompress.methods import METHODS

from conftest import TINY_COUNTS, tiny_data, tiny_distill, tiny_method

COUNTS = TINY_COUNTS
make = tiny_method


def student_after(method_name, teacher, seed=0, **recipe):
    student, _, result = tiny_distill(method_name, teacher, seed=seed, recipe=recipe)
    return student, result


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).uses_teacher])
def test_teacher_is_frozen_batchnorm_included(name):
    torch.manual_seed(1)
    teacher = models.create("test_resnet", len(COUNTS))
    teacher.train()  # the loop must put it in eval mode itself
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _, result = student_after(name, teacher)
    assert not teacher.training and all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running_mean/var/num_batches_tracked too
    assert len(result.history) == 2 and all(np.isfinite(r["loss"]) for r in result.history)


@pytest.mark.parametrize("name", METHODS.names())
def test_two_epoch_smoke_run_per_method(name):
    teacher = models.create("test_resnet", len(COUNTS)) if METHODS.get(name).uses_teacher else None
    _, result = student_after(name, teacher)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in result.history)


def test_same_seed_same_student_and_different_seed_differs():
    a, _ = student_after("ce", None, seed=0)
    b, _ = student_after("ce", None, seed=0)
    c, _ = student_after("ce", None, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_a_method_that_needs_a_teacher_refuses_to_run_without_one():
    with pytest.raises(ValueError, match="needs a teacher"):
        student_after("kd", None)


def test_grad_clip_bounds_each_update():
    torch.manual_seed(0)
    initial = models.create("test_efficientnet", len(COUNTS)).state_dict()
    free, _ = student_after("ce", None)
    clipped, _ = student_after("ce", None, grad_clip=1e-6)

    def moved(model):
        return sum(float((p.detach() - initial[k]).abs().sum()) for k, p in model.named_parameters())

    # weight decay and momentum still act, but a 1e-6 gradient norm leaves the weights nearly where they began
    assert moved(clipped) < 0.05 * moved(free)


def test_precision_choice():
    from ltcompress.train_state import amp_dtype
    from ltcompress.errors import UsageError

    cpu = torch.device("cpu")
    assert amp_dtype(cpu, "auto") is None and amp_dtype(cpu, "fp32") is None
    assert amp_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        amp_dtype(cpu, "fp16")


@pytest.mark.slow
def test_compiled_student_trains_and_keeps_plain_weight_names():
    torch.manual_seed(0)
    method, data = make("ce", 1), tiny_data()
    student = models.create("test_efficientnet", len(COUNTS))
    names = set(student.state_dict())
    before = {k: v.clone() for k, v in student.state_dict().items()}
    train(
        student,
        method,
        data,
        TrainConfig(epochs=1, batch_size=16, lr=0.05),
        torch.device("cpu"),
        stage="student",
        seed=0,
        options=LoopOptions(compile=True, progress=False),
    )
    after = student.state_dict()
    assert set(after) == names  # nn.Module.compile keeps the keys the export and checkpoints use
    assert any(not torch.equal(before[k], after[k]) for k in names)
