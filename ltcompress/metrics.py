"""Per-class accuracy, shot-group accuracy and balanced accuracy (pure numpy, no torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

SUMMARY_KEYS = ("overall", "balanced", "many", "medium", "few", "worst")
# stage keys everywhere (report, gates), in pipeline order: torch teacher and student, then the ONNX models
STAGES = ("teacher", "student", "fp32", "int8")
Groups = Mapping[str, list[int]]  # shot group (many, medium, few) -> class indices
S = TypeVar("S", bound="GroupSummary")


@dataclass(frozen=True)
class GroupSummary:
    """A per-class value and its summaries: over all images, balanced over classes, per shot group (None when
    the data has no class in a group) and the worst class."""

    overall: float | None
    balanced: float | None
    many: float | None
    medium: float | None
    few: float | None
    worst: float | None
    worst_class: str | None
    per_class: Mapping[str, float | None]

    def value(self, metric: str) -> float | None:
        """A summary key (SUMMARY_KEYS) by name, as a gate names it."""
        if metric not in SUMMARY_KEYS:
            raise KeyError(metric)
        result: float | None = getattr(self, metric)
        return result

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in (*SUMMARY_KEYS, "worst_class")}
        return {**out, "per_class": dict(self.per_class)}

    @classmethod
    def from_dict(cls: type[S], d: Mapping[str, Any]) -> S:
        """A summary as report.json recorded it (keys this type does not have are left out)."""
        names = cls.__dataclass_fields__
        values: dict[str, Any] = {k: (dict(v) if k == "per_class" else v) for k, v in d.items() if k in names}
        return cls(**values)


@dataclass(frozen=True)
class StageMetrics(GroupSummary):
    """One stage's accuracy on the test set; the ONNX stages also carry their top-1 agreement with the torch
    student (None where there is no student to agree with)."""

    agreement_with_student: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.agreement_with_student is not None:
            out["agreement_with_student"] = self.agreement_with_student
        return out


@dataclass(frozen=True)
class Flips(GroupSummary):
    """How often the top-1 prediction changes between two stages; `worst` is the most-flipped class."""


@dataclass(frozen=True)
class LostTo:
    cls: str
    images: int
    share: float


@dataclass(frozen=True)
class TailLoss:
    """Where a Medium or Few class's misclassified test images go."""

    group: str
    test_images: int
    misclassified: int
    lost_to: tuple[LostTo, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "test_images": self.test_images,
            "misclassified": self.misclassified,
            "lost_to": [{"class": t.cls, "images": t.images, "share": t.share} for t in self.lost_to],
        }


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class on the test set; NaN for a class with no test image."""
    return _per_class_mean(np.asarray(pred) == labels, labels, num_classes)


def _per_class_mean(hits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    summed = np.bincount(labels, weights=hits.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, summed / np.maximum(total, 1), np.nan)


def summarize(pred: np.ndarray, labels: np.ndarray, groups: Groups, class_names: tuple[str, ...]) -> StageMetrics:
    """Overall, balanced, Many/Medium/Few (None when the data has no class in a group), worst class, per class.

    Group and balanced accuracies are unweighted means of per-class accuracies over classes with test images.
    """
    acc = per_class_accuracy(pred, labels, len(class_names))
    overall = float((pred == labels).mean()) if len(labels) else None
    return _summary(StageMetrics, acc, overall, groups, class_names, np.nanargmin)


def summarize_stages(
    preds: Mapping[str, np.ndarray], labels: np.ndarray, groups: Groups, class_names: tuple[str, ...]
) -> dict[str, StageMetrics]:
    """Each stage's summary; the ONNX stages (fp32, int8) also carry their top-1 agreement with the torch
    student when it is among `preds`."""
    stages = {k: summarize(p, labels, groups, class_names) for k, p in preds.items()}
    for key in ("fp32", "int8"):
        if key in stages and "student" in preds:
            agreed = agreement(preds[key], preds["student"])
            stages[key] = dataclasses.replace(stages[key], agreement_with_student=agreed)
    return stages


def flip_rates(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    labels: np.ndarray,
    groups: Groups,
    class_names: tuple[str, ...],
) -> Flips:
    """How often the top-1 prediction changes between two stages, per class and per shot group.

    Accuracy can hold while predictions churn (a class loses as many images as it gains); flips show it. Same
    keys as summarize(), but `worst` is the *highest* per-class flip rate.
    """
    changed = np.asarray(pred_a) != np.asarray(pred_b)
    per_class = _per_class_mean(changed, labels, len(class_names))
    return _summary(Flips, per_class, float(changed.mean()) if len(labels) else None, groups, class_names, np.nanargmax)


def _summary(
    kind: type[S],
    per_class: np.ndarray,
    overall: float | None,
    groups: Groups,
    class_names: tuple[str, ...],
    pick_worst: Callable[[np.ndarray], Any],
) -> S:
    present = ~np.isnan(per_class)

    def mean_of(classes: list[int]) -> float | None:
        vals = per_class[classes][present[classes]] if classes else np.array([])
        return float(vals.mean()) if vals.size else None

    worst = int(pick_worst(per_class)) if present.any() else None
    return kind(
        overall=overall,
        balanced=mean_of(list(range(len(class_names)))),
        many=mean_of(groups["many"]),
        medium=mean_of(groups["medium"]),
        few=mean_of(groups["few"]),
        worst=float(per_class[worst]) if worst is not None else None,
        worst_class=class_names[worst] if worst is not None else None,
        per_class={name: (None if np.isnan(a) else float(a)) for name, a in zip(class_names, per_class)},
    )


def expected_accuracy(
    probs: np.ndarray, labels: np.ndarray, groups: Groups, class_names: tuple[str, ...]
) -> StageMetrics:
    """summarize() with each image scored by the probability of its true class instead of 0/1: it moves with
    every change in the logits, so a handful of images per class still shows a loss (the INT8 repair)."""
    scores = np.asarray(probs)[np.arange(len(labels)), labels]
    per_class = _per_class_mean(scores, labels, len(class_names))
    overall = float(scores.mean()) if len(labels) else None
    return _summary(StageMetrics, per_class, overall, groups, class_names, np.nanargmin)


def expected_flips(
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    labels: np.ndarray,
    groups: Groups,
    class_names: tuple[str, ...],
) -> Flips:
    """flip_rates() with each image scored by the total variation distance between the two stages' predicted
    distributions (the least chance that a sample from each differs) instead of 0/1."""
    distance = 0.5 * np.abs(np.asarray(probs_a) - np.asarray(probs_b)).sum(1)
    per_class = _per_class_mean(distance, labels, len(class_names))
    overall = float(distance.mean()) if len(labels) else None
    return _summary(Flips, per_class, overall, groups, class_names, np.nanargmax)


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of test images on which two stages predict the same top-1 class."""
    return float((np.asarray(pred_a) == np.asarray(pred_b)).mean())


def confusion(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]`` over the test set (int64)."""
    index = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def tail_losses(matrix: np.ndarray, groups: Groups, class_names: tuple[str, ...], top: int = 3) -> dict[str, TailLoss]:
    """For each Medium and Few class, where its misclassified test images go: the `top` classes that absorb most
    of them, as counts and as shares of the class's test images. Accuracy says a rare class is lost; this says
    to whom (``Shirt`` to ``T-shirt/top``), which is what a user can act on (more data, a merged label)."""
    out: dict[str, TailLoss] = {}
    for group in ("medium", "few"):
        for c in sorted(groups[group]):
            row = matrix[c]
            total = int(row.sum())
            others = sorted((j for j in range(len(row)) if j != c and row[j] > 0), key=lambda j: (-row[j], j))
            lost = tuple(LostTo(class_names[j], int(row[j]), float(row[j] / total)) for j in others[:top])
            out[class_names[c]] = TailLoss(group, total, total - int(row[c]), lost)
    return out
