"""What a run will cost before it commits: a few timed training steps of each model on this device, with the
run's own batches (the same data path, workers and augmentation), scaled to the recipe's epochs; export and
verification from timed inference. Nothing here touches the run's random streams or its models."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ltcompress.config import TrainConfig
from ltcompress.plan import Plan
from ltcompress.rebalance import CRT

log = logging.getLogger("ltcompress")
TIMED_STEPS = 4  # after one warm-up step (worker start-up, allocator, first-call overheads)
PROBE_BATCH = 16  # images per timed inference batch
HOUR_S = 3600.0


@dataclass(frozen=True)
class StageCost:
    """One stage's expected seconds and how they were reckoned."""

    stage: str  # teacher | student | export | verify
    seconds: float
    how: str
    epoch_s: float | None = None  # training stages: one epoch's expected seconds


@dataclass(frozen=True)
class Estimate:
    stages: tuple[StageCost, ...]
    device: str

    @property
    def total_s(self) -> float:
        return sum(s.seconds for s in self.stages)

    def advice(self) -> str | None:
        """How to cut a run that would take more than an hour on a CPU."""
        if self.total_s <= HOUR_S or not self.device.startswith("cpu"):
            return None
        return (
            f"this run is estimated at {duration(self.total_s)} on this CPU. To cut it: a GPU (--device cuda); "
            f"a pretrained teacher (--teacher-init pretrained) or one you have (--teacher-weights FILE); a "
            f"smaller input (--set data.input_size=128); fewer epochs (--epochs, --teacher-epochs); and for "
            f"later runs with the same teacher, the logit cache (--teacher-cache)"
        )

    def lines(self) -> list[str]:
        rows = [f"{s.stage:<8} {duration(s.seconds):>9}  {s.how}" for s in self.stages]
        return rows + [f"{'total':<8} {duration(self.total_s):>9}  on {self.device}"]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "total_s": round(self.total_s, 1), "stages": [asdict(s) for s in self.stages]}


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 2 * HOUR_S:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / HOUR_S:.1f} h"


def estimate(plan: Plan) -> Estimate:
    """Time a few steps of each model that will train here, then scale; the run's random streams (torch, CUDA,
    numpy, python) are as they were afterwards."""
    from ltcompress import models

    with torch.random.fork_rng(devices=_cuda_devices(plan.device)):
        teacher = _teacher_model(plan)
        data = plan.data
        student = models.create(plan.student_arch, data.num_classes, data.spec.channels).to(plan.device)
        stages = [_teacher_cost(plan, teacher)] if plan.teacher is not None else []
        stages.append(_student_cost(plan, student, teacher))
        per_image = _inference_s(plan, student, teacher)
    stages += [_export_cost(plan, per_image), _verify_cost(plan, per_image)]
    return Estimate(tuple(s for s in stages if s is not None), str(plan.device))


def _cuda_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def _teacher_model(plan: Plan) -> nn.Module | None:
    """An untrained model of the teacher's architecture and size (what costs compute is the same)."""
    from ltcompress import models

    if plan.teacher is None:
        return None
    data = plan.data
    model = models.create(plan.teacher.arch, data.num_classes, data.spec.channels).to(plan.device)
    return model.to(memory_format=torch.channels_last)


def _teacher_cost(plan: Plan, teacher: nn.Module | None) -> StageCost | None:
    from ltcompress import teacher as teacher_stage

    p = plan.teacher
    if p is None or teacher is None:
        return None
    if p.loaded is not None:
        return StageCost("teacher", 0.0, "a weights file: nothing to train")
    if teacher_stage.cached(plan.cfg, p.key):
        return StageCost("teacher", 0.0, f"cached (key {p.key[:12]}): nothing to train")
    name, recipe = teacher_stage.recipe_for(plan.cfg, p.init)
    step = _step_s(plan, teacher, recipe, None)
    cost = _training_cost("teacher", plan, recipe, step, f"{name} recipe")
    if isinstance(p.rebalance, CRT):  # the classifier alone on frozen features: about a forward pass a step
        crt_s = p.rebalance.epochs * (cost.epoch_s or 0.0) / 3
        if teacher_stage.cached(plan.cfg, p.base_key):
            return StageCost("teacher", crt_s, f"cached before re-balancing (key {p.base_key[:12]}): crt only")
        return replace(cost, seconds=cost.seconds + crt_s, how=cost.how + f", then crt {crt_s:.0f} s")
    if p.rebalance is not None and teacher_stage.cached(plan.cfg, p.base_key):
        return StageCost("teacher", 0.0, f"cached before re-balancing (key {p.base_key[:12]}): nothing to train")
    return cost


def _student_cost(plan: Plan, student: nn.Module, teacher: nn.Module | None) -> StageCost:
    name, recipe = plan.student_recipe()
    step = _step_s(plan, student, recipe, teacher)
    how = f"{name} recipe" + (", teacher forward on every batch" if teacher is not None else "")
    return _training_cost("student", plan, recipe, step, how)


def _training_cost(stage: str, plan: Plan, recipe: TrainConfig, step: float, how: str) -> StageCost:
    from ltcompress.loop import used_batch

    steps = len(plan.data.train) // used_batch(recipe.batch_size, len(plan.data.train))  # each rank: its share
    epoch = steps * step
    text = f"{recipe.epochs} epochs x {steps} steps x {step:.3f} s/step ({how}; {TIMED_STEPS} steps timed)"
    return StageCost(stage, recipe.epochs * epoch, text, round(epoch, 2))


def _step_s(plan: Plan, model: nn.Module, recipe: TrainConfig, teacher: nn.Module | None) -> float:
    """Median seconds between consecutive training steps on the run's real batches (data, augmentation,
    forward, backward, optimizer), after one warm-up step."""
    from ltcompress import dist
    from ltcompress.loop import used_batch
    from ltcompress.train_state import amp_dtype, autocast

    device, data = plan.device, plan.data
    model = model.to(memory_format=torch.channels_last).train()
    if teacher is not None:
        teacher.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    dtype = amp_dtype(device, plan.cfg.run.precision)
    batch = used_batch(recipe.batch_size, len(data.train)) // dist.world()
    marks = []
    for x, y in _batches(plan, batch, TIMED_STEPS + 1):
        marks.append(time.perf_counter())
        if teacher is not None:
            with torch.no_grad(), autocast(device, dtype):
                teacher(x)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
    marks.append(time.perf_counter())
    steps = np.diff(marks)[1:]  # the first step waits for workers and warms everything up
    return float(statistics.median(steps.tolist())) if len(steps) else float(np.sum(np.diff(marks)))


def _batches(plan: Plan, batch: int, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`count` augmented training batches through the run's own pipeline, from a stream of its own."""
    from ltcompress.data import train_batches

    n = len(plan.data.train)
    order = np.random.default_rng([plan.cfg.run.seed, 97]).permutation(np.resize(np.arange(n), batch * count))
    generator = torch.Generator().manual_seed(plan.cfg.run.seed + 97)
    stream = train_batches(
        plan.data, order, batch, plan.device, key=(plan.cfg.run.seed, -1, 0), first_step=0, generator=generator
    )
    for b in stream:
        yield b.x, b.y


def _inference_s(plan: Plan, student: nn.Module, teacher: nn.Module | None) -> dict[str, float]:
    """Seconds per image of an un-augmented forward pass: the student's and the teacher's, in torch."""
    spec = plan.data.spec
    x = torch.zeros(PROBE_BATCH, spec.channels, spec.size, spec.size, device=plan.device)
    x = x.to(memory_format=torch.channels_last)
    out = {"student": _forward_s(student, x)}
    if teacher is not None:
        out["teacher"] = _forward_s(teacher, x)
    return out


def _forward_s(model: nn.Module, x: torch.Tensor) -> float:
    model = model.to(memory_format=torch.channels_last).eval()
    with torch.no_grad():
        model(x)  # warm-up
        _sync(x.device)
        start = time.perf_counter()
        model(x)
        _sync(x.device)
    return (time.perf_counter() - start) / len(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _export_cost(plan: Plan, per_image: dict[str, float]) -> StageCost:
    """ONNX export and its checks cost about what a few hundred forward passes do; INT8 calibration runs the
    calibration images through an instrumented copy (about three times a plain pass)."""
    e = plan.cfg.export
    seconds = 5.0 + 300 * per_image["student"]
    how = "ONNX export and checks"
    if e.int8:
        calibrate = 3 * min(e.calibration_size, len(plan.data.train)) * per_image["student"]
        seconds += 5.0 + calibrate
        how += f", INT8 calibration on {e.calibration_size} images"
        if e.int8_repair:
            seconds += e.repair_budget * (5.0 + calibrate / 3)
            how += f", repair of up to {e.repair_budget} nodes (at most)"
    return StageCost("export", seconds, how + " (rough)")


def _verify_cost(plan: Plan, per_image: dict[str, float]) -> StageCost:
    """Every stage on the test set: teacher and student in torch, FP32 (and INT8) in ONNX Runtime, each about a
    torch forward pass per image, plus decoding when the images stay on disk."""
    n = len(plan.data.test)
    passes = 2 + int(plan.cfg.export.int8)
    seconds = n * (passes * per_image["student"] + per_image.get("teacher", 0.0))
    decode = ", images decoded per pass" if plan.data.test.lazy else ""
    if plan.data.test.lazy:
        seconds *= 1.5
    return StageCost("verify", seconds, f"{n} test images x {passes + ('teacher' in per_image)} models{decode}")


def report(est: Estimate) -> None:
    """The estimate in the log, with how to cut a run of more than an hour on a CPU."""
    log.info("estimate (%d timed steps per model):", TIMED_STEPS)
    for line in est.lines():
        log.info("  %s", line)
    advice = est.advice()
    if advice:
        log.warning("%s", advice)
