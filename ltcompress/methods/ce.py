"""Plain cross-entropy: the baseline student and the default teacher loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, StepInputs


def ce_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student_logits.float(), targets)


@dataclass(frozen=True)
class CEParams:
    """No hyper-parameters."""


class CE(Method):
    Params = CEParams
    uses_teacher = False

    def forward(self, step: StepInputs) -> torch.Tensor:
        return ce_loss(step.student_logits, step.targets)
