"""Per-class accuracy, shot-group accuracy and balanced accuracy (pure numpy, no torch)."""
from __future__ import annotations

from typing import Any

import numpy as np

SUMMARY_KEYS = ("overall", "balanced", "many", "medium", "few", "worst")


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class on the test set; NaN for a class with no test image."""
    correct = np.bincount(labels, weights=(pred == labels).astype(np.float64), minlength=num_classes)
    total = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def summarize(pred: np.ndarray, labels: np.ndarray, groups: dict[str, list[int]],
              class_names: tuple[str, ...]) -> dict[str, Any]:
    """Overall, balanced, Many/Medium/Few (None when the data has no class in a group), worst class, per class.

    Group and balanced accuracies are unweighted means of per-class accuracies over classes with test images.
    """
    acc = per_class_accuracy(pred, labels, len(class_names))
    present = ~np.isnan(acc)

    def mean_of(classes: list[int]) -> float | None:
        vals = acc[classes][present[classes]] if classes else np.array([])
        return float(vals.mean()) if vals.size else None

    worst = int(np.nanargmin(acc)) if present.any() else None
    return {
        "overall": float((pred == labels).mean()) if len(labels) else None,
        "balanced": mean_of(list(range(len(class_names)))),
        "many": mean_of(groups["many"]),
        "medium": mean_of(groups["medium"]),
        "few": mean_of(groups["few"]),
        "worst": float(acc[worst]) if worst is not None else None,
        "worst_class": class_names[worst] if worst is not None else None,
        "per_class": {name: (None if np.isnan(a) else float(a)) for name, a in zip(class_names, acc)},
    }


def agreement(pred_a: np.ndarray, pred_b: np.ndarray) -> float:
    """Fraction of test images on which two stages predict the same top-1 class."""
    return float((np.asarray(pred_a) == np.asarray(pred_b)).mean())
