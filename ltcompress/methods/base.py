"""What every method shares: the Method base class, its context, and the tempered KL every KD term uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ltcompress.values import build_params

if TYPE_CHECKING:
    from ltcompress.config import DataConfig


@dataclass(frozen=True)
class MethodContext:
    """What the pipeline knows when a method is built: training class counts, the run's length, and the run's
    shot-group thresholds (``data.many_threshold`` / ``data.few_threshold``), so a method that works per shot
    group (ltkd, krdistill's tail-only swap) uses the same groups as the report."""

    class_counts: torch.Tensor  # float [C], training images per class
    epochs: int
    many_threshold: int = 100  # Many: more than this many training images
    few_threshold: int = 20  # Few: fewer than this; Medium: the rest

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    @classmethod
    def for_run(cls, class_counts: Any, epochs: int, data_cfg: DataConfig) -> MethodContext:
        """A run's context: its training class counts and its data settings' shot-group thresholds."""
        counts = torch.as_tensor(class_counts, dtype=torch.float32)
        return cls(counts, epochs, data_cfg.many_threshold, data_cfg.few_threshold)


@dataclass(frozen=True)
class StepInputs:
    """One training step as a method sees it. `epoch` is 1-based and fractional (mdistiller's convention)."""

    student_logits: torch.Tensor
    targets: torch.Tensor
    epoch: float
    teacher_logits: torch.Tensor | None = None
    student_features: torch.Tensor | None = None  # penultimate (pre-logits) features, when needs_features
    teacher_features: torch.Tensor | None = None

    @property
    def teacher(self) -> torch.Tensor:
        """The teacher's logits; the loop passes them to every method that ``uses_teacher``."""
        return _given(self.teacher_logits, "teacher_logits")

    @property
    def features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, teacher) penultimate features; the loop passes them to every method that ``needs_features``."""
        return _given(self.student_features, "student_features"), _given(self.teacher_features, "teacher_features")


def _given(value: torch.Tensor | None, name: str) -> torch.Tensor:
    if value is None:  # a loop bug, not user input
        raise RuntimeError(f"the training loop did not pass {name} to a method that declares it needs them")
    return value


@dataclass(frozen=True)
class TrainingPass:
    """The frozen teacher's outputs on the un-augmented training set, computed once before training for the
    methods that declare ``needs_training_pass`` (class prototypes, diagnostics)."""

    labels: torch.Tensor  # [N]
    teacher_logits: torch.Tensor  # [N, C], fp32, CPU
    teacher_features: torch.Tensor | None  # [N, D] penultimate features, when the method needs features
    student_feature_dim: int


class Method(nn.Module):
    """A training loss. Subclasses set `Params` (a frozen dataclass of the source's defaults) and declare
    what they need, so the loop never special-cases a method:

    - ``uses_teacher``: the loop runs the frozen teacher and passes its logits;
    - ``teacher_method``: the plain method a teacher for this method is trained with (a cache key part);
    - ``needs_features``: the loop also passes both models' penultimate features;
    - ``needs_training_pass``: ``prepare`` gets the teacher's outputs on the training set before training.
    Extra trainable parameters (projectors) are submodules of the method: they train with the student, live in
    its checkpoints, and are never exported.
    """

    Params: ClassVar[type] = type(None)
    uses_teacher: ClassVar[bool] = True
    teacher_method: ClassVar[str] = "ce"
    needs_features: bool = False
    needs_training_pass: bool = False
    class_counts: torch.Tensor

    def __init__(self, params: Any, ctx: MethodContext) -> None:
        super().__init__()
        self.params = params
        self.ctx = ctx
        # training images per class, on the method's device (it moves with the training module); not saved
        self.register_buffer("class_counts", ctx.class_counts.float().clone(), persistent=False)

    def forward(self, step: StepInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def adapt_student(self, student: nn.Module) -> nn.Module:
        """Change the student before training (LDAM's cosine classifier); it must still export to ONNX."""
        return student

    def prepare(self, train_pass: TrainingPass) -> None:
        """One-pass statistics over the training set, before the optimizer is built."""

    def diagnostics(self, train_pass: TrainingPass | None, groups: dict[str, list[int]]) -> dict[str, Any]:
        """Extra entries for report.json (under method.diagnostics)."""
        return {}

    @classmethod
    def make_params(cls, args: Mapping[str, Any]) -> Any:
        """Build the hyper-parameters from user args; unknown names and wrong types are exit 2."""
        return build_params(
            cls.Params,
            args,
            "method.args",
            lambda key: f"method argument {key!r} does not exist",
            f"bad arguments for {cls.__name__}",
        )


def tempered_kl(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, T: float) -> torch.Tensor:
    """``T**2 * KL(q || softmax(zs/T))`` with q given as log-probabilities; fp32, batchmean."""
    log_p = F.log_softmax(student_logits.float() / T, dim=1)
    return T * T * F.kl_div(log_p, teacher_log_probs.float(), log_target=True, reduction="batchmean")


def effective_number_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. CVPR 2019: ``w_c = (1 - beta) / (1 - beta**n_c)``, normalised to sum to C (uniform at beta 0)."""
    counts = class_counts.double()
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (w * counts.numel() / w.sum()).float()


def masked_log_softmax(logits: torch.Tensor, drop: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """log_softmax over the classes not in `drop` (bool [B, C]): fp32, masked with -1e9 (not -inf, which gives
    NaN under ``log_target=True``, and not the -1000 offset of some reference code, which leaks mass)."""
    return F.log_softmax((logits.float() / T).masked_fill(drop, -1e9), dim=1)


def kl_rows(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(q || p)`` from log-probabilities on both sides ([B, K] -> [B])."""
    return F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(dim=1)


def warmup_factor(epoch: float, warmup_of_240: int, epochs: int) -> float:
    """``min(epoch / warmup_run, 1)`` with a warm-up given for a 240-epoch schedule scaled to the run."""
    run = max(1, round(warmup_of_240 * epochs / 240))
    return min(epoch / run, 1.0)
