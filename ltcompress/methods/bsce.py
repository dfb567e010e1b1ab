"""Balanced Softmax (Ren et al., NeurIPS 2020; exact, from the official code): ``CE(zs + log n, y)``.

Training adds the log class counts to the logits; prediction uses the raw logits, which removes the label prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, StepInputs


def bsce_loss(student_logits: torch.Tensor, targets: torch.Tensor, class_counts: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student_logits.float() + class_counts.float().log()[None, :], targets)


@dataclass(frozen=True)
class BSCEParams:
    """No hyper-parameters."""


class BSCE(Method):
    Params = BSCEParams
    uses_teacher = False

    def forward(self, step: StepInputs) -> torch.Tensor:
        return bsce_loss(step.student_logits, step.targets, self.class_counts)
