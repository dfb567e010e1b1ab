"""Stage 3: the method-agnostic training loop (teacher training and distillation alike).

The loop asks the method what it needs (teacher logits, penultimate features) and never names one. CUDA when
present (bf16 autocast; losses compute in fp32 inside the methods), channels_last everywhere. Under torchrun it
wraps the student and method in one DistributedDataParallel module; each epoch (and Ctrl-C) ends in a resumable
checkpoint; a teacher-logit cache can stand in for the teacher's forward pass.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ltcompress import dist
from ltcompress.checkpoint import StopRequest, rng_state, set_rng_state
from ltcompress.config import TrainConfig
from ltcompress.data import LTData, iterate, to_batch
from ltcompress.data.samplers import epoch_stream, rank_share
from ltcompress.errors import DivergenceError, UsageError
from ltcompress.logit_cache import LogitCache
from ltcompress.methods.base import Method, StepInputs, TrainingPass
from ltcompress.models import features_and_logits
from ltcompress.rundir import atomic_save_file

log = logging.getLogger("ltcompress")
RANK_SEED_STRIDE = 1_000_003  # rank r augments with seed + r * stride; rank 0 of 1 is the plain seed


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    seconds: float


def pick_device(name: str) -> torch.device:
    """auto: CUDA when present, else CPU. Asking for CUDA where there is none is exit 2, not a crash later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                         f"use --device auto or cpu")
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def freeze(model: nn.Module) -> nn.Module:
    """A frozen teacher: eval mode for the whole run (BatchNorm statistics never change), no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model


class TrainModule(nn.Module):
    """The student and the method (with any parameters of its own) in one module whose forward returns the
    loss, so a single DistributedDataParallel wrapper sees every trainable parameter."""

    def __init__(self, student: nn.Module, method: Method) -> None:
        super().__init__()
        self.student = student
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor, epoch: float, teacher_logits: torch.Tensor | None = None,
                teacher_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method.needs_features:
            features, logits = features_and_logits(self.student, x)
        else:
            features, logits = None, self.student(x)
        step = StepInputs(logits, y, epoch, teacher_logits, features, teacher_features)
        return self.method(step), logits


@torch.no_grad()
def training_pass(teacher: nn.Module, student: nn.Module, data: LTData, device: torch.device, batch: int,
                  features: bool) -> TrainingPass:
    """The frozen teacher's logits (and features) on the un-augmented training set, plus the student's feature
    width (one eval-mode forward on two images: BatchNorm statistics are untouched)."""
    freeze(teacher.to(device, memory_format=torch.channels_last))
    logits, feats = [], []
    for xb, yb in iterate(data.train, np.arange(len(data.train)), batch, drop_last=False):
        x = to_batch(xb, yb, data.spec, device)[0]
        if features:
            f, z = features_and_logits(teacher, x)
            feats.append(f.float().cpu())
        else:
            z = teacher(x)
        logits.append(z.float().cpu())
    was_training = student.training
    student.to(device).eval()
    dim = int(features_and_logits(student, x[:2])[0].shape[1])
    student.train(was_training)
    return TrainingPass(torch.as_tensor(data.train.labels), torch.cat(logits),
                        torch.cat(feats) if features else None, dim)


def prepare_method(method: Method, student: nn.Module, teacher: nn.Module | None, data: LTData,
                   device: torch.device, batch: int) -> tuple[nn.Module, TrainingPass | None]:
    """Give a method what it declared it needs before training: its adapted student, and the teacher's pass over
    the training set (prototypes, diagnostics)."""
    student = method.adapt_student(student)
    train_pass = None
    if method.needs_training_pass and teacher is not None:
        train_pass = training_pass(teacher, student, data, device, batch, method.needs_features)
        method.prepare(train_pass)
    return student, train_pass


def train(model: nn.Module, method: Method, data: LTData, recipe: TrainConfig, device: torch.device, *,
          stage: str, seed: int, teacher: nn.Module | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          checkpoint: Callable[[dict[str, Any]], None] | None = None, resume: Mapping[str, Any] | None = None,
          teacher_cache: LogitCache | None = None, progress: bool = True) -> TrainResult:
    """Train `model` with `method` for `recipe.epochs`. `on_epoch(record)` logs each epoch; `checkpoint(state)`
    saves the training state after each epoch and on Ctrl-C (then KeyboardInterrupt is raised). `resume`, a
    state saved that way, continues where it stopped, to the same weights an uninterrupted run reaches.
    `teacher_cache` reads the teacher's logits per epoch where it has them and stores those it computes."""
    if method.uses_teacher and teacher is None:
        raise ValueError(f"{type(method).__name__} needs a teacher")
    rank, world = dist.rank(), dist.world()
    module = TrainModule(model, method).to(device, memory_format=torch.channels_last).train()
    wrapped: nn.Module = module
    if world > 1:  # one DDP wrapper over student + method parameters; unused ones only where a method has its own
        wrapped = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=any(True for _ in method.parameters()))
    if teacher is not None:
        freeze(teacher.to(device, memory_format=torch.channels_last))
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                weight_decay=recipe.weight_decay)
    n = len(data.train)
    global_batch = min(recipe.batch_size, n)
    if global_batch % world:
        raise UsageError(f"{stage}.train.batch_size {global_batch} is not divisible by the {world} processes")
    batch, steps = global_batch // world, n // global_batch  # drop_last: a batch of 1 would break BatchNorm
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps,
                                                    cycle_momentum=False)
    generator = torch.Generator().manual_seed(seed + RANK_SEED_STRIDE * rank)
    history: list[dict[str, Any]] = []
    first_epoch, first_step, sums = 0, 0, (0.0, 0, 0)
    if resume is not None:
        if len(resume["ranks"]) != world:
            raise UsageError(f"the checkpoint was written by {len(resume['ranks'])} process(es); resume with as many "
                             f"(torchrun --nproc_per_node)")
        own = resume["ranks"][rank]
        model.load_state_dict(resume["model"])
        method.load_state_dict(resume["method"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(own["generator"])
        set_rng_state(own["rng"])
        history, first_epoch, first_step, sums = list(resume["history"]), resume["epoch"], resume["step"], own["sums"]
        log.info("%s: resuming at epoch %d, step %d of %d", stage, first_epoch + 1, first_step, steps)

    def save(epoch: int, step: int, running: tuple[float, int, int]) -> None:
        ranks = dist.gather_objects({"generator": generator.get_state(), "rng": rng_state(), "sums": list(running)})
        if checkpoint is not None:
            checkpoint({"stage": stage, "model": model.state_dict(), "method": method.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                        "step": step, "history": list(history), "ranks": ranks})

    start = time.perf_counter()
    bar = tqdm(total=recipe.epochs * steps, initial=first_epoch * steps + first_step, desc=f"{stage}", unit="step",
               dynamic_ncols=True, disable=None if progress else True, leave=False)
    stop = StopRequest()
    try:
        with stop.installed():
            for epoch in range(first_epoch, recipe.epochs):
                t0 = time.perf_counter()
                loss_sum, correct, seen = sums if epoch == first_epoch else (0.0, 0, 0)
                skip = first_step if epoch == first_epoch else 0
                cached = stored = None
                if teacher is not None and teacher_cache is not None and not method.needs_features:
                    cached = teacher_cache.load(epoch, steps * batch)
                    stored = [] if cached is None and skip == 0 else None  # a whole epoch, or nothing
                order = rank_share(epoch_stream(recipe.sampler, data.train.labels, seed, epoch), rank, world)
                batches = iterate(data.train, order[skip * batch:steps * batch], batch, drop_last=True)
                for i, (xb, yb) in enumerate(batches, start=skip):
                    x, y = to_batch(xb, yb, data.spec, device, augment=True, generator=generator)
                    with autocast(device):
                        teacher_logits = teacher_features = None
                        if cached is not None:
                            teacher_logits = cached[i * batch:(i + 1) * batch].to(device, non_blocking=True)
                        elif teacher is not None:
                            with torch.no_grad():
                                if method.needs_features:
                                    teacher_features, teacher_logits = features_and_logits(teacher, x)
                                else:
                                    teacher_logits = teacher(x)
                            if stored is not None:
                                stored.append(teacher_logits)
                        loss, logits = wrapped(x, y, epoch + 1 + i / steps, teacher_logits, teacher_features)
                    # the one host sync per step: divergence (on any rank) must stop every rank at this step
                    value, stopping = dist.step_flags(loss, stop.requested)
                    if not math.isfinite(value):
                        raise DivergenceError(
                            f"{stage} training diverged: loss {value} at epoch {epoch + 1}, step {i + 1}; the last "
                            f"good checkpoint is kept in the run's checkpoints/. Lower the learning rate "
                            f"(e.g. --set {stage}.train.lr={recipe.lr / 10:g}) or clip gradients "
                            f"(--set {stage}.train.grad_clip=5)")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if recipe.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
                    optimizer.step()
                    scheduler.step()
                    loss_sum += value * len(y)
                    correct += (logits.detach().argmax(1) == y).sum()  # summed on the device: no extra sync
                    seen += len(y)
                    bar.update(1)
                    bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{value:.3f}", refresh=False)
                    if stopping:
                        save(epoch, i + 1, (loss_sum, int(correct), seen))
                        raise KeyboardInterrupt
                seconds = time.perf_counter() - t0
                dist.average_buffers(module)
                total_loss, total_correct, total_seen = dist.sum_values([loss_sum, int(correct), seen])
                record = {"stage": stage, "epoch": epoch + 1, "epochs": recipe.epochs, "loss": total_loss / total_seen,
                          "train_acc": total_correct / total_seen, "lr": scheduler.get_last_lr()[0],
                          "seconds": round(seconds, 3),
                          "images_per_s": round((total_seen - skip * global_batch) / seconds, 1)}
                if stored is not None:
                    teacher_cache.save(epoch, torch.cat(stored))
                if teacher_cache is not None and teacher is not None:
                    record["teacher_logits"] = "cache" if cached is not None else "computed"
                history.append(record)
                log.info("%s epoch %d/%d  loss %.4f  train acc %.3f  %.0f img/s", stage, epoch + 1, recipe.epochs,
                         record["loss"], record["train_acc"], record["images_per_s"])
                if on_epoch is not None:
                    on_epoch(record)
                save(epoch + 1, 0, (0.0, 0, 0))
    finally:
        bar.close()
    model.eval()
    return TrainResult(history, time.perf_counter() - start)


def save_weights(model: nn.Module, path: Path) -> None:
    """Weights as safetensors (loadable without unpickling), written atomically."""
    atomic_save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)
