"""Balanced Knowledge Distillation (Zhang et al., Neurocomputing 2023; exact, from the authors' code).

Instance-balanced CE plus a KD term whose teacher distribution is re-weighted per class (column) by
effective-number weights and renormalised per sample: ``q = softmax(zt/T + log w)``. Weighting each row by
``w[y]`` instead would cancel in the renormalisation and give plain KD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, MethodContext, StepInputs, effective_number_weights, tempered_kl


def bkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    class_weights: torch.Tensor,
    T: float,
    alpha: float,
) -> torch.Tensor:
    log_q = F.log_softmax(teacher_logits.float() / T + class_weights.float().log()[None, :], dim=1)
    return F.cross_entropy(student_logits.float(), targets) + alpha * tempered_kl(student_logits, log_q, T)


@dataclass(frozen=True)
class BKDParams:
    """Defaults from the authors' code: T = 2, alpha = 1, beta = 0.9999. The authors switch the class weights
    on from epoch 0 on CIFAR-100-LT and from epoch 160 of 200 on CIFAR-10-LT (plain KD before that):
    `weights_from_epoch` (0-based epoch count, default 0) exposes that switch."""

    T: float = 2.0
    alpha: float = 1.0
    beta: float = 0.9999
    weights_from_epoch: int = 0

    def validate(self) -> None:
        if self.T <= 0 or not 0.0 <= self.beta < 1.0:
            raise ValueError("need T > 0 and 0 <= beta < 1")


class BKD(Method):
    Params = BKDParams
    class_weights: torch.Tensor

    def __init__(self, params: BKDParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.register_buffer("class_weights", effective_number_weights(ctx.class_counts, params.beta))

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        balanced = step.epoch >= p.weights_from_epoch + 1  # 1-based fractional epoch vs a 0-based count
        weights = self.class_weights if balanced else torch.ones_like(self.class_weights)
        return bkd_loss(step.student_logits, step.teacher, step.targets, weights, p.T, p.alpha)
