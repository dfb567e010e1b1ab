"""Classifier re-balancing of a teacher after its training (teacher.rebalance), from Kang et al., "Decoupling
Representation and Classifier for Long-Tailed Recognition", ICLR 2020.

A classifier trained with cross-entropy on long-tailed data learns weight vectors whose norm follows the class
sizes, so it favours the head classes; the features it reads are good for the tail too. Re-balancing fixes the
classifier alone, keeping the features (and their BatchNorm statistics) as they are:

- `tau-norm`: each class's weight vector divided by its norm to the power tau (tau 1: every class the same
  norm); the bias is dropped, as in the source's tau-normalised classifier. No training, no data.
- `crt` (classifier re-training): the classifier re-initialised and trained alone on the frozen features with
  class-balanced sampling (every class equally often), through the data's training augmentation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ltcompress import dist, models
from ltcompress.config import REBALANCE
from ltcompress.data import LTData, train_batches
from ltcompress.data.samplers import epoch_stream
from ltcompress.errors import UsageError
from ltcompress.registry import did_you_mean
from ltcompress.values import build_params

log = logging.getLogger("ltcompress")
SOURCE = "Kang et al., Decoupling Representation and Classifier for Long-Tailed Recognition, ICLR 2020"
_CRT_KEY = 4099  # keys cRT's augmentation apart from any training epoch's


@dataclass(frozen=True)
class TauNorm:
    """tau-normalisation; the source picks tau on a validation split in (0, 2) and its ImageNet-LT models
    land near 0.7-1; 1 (every class the same norm) is the setting that needs no validation split."""

    tau: float = 1.0

    def validate(self) -> None:
        if not 0.0 <= self.tau <= 2.0:
            raise ValueError(f"tau {self.tau} is outside [0, 2] (0: unchanged, 1: every class the same norm)")


@dataclass(frozen=True)
class CRT:
    """Classifier re-training with the source's ImageNet-LT settings: 10 epochs, SGD (momentum 0.9, weight
    decay 5e-4), cosine decay from 0.2 at batch 512, scaled linearly to the teacher recipe's batch."""

    epochs: int = 10
    lr: float = 0.2  # at batch 512
    weight_decay: float = 5e-4
    momentum: float = 0.9

    def validate(self) -> None:
        if self.epochs < 1 or self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("epochs >= 1, lr > 0, weight_decay >= 0 and momentum in [0, 1) are required")


KINDS: dict[str, type[Any] | None] = dict(zip(REBALANCE, (None, TauNorm, CRT)))  # config names them


def make_params(kind: str, args: Mapping[str, Any]) -> TauNorm | CRT | None:
    """The re-balancing's parameters from teacher.rebalance and teacher.rebalance_args; a wrong name, an
    unknown argument or a bad value is exit 2."""
    if kind not in KINDS:
        raise UsageError(
            f"teacher.rebalance {kind!r} does not exist.{did_you_mean(kind, list(KINDS))} Valid: {', '.join(KINDS)}."
        )
    cls = KINDS[kind]
    if cls is None:
        if args:
            raise UsageError(f"teacher.rebalance_args {dict(args)} given, but teacher.rebalance is none")
        return None
    params: TauNorm | CRT = build_params(
        cls,
        args,
        "teacher.rebalance_args",
        lambda key: f"teacher.rebalance_args {key!r} is not an argument of {kind}",
        f"teacher.rebalance {kind}",
    )
    return params


def describe(params: TauNorm | CRT | None) -> dict[str, Any] | None:
    """The re-balancing as the cache key, teacher.json and the report record it (None: none)."""
    if params is None:
        return None
    kind = next(k for k, cls in KINDS.items() if cls is type(params))
    return {"method": kind, "params": dataclasses.asdict(params), "source": SOURCE}


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Each row (a class's weight vector) divided by its L2 norm to the power tau."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out: torch.Tensor = weight / norms.pow(tau)
    return out


def apply(
    model: nn.Module, params: TauNorm | CRT, data: LTData, batch_size: int, device: torch.device, seed: int
) -> dict[str, Any]:
    """Re-balance `model`'s classifier in place (the features stay bit for bit); returns the record. Under
    torchrun the leader does the work and sends the classifier to the others."""
    start = time.perf_counter()
    head = _linear(model)
    extra: dict[str, Any] = {}
    if dist.rank() == 0:
        if isinstance(params, TauNorm):
            with torch.no_grad():
                head.weight.copy_(tau_normalize(head.weight, params.tau))
                if head.bias is not None:
                    head.bias.zero_()
        else:
            extra = retrain(model, head, params, data, batch_size, device, seed)
    dist.broadcast_module(head)
    record = {**(describe(params) or {}), **extra, "seconds": round(time.perf_counter() - start, 1)}
    log.info("teacher: classifier re-balanced (%s) in %.0f s", record["method"], record["seconds"])
    return record


def _linear(model: nn.Module) -> nn.Linear:
    head = models.classifier(model)
    if not isinstance(head, nn.Linear):
        raise UsageError(
            f"teacher.rebalance needs a linear classifier; this teacher's is {type(head).__name__}: set "
            "teacher.rebalance none"
        )
    return head


def retrain(
    model: nn.Module, head: nn.Linear, params: CRT, data: LTData, batch_size: int, device: torch.device, seed: int
) -> dict[str, Any]:
    """cRT: `head` re-initialised and trained alone, on the frozen model's pooled features of class-balanced,
    augmented batches, with cosine decay; returns the batch, rate and last epoch's loss."""
    api = models.timm_api(model)
    model.eval().to(device)
    torch.manual_seed(seed)
    head.reset_parameters()
    head.requires_grad_(True)
    batch = min(batch_size, len(data.train))
    steps = len(data.train) // batch
    lr = params.lr * batch / 512
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=params.momentum, weight_decay=params.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, params.epochs * steps)
    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for epoch in range(params.epochs):
        order = epoch_stream("class_balanced", data.train.labels, seed + _CRT_KEY, epoch)[: steps * batch]
        key = (seed, _CRT_KEY, epoch)
        for b in train_batches(data, order, batch, device, key=key, first_step=0, generator=generator):
            with torch.no_grad():
                x = b.x.contiguous(memory_format=torch.channels_last)
                features = api.forward_head(api.forward_features(x), pre_logits=True).float()
            loss = F.cross_entropy(head(features), b.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    head.requires_grad_(False)
    model.eval()
    last = float(np.mean(losses[-steps:])) if losses else float("nan")
    return {"batch_size": batch, "lr": lr, "steps": len(losses), "final_loss": round(last, 4)}
