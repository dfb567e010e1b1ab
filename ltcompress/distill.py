"""Stage 3: the method-agnostic training loop (teacher training and distillation alike).

The loop asks the method what it needs (``uses_teacher``) and never names one. CUDA when present (bf16
autocast; losses compute in fp32 inside the methods), channels_last everywhere.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from ltcompress.config import TrainConfig
from ltcompress.data import LTData, epoch_order, iterate, to_batch
from ltcompress.errors import DivergenceError
from ltcompress.methods.base import Method, StepInputs
from ltcompress.rundir import io_errors

log = logging.getLogger("ltcompress")


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    seconds: float


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def freeze(model: nn.Module) -> nn.Module:
    """A frozen teacher: eval mode for the whole run (BatchNorm statistics never change), no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model


def train(model: nn.Module, method: Method, data: LTData, recipe: TrainConfig, device: torch.device, *,
          stage: str, seed: int, teacher: nn.Module | None = None,
          on_epoch: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
          progress: bool = True) -> TrainResult:
    """Train `model` with `method` for `recipe.epochs`; `on_epoch(record, state)` logs and checkpoints."""
    if method.uses_teacher and teacher is None:
        raise ValueError(f"{type(method).__name__} needs a teacher")
    model.to(device, memory_format=torch.channels_last).train()
    method.to(device)
    if teacher is not None:
        freeze(teacher.to(device, memory_format=torch.channels_last))
    params = [p for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                                weight_decay=recipe.weight_decay)
    n = len(data.train)
    batch = min(recipe.batch_size, n)
    steps = n // batch  # drop_last: a trailing batch of 1 would break BatchNorm
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps,
                                                    cycle_momentum=False)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    bar = tqdm(total=recipe.epochs * steps, desc=f"{stage}", unit="step", dynamic_ncols=True,
               disable=None if progress else True, leave=False)
    try:
        for epoch in range(recipe.epochs):
            t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
            for i, (xb, yb) in enumerate(iterate(data.train, epoch_order(n, seed, epoch), batch, drop_last=True)):
                x, y = to_batch(xb, yb, data.spec, device, augment=True, generator=generator)
                with autocast(device):
                    teacher_logits = None
                    if teacher is not None:
                        with torch.no_grad():
                            teacher_logits = teacher(x)
                    logits = model(x)
                loss = method(StepInputs(logits, y, epoch + 1 + i / steps, teacher_logits))
                value = loss.item()  # the one host sync per step: divergence must stop the step it happens
                if not math.isfinite(value):
                    raise DivergenceError(
                        f"{stage} training diverged: loss {value} at epoch {epoch + 1}, step {i + 1}; the last good "
                        f"checkpoint is kept in the run's checkpoints/. Lower the learning rate "
                        f"(e.g. --set {stage}.train.lr={recipe.lr / 10:g})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum += value * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{recipe.epochs}", loss=f"{value:.3f}", refresh=False)
            seconds = time.perf_counter() - t0
            record = {"stage": stage, "epoch": epoch + 1, "epochs": recipe.epochs, "loss": loss_sum / seen,
                      "train_acc": int(correct) / seen, "lr": scheduler.get_last_lr()[0], "seconds": round(seconds, 3),
                      "images_per_s": round(seen / seconds, 1)}
            history.append(record)
            log.info("%s epoch %d/%d  loss %.4f  train acc %.3f  %.0f img/s", stage, epoch + 1, recipe.epochs,
                     record["loss"], record["train_acc"], record["images_per_s"])
            if on_epoch is not None:
                on_epoch(record, {"model": model.state_dict(), "method": method.state_dict(),
                                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "epoch": epoch + 1})
    finally:
        bar.close()
    model.eval()
    return TrainResult(history, time.perf_counter() - start)


def save_weights(model: nn.Module, path: Path) -> None:
    """Weights as safetensors (loadable without unpickling), written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with io_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)
