"""KRDistill (Huang et al., "Learn from Balance: Rectifying Knowledge Transfer for Long-Tailed Scenarios",
arXiv 2409.07694). READING: only the abstract could be read; this is our second reading, each part switchable.
Its defaults are the logit part alone: the feature part, switched on with ``feature_term=True``, made training
unstable without gradient clipping and gained nothing with it (docs/benchmarks.md).

1. Logit rectification: temper the teacher, then remove the label prior at full strength
   (``zt / T - tau * log pi``, as bkd and logit adjustment correct); for samples of tail classes (Medium and
   Few) whose result ranks a wrong class first, swap that entry with the true class's; KD to the result at T.
2. Representation rectification (off by default): pull the teacher's penultimate feature toward its class
   prototype (the class mean over the training set), and match the student's projected feature to it in cosine
   distance. The projector trains with the student and is never exported.

The first reading (``prior_after_temper=False, swap="all", T=4, feature_term=True``) removed the prior
before tempering, which divided its effect by T, and swapped head samples too; docs/methods.md has both
readings' measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ltcompress.methods.base import Method, MethodContext, StepInputs, TrainingPass, tempered_kl

SWAPS = ("all", "tail", "none")


def rectify_logits(
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor,
    tau: float,
    swap_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """``zt - tau * log pi``, then swap the arg-max entry with the target's where they differ, in the rows
    ``swap_rows`` marks (bool ``[B]``; None: every row)."""
    prior = class_counts.float() / class_counts.float().sum()
    z = teacher_logits.float() - tau * prior.log()[None, :]
    top = z.argmax(dim=1, keepdim=True)
    y = targets[:, None]
    if swap_rows is not None:
        top = torch.where(swap_rows[:, None], top, y)  # top == y leaves a row as it is
    z_top, z_y = z.gather(1, top), z.gather(1, y)
    return z.scatter(1, top, z_y).scatter(1, y, z_top)  # a no-op where top == y


def rectified_target(
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: torch.Tensor,
    T: float,
    tau: float,
    prior_after_temper: bool,
    swap_rows: torch.Tensor | None,
) -> torch.Tensor:
    """Log-probabilities of the rectified teacher target. ``prior_after_temper`` True (the second reading):
    ``softmax(rect(zt / T - tau log pi))``, the full-strength correction of bkd and logit adjustment; False (the
    first reading): ``softmax(rect(zt - tau log pi) / T)``, where tempering divides the prior's effect by T. The swap
    acts on the logits the prior was removed from, so in both cases the true class ranks first where swapped."""
    if prior_after_temper:
        return F.log_softmax(rectify_logits(teacher_logits.float() / T, targets, class_counts, tau, swap_rows), 1)
    return F.log_softmax(rectify_logits(teacher_logits, targets, class_counts, tau, swap_rows) / T, 1)


def feature_distance(
    student_projected: torch.Tensor,
    teacher_features: torch.Tensor,
    prototypes: torch.Tensor,
    targets: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """Squared L2 between the normalised projected student feature and the normalised rectified teacher
    feature ``(1 - lam) * ft + lam * mu_y``, summed over dimensions, averaged over the batch (= 2 - 2 cos)."""
    target = (1 - lam) * teacher_features.float() + lam * prototypes[targets]
    diff = F.normalize(student_projected.float(), dim=1) - F.normalize(target, dim=1)
    return diff.pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class KRDistillParams:
    """Our defaults (the paper's are unknown), the second reading, chosen by three seeds at the default preset
    (docs/benchmarks.md): T 2, alpha 1 (logit term), the prior removed after tempering (`prior_after_temper`)
    with tau 1, the swap for "tail" samples only (label in the Medium or Few shot group, i.e. at most
    `data.many_threshold` training images; or "all" misranked samples, or "none"), and the feature term off
    (`feature_term`; when on: beta 1, lam 0.5, no warm-up, `feature_warmup` being the epochs of this run, not
    scaled, over which its weight ramps as ``beta * min(epoch / feature_warmup, 1)``). The first reading is
    ``T=4, prior_after_temper=False, swap="all", feature_term=True``."""

    T: float = 2.0
    alpha: float = 1.0
    beta: float = 1.0
    lam: float = 0.5
    tau: float = 1.0
    logit_term: bool = True
    feature_term: bool = False
    prior_after_temper: bool = True
    swap: str = "tail"
    feature_warmup: float = 0.0

    def validate(self) -> None:
        if self.T <= 0 or not 0 <= self.lam <= 1 or self.feature_warmup < 0:
            raise ValueError("need T > 0, 0 <= lam <= 1 and feature_warmup >= 0")
        if self.swap not in SWAPS:
            raise ValueError(f"swap must be one of {', '.join(SWAPS)}")


class KRDistill(Method):
    Params = KRDistillParams
    prototypes: torch.Tensor | None
    tail_classes: torch.Tensor
    projector: nn.Module | None

    def __init__(self, params: KRDistillParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.needs_features = self.needs_training_pass = params.feature_term
        self.projector = None
        self.register_buffer("prototypes", None)
        # Medium and Few classes (the run's shot groups), for swap="tail"; derived from the context, not saved
        self.register_buffer("tail_classes", ctx.class_counts <= ctx.many_threshold, persistent=False)

    def prepare(self, train_pass: TrainingPass) -> None:
        """Class prototypes (each class's mean teacher feature over the un-augmented training set) and the
        projector from the student's feature width to the teacher's."""
        feats, labels = train_pass.teacher_features, train_pass.labels
        if feats is None:  # a loop bug: krdistill declares needs_features
            raise RuntimeError("krdistill's training pass has no teacher features")
        self.prototypes = torch.stack([feats[labels == c].mean(0) for c in range(self.ctx.num_classes)]).float()
        self.projector = nn.Linear(train_pass.student_feature_dim, feats.shape[1])

    def swap_rows(self, targets: torch.Tensor) -> torch.Tensor | None:
        """Which samples get the rank swap: None (all), only those labelled with a tail class, or none."""
        if self.params.swap == "all":
            return None
        if self.params.swap == "none":
            return torch.zeros_like(targets, dtype=torch.bool)
        return self.tail_classes[targets]

    def feature_weight(self, epoch: float) -> float:
        """``beta``, ramped linearly over ``feature_warmup`` epochs (1-based epochs, as dkd's warm-up, so the
        first step already gets ``beta / feature_warmup``), so the untrained projector can settle first."""
        p = self.params
        weight: float = p.beta * (min(epoch / p.feature_warmup, 1.0) if p.feature_warmup > 0 else 1.0)
        return weight

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        loss = F.cross_entropy(step.student_logits.float(), step.targets)
        if p.logit_term:
            target = rectified_target(
                step.teacher,
                step.targets,
                self.class_counts,
                p.T,
                p.tau,
                p.prior_after_temper,
                self.swap_rows(step.targets),
            )
            loss = loss + p.alpha * tempered_kl(step.student_logits, target, p.T)
        if p.feature_term:
            student_features, teacher_features = step.features
            if self.projector is None or self.prototypes is None:
                raise RuntimeError("krdistill's feature term needs prepare() (the training pass) first")
            projected = self.projector(student_features.float())
            loss = loss + self.feature_weight(step.epoch) * feature_distance(
                projected, teacher_features, self.prototypes, step.targets, p.lam
            )
        return loss
