"""What every method shares: the Method base class, its context, and the tempered KL every KD term uses."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ltcompress.config import coerce
from ltcompress.errors import UsageError
from ltcompress.registry import did_you_mean


@dataclass(frozen=True)
class MethodContext:
    """What the pipeline knows when a method is built: training class counts and the run's length."""

    class_counts: torch.Tensor  # float [C], training images per class
    epochs: int

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())


@dataclass(frozen=True)
class StepInputs:
    """One training step as a method sees it. `epoch` is 1-based and fractional (mdistiller's convention)."""

    student_logits: torch.Tensor
    targets: torch.Tensor
    epoch: float
    teacher_logits: torch.Tensor | None = None


class Method(nn.Module):
    """A training loss. Subclasses set `Params` (a frozen dataclass of the source's defaults) and declare
    what they need, so the loop never special-cases a method:

    - ``uses_teacher``: the loop runs the frozen teacher and passes its logits;
    - ``teacher_method``: the plain method a teacher for this method is trained with (a cache key part).
    """

    Params: ClassVar[type] = type(None)
    uses_teacher: ClassVar[bool] = True
    teacher_method: ClassVar[str] = "ce"

    def __init__(self, params: Any, ctx: MethodContext) -> None:
        super().__init__()
        self.params = params
        self.ctx = ctx

    def forward(self, step: StepInputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def make_params(cls, args: Mapping[str, Any]) -> Any:
        """Build the hyper-parameters from user args; unknown names and wrong types are exit 2."""
        fields = {f.name: f for f in dataclasses.fields(cls.Params)}
        hints = typing.get_type_hints(cls.Params)
        values = {}
        for key, value in args.items():
            if key not in fields:
                raise UsageError(f"method argument {key!r} does not exist.{did_you_mean(key, list(fields))} "
                                 f"Valid: {', '.join(fields) or 'none'}.")
            values[key] = coerce(value, hints[key], f"method.args.{key}")
        params = cls.Params(**values)
        if hasattr(params, "validate"):
            try:
                params.validate()
            except ValueError as exc:
                raise UsageError(f"bad arguments for {cls.__name__}: {exc}") from None
        return params


def tempered_kl(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, T: float) -> torch.Tensor:
    """``T**2 * KL(q || softmax(zs/T))`` with q given as log-probabilities; fp32, batchmean."""
    log_p = F.log_softmax(student_logits.float() / T, dim=1)
    return T * T * F.kl_div(log_p, teacher_log_probs.float(), log_target=True, reduction="batchmean")


def effective_number_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Cui et al. CVPR 2019: ``w_c = (1 - beta) / (1 - beta**n_c)``, normalised to sum to C (uniform at beta 0)."""
    counts = class_counts.double()
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (w * counts.numel() / w.sum()).float()
