"""LTKD (Kim, "Distilling Balanced Knowledge from a Biased Teacher", CVPR 2026, arXiv 2506.18496).
READING: only the abstract could be read.

Plain KD splits exactly over the run's shot groups g (Many, Medium, Few; absent groups dropped):
``KL(p_t || p_s) = KL(P_t || P_s) + sum_g P_t(g) KL(p_t(.|g) || p_s(.|g))`` with ``P(g)`` the group mass and
``p(.|g)`` the distribution within the group. A head-biased teacher hurts both parts: its group masses favour
Many, and the weights ``P_t(g)`` make the within-group term of the tail groups nearly vanish. The abstract's two
changes, as we read them: (1) rebalance the cross-group term by removing the group prior from the teacher's
masses, ``P~_t(g) ∝ P_t(g) / pi_g`` (``pi_g`` the share of training images in group g); (2) reweight the
within-group term so that every group counts equally, ``(1 / |G|) sum_g KL(p_t(.|g) || p_s(.|g))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ltcompress.methods.base import Method, MethodContext, StepInputs, kl_rows


def shot_group_membership(class_counts: torch.Tensor, many: int, few: int) -> torch.Tensor:
    """Bool ``[C, G]``, column g marking the classes of shot group g: Many (> many images), Medium, Few (< few),
    the same groups as ``data.core.shot_groups`` and the report. Absent groups are dropped, so no column is
    empty and no group mass is ever zero."""
    counts = class_counts.float()
    groups = torch.stack([counts > many, (counts >= few) & (counts <= many), counts < few], dim=1)
    return groups[:, groups.any(dim=0)]


def group_image_shares(class_counts: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """``pi_g``: the share of training images in each group (the prior the rebalanced term removes)."""
    per_group = (class_counts.double()[:, None] * membership.double()).sum(dim=0)
    return (per_group / per_group.sum()).float()


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp32 for half-precision logits (CPU bf16 autocast); float64 is kept so the identity tests are exact."""
    return x if x.dtype == torch.float64 else x.float()


def group_log_probs(logits: torch.Tensor, membership: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Of ``p = softmax(z / T)``: log group masses ``log P(g)`` ``[B, G]`` and within-group log-probabilities
    ``log p(c | g(c))`` ``[B, C]``. Everything stays in log space (a masked log-sum-exp with -1e9, not -inf) so
    it is finite at logits of magnitude 1e4."""
    log_p = F.log_softmax(_at_least_fp32(logits) / T, dim=1)
    outside = ~membership.T[None]  # [1, G, C]
    log_mass = log_p[:, None, :].masked_fill(outside, -1e9).logsumexp(dim=2)
    group_of = membership.long().argmax(dim=1)  # [C]: each class's group
    return log_mass, log_p - log_mass[:, group_of]


def ltkd_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, membership: torch.Tensor, T: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample: the student's and the teacher's log group masses ``[B, G]`` and the within-group KL
    ``KL(p_t(.|g) || p_s(.|g))`` per group ``[B, G]`` (no T**2). Summed with an elementwise mask rather than a
    matmul, which CPU autocast would run in bf16."""
    log_mass_s, within_s = group_log_probs(student_logits, membership, T)
    log_mass_t, within_t = group_log_probs(teacher_logits, membership, T)
    per_class = F.kl_div(within_s, within_t, log_target=True, reduction="none")  # q (log q - log p), [B, C]
    within = per_class[:, None, :].masked_fill(~membership.T[None], 0.0).sum(dim=2)
    return log_mass_s, log_mass_t, within


def ltkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    membership: torch.Tensor,
    group_prior: torch.Tensor,
    T: float,
    alpha: float,
    beta: float,
    tau: float = 1.0,
) -> torch.Tensor:
    """``CE + T**2 * (alpha * KL(P~_t || P_s) + beta * (1/|G|) sum_g KL(p_t(.|g) || p_s(.|g)))``, batch mean,
    with ``P~_t(g) ∝ P_t(g) / pi_g**tau``."""
    log_mass_s, log_mass_t, within = ltkd_terms(student_logits, teacher_logits, membership, T)
    rebalanced = F.log_softmax(log_mass_t - tau * group_prior.to(log_mass_t.dtype).log()[None, :], dim=1)
    cross = kl_rows(rebalanced, log_mass_s).mean()
    return F.cross_entropy(student_logits.float(), targets) + T * T * (alpha * cross + beta * within.mean(dim=1).mean())


@dataclass(frozen=True)
class LTKDParams:
    """Our defaults (the paper's values are unknown: ablate them): T 4, alpha 1 (rebalanced cross-group term),
    beta 1 (equally weighted within-group term), tau 1 (how much of the group prior is removed: 0 none, 1 all)."""

    T: float = 4.0
    alpha: float = 1.0
    beta: float = 1.0
    tau: float = 1.0

    def validate(self) -> None:
        if self.T <= 0 or self.alpha < 0 or self.beta < 0 or self.tau < 0:
            raise ValueError("need T > 0, alpha >= 0, beta >= 0 and tau >= 0")


class LTKD(Method):
    """The groups are the run's shot groups (``MethodContext.many_threshold`` / ``few_threshold``)."""

    Params = LTKDParams
    membership: torch.Tensor
    group_prior: torch.Tensor

    def __init__(self, params: LTKDParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        membership = shot_group_membership(ctx.class_counts, ctx.many_threshold, ctx.few_threshold)
        # derived from the context on every build: kept out of checkpoints
        self.register_buffer("membership", membership, persistent=False)
        self.register_buffer("group_prior", group_image_shares(ctx.class_counts, membership), persistent=False)

    def forward(self, step: StepInputs) -> torch.Tensor:
        p = self.params
        return ltkd_loss(
            step.student_logits,
            step.teacher,
            step.targets,
            self.membership,
            self.group_prior,
            p.T,
            p.alpha,
            p.beta,
            p.tau,
        )
