"""Per-class accuracy, shot-group accuracy and balanced accuracy (pure numpy, no torch)."""

from __future__ import annotations

from typing import Any

import numpy as np

SUMMARY_KEYS = ("overall", "balanced", "many", "medium", "few", "worst")
# stage keys everywhere (report, gates), in pipeline order: torch teacher and student, then the ONNX models
STAGES = ("teacher", "student", "fp32", "int8")


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class on the test set; NaN for a class with no test image."""
    return _per_class_mean(np.asarray(pred) == labels, labels, num_classes)


def _per_class_mean(hits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    summed = np.bincount(labels, weights=hits.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, summed / np.maximum(total, 1), np.nan)


def summarize(
    pred: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]], class_names: tuple[str, ...]
) -> dict[str, Any]:
    """Overall, balanced, Many/Medium/Few (None when the data has no class in a group), worst class, per class.

    Group and balanced accuracies are unweighted means of per-class accuracies over classes with test images.
    """
    acc = per_class_accuracy(pred, labels, len(class_names))
    return _summary(acc, float((pred == labels).mean()) if len(labels) else None, groups, class_names, np.nanargmin)


def flip_rates(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    labels: np.ndarray,
    groups: dict[str, list[int]],
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    """How often the top-1 prediction changes between two stages, per class and per shot group.

    Accuracy can hold while predictions churn (a class loses as many images as it gains); flips show it. Same
    keys as summarize(), but `worst` is the *highest* per-class flip rate.
    """
    changed = np.asarray(pred_a) != np.asarray(pred_b)
    per_class = _per_class_mean(changed, labels, len(class_names))
    return _summary(per_class, float(changed.mean()) if len(labels) else None, groups, class_names, np.nanargmax)


def _summary(
    per_class: np.ndarray,
    overall: float | None,
    groups: dict[str, list[int]],
    class_names: tuple[str, ...],
    pick_worst: Any,
) -> dict[str, Any]:
    present = ~np.isnan(per_class)

    def mean_of(classes: list[int]) -> float | None:
        vals = per_class[classes][present[classes]] if classes else np.array([])
        return float(vals.mean()) if vals.size else None

    worst = int(pick_worst(per_class)) if present.any() else None
    return {
        "overall": overall,
        "balanced": mean_of(list(range(len(class_names)))),
        "many": mean_of(groups["many"]),
        "medium": mean_of(groups["medium"]),
        "few": mean_of(groups["few"]),
        "worst": float(per_class[worst]) if worst is not None else None,
        "worst_class": class_names[worst] if worst is not None else None,
        "per_class": {name: (None if np.isnan(a) else float(a)) for name, a in zip(class_names, per_class)},
    }


def expected_accuracy(
    probs: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]], class_names: tuple[str, ...]
) -> dict[str, Any]:
    """summarize() with each image scored by the probability of its true class instead of 0/1: it moves with
    every change in the logits, so a handful of images per class still shows a loss (the INT8 repair)."""
    scores = np.asarray(probs)[np.arange(len(labels)), labels]
    per_class = _per_class_mean(scores, labels, len(class_names))
    return _summary(per_class, float(scores.mean()) if len(labels) else None, groups, class_names, np.nanargmin)


def expected_flips(
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    labels: np.ndarray,
    groups: dict[str, list[int]],
    class_names: tuple[str, ...],
) -> dict[str, Any]:
    """flip_rates() with each image scored by the total variation distance between the two stages' predicted
    distributions (the least chance that a sample from each differs) instead of 0/1."""
    distance = 0.5 * np.abs(np.asarray(probs_a) - np.asarray(probs_b)).sum(1)
    per_class = _per_class_mean(distance, labels, len(class_names))
    return _summary(per_class, float(distance.mean()) if len(labels) else None, groups, class_names, np.nanargmax)


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of test images on which two stages predict the same top-1 class."""
    return float((np.asarray(pred_a) == np.asarray(pred_b)).mean())


def confusion(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]`` over the test set (int64)."""
    index = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def tail_losses(
    matrix: np.ndarray, groups: dict[str, list[int]], class_names: tuple[str, ...], top: int = 3
) -> dict[str, dict[str, Any]]:
    """For each Medium and Few class, where its misclassified test images go: the `top` classes that absorb most
    of them, as counts and as shares of the class's test images. Accuracy says a rare class is lost; this says
    to whom (``Shirt`` to ``T-shirt/top``), which is what a user can act on (more data, a merged label)."""
    out: dict[str, dict[str, Any]] = {}
    for group in ("medium", "few"):
        for c in sorted(groups[group]):
            row = matrix[c]
            total = int(row.sum())
            others = sorted((j for j in range(len(row)) if j != c and row[j] > 0), key=lambda j: (-row[j], j))
            out[class_names[c]] = {
                "group": group,
                "test_images": total,
                "misclassified": total - int(row[c]),
                "lost_to": [
                    {"class": class_names[j], "images": int(row[j]), "share": float(row[j] / total)}
                    for j in others[:top]
                ],
            }
    return out
