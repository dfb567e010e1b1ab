"""KRDistill (Huang et al., "Learn from Balance: Rectifying Knowledge Transfer for Long-Tailed Scenarios",
arXiv 2409.07694). READING: only the abstract could be read; each of our two parts is switchable.

1. Logit rectification: remove the label prior from the teacher (``zt - tau * log pi``) and, where the result
   ranks a wrong class first, swap that entry with the true class's; KD to the result at temperature T.
2. Representation rectification: pull the teacher's penultimate feature toward its class prototype (the class
   mean over the training set), and match the student's projected feature to it in cosine distance. The
   projector trains with the student and is never exported.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ltcompress.methods.base import Method, StepInputs, TrainingPass, tempered_kl


def rectify_logits(teacher_logits: torch.Tensor, targets: torch.Tensor, class_counts: torch.Tensor,
                   tau: float) -> torch.Tensor:
    """``zt - tau * log pi``, then swap the arg-max entry with the target's where they differ."""
    prior = class_counts.float() / class_counts.float().sum()
    z = teacher_logits.float() - tau * prior.log()[None, :]
    top = z.argmax(dim=1, keepdim=True)
    y = targets[:, None]
    z_top, z_y = z.gather(1, top), z.gather(1, y)
    return z.scatter(1, top, z_y).scatter(1, y, z_top)  # a no-op where top == y


def feature_distance(student_projected: torch.Tensor, teacher_features: torch.Tensor, prototypes: torch.Tensor,
                     targets: torch.Tensor, lam: float) -> torch.Tensor:
    """Squared L2 between the normalised projected student feature and the normalised rectified teacher
    feature ``(1 - lam) * ft + lam * mu_y``, summed over dimensions, averaged over the batch (= 2 - 2 cos)."""
    target = (1 - lam) * teacher_features.float() + lam * prototypes[targets]
    diff = F.normalize(student_projected.float(), dim=1) - F.normalize(target, dim=1)
    return diff.pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class KRDistillParams:
    """Our defaults (the paper's are unknown): T 4, alpha 1 (logit term), beta 1 (feature term), lam 0.5,
    tau 1; `logit_term` and `feature_term` switch the two parts."""

    T: float = 4.0
    alpha: float = 1.0
    beta: float = 1.0
    lam: float = 0.5
    tau: float = 1.0
    logit_term: bool = True
    feature_term: bool = True

    def validate(self) -> None:
        if self.T <= 0 or not 0 <= self.lam <= 1:
            raise ValueError("need T > 0 and 0 <= lam <= 1")


class KRDistill(Method):
    Params = KRDistillParams

    def __init__(self, params: KRDistillParams, ctx) -> None:
        super().__init__(params, ctx)
        self.needs_features = self.needs_training_pass = params.feature_term
        self.projector: nn.Module | None = None
        self.register_buffer("prototypes", None)

    def prepare(self, train_pass: TrainingPass) -> None:
        """Class prototypes (each class's mean teacher feature over the un-augmented training set) and the
        projector from the student's feature width to the teacher's."""
        feats, labels = train_pass.teacher_features, train_pass.labels
        self.prototypes = torch.stack([feats[labels == c].mean(0) for c in range(self.ctx.num_classes)]).float()
        self.projector = nn.Linear(train_pass.student_feature_dim, feats.shape[1])

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        loss = F.cross_entropy(step.student_logits.float(), step.targets)
        if p.logit_term:
            counts = self.ctx.class_counts.to(step.teacher_logits.device)
            rectified = rectify_logits(step.teacher_logits, step.targets, counts, p.tau)
            loss = loss + p.alpha * tempered_kl(step.student_logits, F.log_softmax(rectified / p.T, 1), p.T)
        if p.feature_term:
            projected = self.projector(step.student_features.float())
            loss = loss + p.beta * feature_distance(projected, step.teacher_features, self.prototypes,
                                                    step.targets, p.lam)
        return loss
