"""Decoupled Knowledge Distillation (Zhao et al., CVPR 2022; exact, from mdistiller ``DKD.py``).

KD splits into a target-class term (TCKD, binary KL on [p_y, 1 - p_y]) and a non-target term (NCKD, KL between
the distributions over the other classes); DKD weighs them separately: ``CE + warmup * (alpha*TCKD + beta*NCKD)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, StepInputs, kl_rows, masked_log_softmax, warmup_factor


def binary_log_probs(logits: torch.Tensor, in_set: torch.Tensor, T: float) -> torch.Tensor:
    """log [P(set), P(not set)] of softmax(logits / T), computed in log space ([B, 2])."""
    log_p = F.log_softmax(logits.float() / T, dim=1)
    inside = torch.logsumexp(log_p.masked_fill(~in_set, -1e9), dim=1)
    outside = torch.logsumexp(log_p.masked_fill(in_set, -1e9), dim=1)
    return torch.stack([inside, outside], dim=1)


def dkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, T: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TCKD, NCKD), each already multiplied by T**2."""
    gt = F.one_hot(targets, student_logits.shape[1]).bool()
    tckd = kl_rows(binary_log_probs(teacher_logits, gt, T), binary_log_probs(student_logits, gt, T))
    nckd = kl_rows(masked_log_softmax(teacher_logits, gt, T), masked_log_softmax(student_logits, gt, T))
    return T * T * tckd, T * T * nckd


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    alpha: float,
    beta: float,
    warmup: float,
) -> torch.Tensor:
    tckd, nckd = dkd_terms(student_logits, teacher_logits, targets, T)
    kd = (alpha * tckd + beta * nckd).mean()
    return F.cross_entropy(student_logits.float(), targets) + warmup * kd


@dataclass(frozen=True)
class DKDParams:
    """mdistiller's CIFAR defaults: alpha 1 (TCKD), beta 8 (NCKD), T 4, warm-up 20 of 240 epochs (scaled)."""

    alpha: float = 1.0
    beta: float = 8.0
    T: float = 4.0
    warmup: int = 20

    def validate(self) -> None:
        if self.T <= 0 or self.warmup < 0:
            raise ValueError("need T > 0 and warmup >= 0")


class DKD(Method):
    Params = DKDParams

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        warm = warmup_factor(step.epoch, p.warmup, self.ctx.epochs)
        return dkd_loss(step.student_logits, step.teacher, step.targets, p.T, p.alpha, p.beta, warm)
