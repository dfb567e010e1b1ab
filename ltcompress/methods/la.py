"""Logit adjustment (Menon et al., ICLR 2021; exact, the paper's formula): ``CE(zs + tau * log pi, y)``.

With tau = 1 this equals Balanced Softmax (the two differ by a constant added to every logit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, StepInputs


def la_loss(
    student_logits: torch.Tensor, targets: torch.Tensor, class_counts: torch.Tensor, tau: float
) -> torch.Tensor:
    log_prior = (class_counts.float() / class_counts.float().sum()).log()
    return F.cross_entropy(student_logits.float() + tau * log_prior[None, :], targets)


@dataclass(frozen=True)
class LAParams:
    """tau = 1: the paper's default."""

    tau: float = 1.0


class LA(Method):
    Params = LAParams
    uses_teacher = False

    def forward(self, step: StepInputs) -> torch.Tensor:
        return la_loss(step.student_logits, step.targets, self.class_counts, self.params.tau)
