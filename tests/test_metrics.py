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
    assert m.overall == pytest.approx(26 / 40)
    assert m.balanced == pytest.approx((0.5 + 1 + 1 + 0.1) / 4)
    assert m.many == pytest.approx(0.75) and m.medium == pytest.approx(0.55)
    assert m.few is None  # absent, not 0
    assert m.worst == pytest.approx(0.1) and m.worst_class == "d"
    assert m.per_class == pytest.approx({"a": 0.5, "b": 1.0, "c": 1.0, "d": 0.1})


def test_balanced_differs_from_overall_on_imbalanced_test_set():
    labels = np.array([0] * 90 + [1] * 10)
    pred = np.zeros(100, dtype=int)
    m = summarize(pred, labels, {"many": [0], "medium": [], "few": [1]}, ("x", "y"))
    assert m.overall == pytest.approx(0.9) and m.balanced == pytest.approx(0.5) and m.few == 0.0


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
    assert got.per_class == pytest.approx(naive)
    assert got.overall == pytest.approx(sum(a[i] != b[i] for i in range(200)) / 200)
    assert got.few == pytest.approx(naive["z"]) and got.many == pytest.approx((naive["w"] + naive["x"]) / 2)
    assert got.worst == max(naive.values()) and naive[got.worst_class] == got.worst
    assert flip_rates(a, a, labels, groups, ("w", "x", "y", "z")).worst == 0.0


def test_confusion_and_tail_losses_follow_a_naive_count():
    from ltcompress.metrics import confusion, tail_losses

    rng = np.random.default_rng(3)
    names = tuple(f"c{i}" for i in range(6))
    labels = np.repeat(np.arange(6), [40, 30, 20, 10, 6, 4])
    pred = np.where(rng.random(len(labels)) < 0.6, labels, rng.integers(0, 6, len(labels)))
    matrix = confusion(pred, labels, 6)
    assert matrix.sum() == len(labels) and matrix.dtype == np.int64
    for t in range(6):
        for q in range(6):
            assert matrix[t, q] == sum(1 for a, b in zip(labels, pred) if a == t and b == q)
    groups = {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}
    tail = tail_losses(matrix, groups, names, top=2)
    assert list(tail) == ["c2", "c3", "c4", "c5"] and tail["c4"].group == "few"
    for name, lost in tail.items():
        c = names.index(name)
        wrong = [int(q) for a, q in zip(labels, pred) if a == c and q != c]
        assert lost.misclassified == len(wrong) and lost.test_images == int((labels == c).sum())
        ranked = sorted(set(wrong), key=lambda q: (-wrong.count(q), q))[:2]
        assert [x.cls for x in lost.lost_to] == [names[q] for q in ranked]
        assert [x.images for x in lost.lost_to] == [wrong.count(q) for q in ranked]
    perfect = tail_losses(confusion(labels, labels, 6), groups, names)
    assert all(v.misclassified == 0 and v.lost_to == () for v in perfect.values())
