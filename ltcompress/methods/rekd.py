"""ReKD (Xu et al., IEEE TCSVT 2023). READING: the paper could not be read; this follows the public code that
circulates under the name.

Each sample's classes split into its top-K (from the student's logits by default, as that code does) and the
rest; KD runs within each set on renormalised distributions: ``CE + warmup * (alpha * TISD + beta * NTID)``.
"Head" and "tail" here mean a sample's top-K classes and the rest, not frequent and rare classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.errors import UsageError
from ltcompress.methods.base import Method, MethodContext, StepInputs, kl_rows, masked_log_softmax, warmup_factor


def topk_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    idx = logits.float().topk(k, dim=1).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, idx, True)


def rekd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, in_top: torch.Tensor, T: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (TISD, NTID), each multiplied by T**2; `in_top` marks each sample's top-K classes."""
    tisd = kl_rows(masked_log_softmax(teacher_logits, ~in_top, T), masked_log_softmax(student_logits, ~in_top, T))
    ntid = kl_rows(masked_log_softmax(teacher_logits, in_top, T), masked_log_softmax(student_logits, in_top, T))
    return T * T * tisd, T * T * ntid


def rekd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    topk_from: str,
    T: float,
    alpha: float,
    beta: float,
    warmup: float,
) -> torch.Tensor:
    source = student_logits if topk_from == "student" else teacher_logits
    tisd, ntid = rekd_terms(student_logits, teacher_logits, topk_mask(source.detach(), k), T)
    return F.cross_entropy(student_logits.float(), targets) + warmup * (alpha * tisd + beta * ntid).mean()


@dataclass(frozen=True)
class ReKDParams:
    """Defaults are not from the paper: K = 5 capped to C - 2 (k = None), T = 4, alpha = 1, beta = 8, warm-up
    20 of 240 epochs. An explicit k is never capped."""

    k: int | None = None
    topk_from: str = "student"
    T: float = 4.0
    alpha: float = 1.0
    beta: float = 8.0
    warmup: int = 20

    def validate(self) -> None:
        if self.topk_from not in ("student", "teacher"):
            raise ValueError("topk_from must be 'student' or 'teacher'")
        if self.T <= 0:
            raise ValueError("need T > 0")


class ReKD(Method):
    Params = ReKDParams

    def __init__(self, params: ReKDParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        c = ctx.num_classes
        self.k = min(5, c - 2) if params.k is None else params.k
        if not 2 <= self.k <= c - 2:
            raise UsageError(
                f"rekd needs 2 <= k <= C - 2 = {c - 2} (k = 1 makes the top-K term identically "
                f"zero); got k = {self.k}. Set --method-arg k=N"
            )

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        warm = warmup_factor(step.epoch, p.warmup, self.ctx.epochs)
        return rekd_loss(
            step.student_logits, step.teacher, step.targets, self.k, p.topk_from, p.T, p.alpha, p.beta, warm
        )
