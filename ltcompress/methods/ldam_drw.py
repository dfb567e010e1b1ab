"""LDAM-DRW (Cao et al., NeurIPS 2019; exact, from the official code ``losses.py`` / ``train.py``).

Label-distribution-aware margins ``m_c ∝ n_c ** -0.25`` (largest 0.5) are subtracted from the target logit of a
cosine classifier scaled by s = 30; from the deferral epoch on (deferred re-weighting, DRW) the CE is weighted by
effective-number class weights. As in the source, the student's last layer becomes a normalised linear layer,
which exports to ONNX like any linear layer; predictions are its raw cosine logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ltcompress.models import classifier
from ltcompress.methods.base import Method, MethodContext, StepInputs, effective_number_weights


class NormedLinear(nn.Module):
    """The source's cosine classifier: ``normalize(x) @ normalize(W)`` with W of shape [in, out]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


def ldam_margins(class_counts: torch.Tensor, max_m: float) -> torch.Tensor:
    m = 1.0 / class_counts.double().pow(0.25)
    return (m * (max_m / m.max())).float()


def ldam_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    margins: torch.Tensor,
    s: float,
    class_weights: torch.Tensor | None,
) -> torch.Tensor:
    z = student_logits.float()
    adjusted = z - F.one_hot(targets, z.shape[1]) * margins[targets][:, None]
    return F.cross_entropy(s * adjusted, targets, weight=class_weights)


@dataclass(frozen=True)
class LDAMDRWParams:
    """The source's defaults: max margin 0.5, scale 30, DRW beta 0.9999 from epoch 160 of 200 (0.8 of the run)."""

    max_m: float = 0.5
    s: float = 30.0
    beta: float = 0.9999
    defer_at: float = 0.8

    def validate(self) -> None:
        if self.max_m < 0 or self.s <= 0 or not 0 <= self.beta < 1 or not 0 <= self.defer_at <= 1:
            raise ValueError("need max_m >= 0, s > 0, 0 <= beta < 1, 0 <= defer_at <= 1")


class LDAMDRW(Method):
    Params = LDAMDRWParams
    uses_teacher = False
    margins: torch.Tensor
    class_weights: torch.Tensor

    def __init__(self, params: LDAMDRWParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.register_buffer("margins", ldam_margins(ctx.class_counts, params.max_m))
        self.register_buffer("class_weights", effective_number_weights(ctx.class_counts, params.beta))
        self.defer_epoch = round(params.defer_at * ctx.epochs)  # 0-based epoch index where DRW starts

    def adapt_student(self, student: nn.Module) -> nn.Module:
        head = classifier(student)
        if not isinstance(head, nn.Linear):
            raise ValueError(f"ldam_drw needs a linear classifier, {type(student).__name__} has {type(head).__name__}")
        replace_module(student, head, NormedLinear(head.in_features, head.out_features))
        return student

    def forward(self, step: StepInputs) -> torch.Tensor:
        deferred = step.epoch >= self.defer_epoch + 1
        weights = self.class_weights if deferred else None
        return ldam_loss(step.student_logits, step.targets, self.margins, self.params.s, weights)


def replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Swap the submodule `old` of `root` for `new`, wherever it sits."""
    for name, module in root.named_modules():
        if module is old:
            parent_name, _, attr = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)
            return
    raise ValueError("module not found")
