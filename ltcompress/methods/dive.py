"""DiVE, Distilling Virtual Examples (He, Wu, Wei, ICCV 2021; exact loss, the paper's equation).

A Balanced Softmax teacher's tempered distribution is flattened by power normalisation (``t ** p``, renormalised),
which equals a teacher temperature of ``tau / p``; the student learns from it and from Balanced Softmax CE:
``(1 - alpha) * CE(zs + log n, y) + alpha * tau**2 * KL(t || softmax(zs / tau))``. Inference uses raw logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, StepInputs, TrainingPass, tempered_kl
from ltcompress.methods.bsce import bsce_loss


def dive_target_log_probs(teacher_logits: torch.Tensor, tau: float, power: float) -> torch.Tensor:
    """log of normalize(softmax(zt / tau) ** power)."""
    return F.log_softmax(power * F.log_softmax(teacher_logits.float() / tau, dim=1), dim=1)


def dive_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor,
    alpha: float,
    tau: float,
    power: float,
) -> torch.Tensor:
    target = dive_target_log_probs(teacher_logits, tau, power)
    return (1 - alpha) * bsce_loss(student_logits, targets, class_counts) + alpha * tempered_kl(
        student_logits, target, tau
    )


def virtual_example_distribution(teacher_logits: torch.Tensor, tau: float, power: float) -> torch.Tensor:
    """``V_c = sum over training images of t_c(x)``: how much target mass each class gets ([C])."""
    return dive_target_log_probs(teacher_logits, tau, power).exp().sum(dim=0)


DIAGNOSTIC_TAUS = (1.0, 2.0, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class DiVEParams:
    """The paper's defaults: alpha 0.5, tau 3, power 0.5 (a public re-implementation uses tau = 2)."""

    alpha: float = 0.5
    tau: float = 3.0
    power: float = 0.5

    def validate(self) -> None:
        if self.tau <= 0 or self.power <= 0 or not 0 <= self.alpha <= 1:
            raise ValueError("need tau > 0, power > 0 and 0 <= alpha <= 1")


class DiVE(Method):
    Params = DiVEParams
    teacher_method = "bsce"
    needs_training_pass = True  # for the virtual example distribution in the report

    def diagnostics(self, train_pass: TrainingPass | None, groups: dict[str, list[int]]) -> dict[str, Any]:
        """Mean V_c per shot group for the method's tau and a few others (power fixed): flat targets give every
        group about N / C; a head-heavy teacher gives the Few group far less."""
        if train_pass is None:
            return {}
        n = train_pass.labels.numel()
        table = {}
        for tau in sorted({self.params.tau, *DIAGNOSTIC_TAUS}):
            v = virtual_example_distribution(train_pass.teacher_logits, tau, self.params.power)
            table[f"tau={tau:g}"] = {g: (float(v[c].mean()) if c else None) for g, c in groups.items()}
        counts = self.ctx.class_counts
        return {
            "virtual_example_distribution": {
                "power": self.params.power,
                "method_tau": self.params.tau,
                "uniform_value": n / counts.numel(),
                "class_counts_mean": {g: (float(counts[c].mean()) if c else None) for g, c in groups.items()},
                "mean_per_group": table,
            }
        }

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        return dive_loss(step.student_logits, step.teacher, step.targets, self.class_counts, p.alpha, p.tau, p.power)
