"""Hinton knowledge distillation (exact): ``a_ce * CE + a_kd * T**2 * KL(softmax(zt/T) || softmax(zs/T))``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, StepInputs, tempered_kl


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    T: float,
    a_ce: float,
    a_kd: float,
) -> torch.Tensor:
    teacher_log_q = F.log_softmax(teacher_logits.float() / T, dim=1)
    return a_ce * F.cross_entropy(student_logits.float(), targets) + a_kd * tempered_kl(
        student_logits, teacher_log_q, T
    )


@dataclass(frozen=True)
class KDParams:
    """Defaults: mdistiller's CIFAR configuration (T = 4, CE weight 0.1, KD weight 0.9)."""

    T: float = 4.0
    a_ce: float = 0.1
    a_kd: float = 0.9

    def validate(self) -> None:
        if self.T <= 0:
            raise ValueError("T must be positive")


class KD(Method):
    Params = KDParams

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        return kd_loss(step.student_logits, step.teacher, step.targets, p.T, p.a_ce, p.a_kd)
