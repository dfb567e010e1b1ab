import numpy as np
import pytest

from ltcompress.metrics import agreement, per_class_accuracy, summarize

NAMES = ("a", "b", "c", "d")


def test_per_class_accuracy_and_missing_class_is_nan():
    labels = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 0])
    acc = per_class_accuracy(pred, labels, 4)
    assert acc[:3].tolist() == pytest.approx([0.5, 2 / 3, 0.0])
    assert np.isnan(acc[3])


def test_summary_groups_balanced_worst_and_absent_group():
    labels = np.repeat(np.arange(4), 10)
    pred = labels.copy()
    pred[:5] = 1  # class a: 50 %
    pred[30:39] = 0  # class d: 10 %
    groups = {"many": [0, 1], "medium": [2, 3], "few": []}
    m = summarize(pred, labels, groups, NAMES)
    assert m["overall"] == pytest.approx(26 / 40)
    assert m["balanced"] == pytest.approx((0.5 + 1 + 1 + 0.1) / 4)
    assert m["many"] == pytest.approx(0.75) and m["medium"] == pytest.approx(0.55)
    assert m["few"] is None  # absent, not 0
    assert m["worst"] == pytest.approx(0.1) and m["worst_class"] == "d"
    assert m["per_class"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 1.0, "d": 0.1})


def test_balanced_differs_from_overall_on_imbalanced_test_set():
    labels = np.array([0] * 90 + [1] * 10)
    pred = np.zeros(100, dtype=int)
    m = summarize(pred, labels, {"many": [0], "medium": [], "few": [1]}, ("x", "y"))
    assert m["overall"] == pytest.approx(0.9) and m["balanced"] == pytest.approx(0.5) and m["few"] == 0.0


def test_agreement():
    assert agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == 0.75
