import numpy as np
import pytest

from ltcompress.metrics import agreement, flip_rates, per_class_accuracy, summarize

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


def test_flip_rates_match_a_naive_count():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    a, b = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    b[:100] = a[:100]
    groups = {"many": [0, 1], "medium": [2], "few": [3]}
    got = flip_rates(a, b, labels, groups, ("w", "x", "y", "z"))
    naive = {}
    for c, name in enumerate("wxyz"):
        idx = [i for i in range(200) if labels[i] == c]
        naive[name] = sum(a[i] != b[i] for i in idx) / len(idx)
    assert got["per_class"] == pytest.approx(naive)
    assert got["overall"] == pytest.approx(sum(a[i] != b[i] for i in range(200)) / 200)
    assert got["few"] == pytest.approx(naive["z"]) and got["many"] == pytest.approx((naive["w"] + naive["x"]) / 2)
    assert got["worst"] == max(naive.values()) and naive[got["worst_class"]] == got["worst"]
    assert flip_rates(a, a, labels, groups, ("w", "x", "y", "z"))["worst"] == 0.0
