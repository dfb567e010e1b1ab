import re

import numpy as np
import pytest

from ltcompress.errors import UsageError
from ltcompress.gates import check_applicable, evaluate, parse


@pytest.mark.parametrize(
    "expr, stage, metric, op, threshold",
    [
        ("few >= 0.5", "fp32", "few", ">=", 0.5),
        ("balanced>0.8", "fp32", "balanced", ">", 0.8),
        (" student.worst <= .3 ", "student", "worst", "<=", 0.3),
        ("teacher.overall < 1", "teacher", "overall", "<", 1.0),
    ],
)
def test_parse(expr, stage, metric, op, threshold):
    g = parse(expr)
    assert (g.stages, g.metric, g.op, g.threshold) == ((stage,), metric, op, threshold)


@pytest.mark.parametrize(
    "expr, message",
    [
        ("few", "malformed"),
        ("few => 0.5", "malformed"),
        ("few >= abc", "malformed"),
        ("fewshot >= 0.5", "unknown metric"),
        ("int9.few >= 0.5", "unknown stage"),
        ("few >= 60", "did you mean 0.6"),
        ("few >= -0.1", "not a fraction"),
        ("__import__('os') >= 0.1", "malformed"),
    ],
)
def test_malformed_gates_are_usage_errors(expr, message):
    with pytest.raises(UsageError, match=message) as info:
        parse(expr)
    assert info.value.exit_code == 2


def test_evaluate_reports_value_threshold_and_absent_metric_fails():
    stages = {"fp32": _metrics(few=0.42, many=None, balanced=0.8)}
    results = evaluate([parse("few >= 0.5"), parse("balanced >= 0.8"), parse("many > 0.1")], stages)
    assert [r.passed for r in results] == [False, True, False]
    assert results[0].to_dict() == {
        "gate": "few >= 0.5",
        "subject": "fp32.few",
        "kind": "stage",
        "stage": "fp32",
        "stages": ["fp32"],
        "metric": "few",
        "class": None,
        "op": ">=",
        "threshold": 0.5,
        "value": 0.42,
        "passed": False,
    }


def test_gate_on_absent_group_or_missing_stage_is_rejected():
    groups = {"many": [0], "medium": [1], "few": []}
    with pytest.raises(UsageError, match="no Few-shot class"):
        check_applicable([parse("few >= 0.1")], groups, ("student", "fp32"), ())
    with pytest.raises(UsageError, match="stage 'teacher' does not exist"):
        check_applicable([parse("teacher.many >= 0.1")], groups, ("student", "fp32"), ())
    check_applicable([parse("many >= 0.1")], groups, ("student", "fp32"), ())


@pytest.mark.parametrize(
    "expr, kind, stages, metric, cls, threshold",
    [
        ("int8.few >= 0.6", "stage", ("int8",), "few", None, 0.6),
        ("drop(fp32, int8).few <= 0.01", "drop", ("fp32", "int8"), "few", None, 0.01),
        ("drop( student ,int8 ).balanced < -0.5", "drop", ("student", "int8"), "balanced", None, -0.5),
        ("flip(fp32, int8) <= 0.02", "flip", ("fp32", "int8"), "overall", None, 0.02),
        ("flip(teacher, student).worst < 0.3", "flip", ("teacher", "student"), "worst", None, 0.3),
        ("int8.class[Ankle boot] >= 0.5", "stage", ("int8",), "class", "Ankle boot", 0.5),
        ("class[T-shirt/top] > 0.1", "stage", ("fp32",), "class", "T-shirt/top", 0.1),
        ("drop(fp32,int8).class[ Sandal ] <= 0.05", "drop", ("fp32", "int8"), "class", "Sandal", 0.05),
        ("int8.agreement >= 0.99", "stage", ("int8",), "agreement", None, 0.99),
    ],
)
def test_parse_stage_drop_flip_and_class_gates(expr, kind, stages, metric, cls, threshold):
    g = parse(expr)
    assert (g.kind, g.stages, g.metric, g.class_name, g.threshold) == (kind, stages, metric, cls, threshold)


@pytest.mark.parametrize(
    "expr, message",
    [
        ("drop(fp32, int8) <= 0.1", "needs a metric"),
        ("flip(int8, int8) < 0.1", "two different stages"),
        ("drop(fp32, int9).few < 0.1", "unknown stage 'int9'"),
        ("flip(fp32, int8) <= 1.5", "not a fraction in [0, 1]"),
        ("drop(fp32, int8).few <= -2", "not a fraction in [-1, 1]"),
        ("student.agreement > 0.9", "fp32, int8 only"),
        ("flip(fp32, int8).agreement < 0.1", "fp32, int8 only"),
        ("int8.class[] >= 0.1", "malformed"),
        (">= 0.5", "malformed"),
    ],
)
def test_malformed_new_gates(expr, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        parse(expr)


def test_evaluate_drop_flip_class_and_agreement_against_hand_computed_values():
    names = ("a", "b", "c")
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = {"fp32": np.array([0, 0, 1, 1, 2, 0]), "int8": np.array([0, 1, 1, 1, 0, 0])}
    groups = {"many": [0], "medium": [1], "few": [2]}
    stages = {
        "fp32": _metrics(few=0.5, per_class={"a": 1.0, "b": 1.0, "c": 0.5}, agreement_with_student=1.0),
        "int8": _metrics(few=0.0, per_class={"a": 0.5, "b": 1.0, "c": 0.0}, agreement_with_student=0.5),
    }
    gates = [
        parse(e)
        for e in (
            "drop(fp32, int8).few <= 0.4",
            "drop(fp32, int8).class[b] <= 0",
            "flip(fp32, int8) <= 0.4",
            "flip(fp32, int8).few >= 0.5",
            "flip(fp32, int8).worst <= 0.5",
            "int8.class[a] >= 0.5",
            "int8.agreement > 0.5",
        )
    ]
    check_applicable(gates, groups, ("fp32", "int8"), names)
    got = [(r.value, r.passed) for r in evaluate(gates, stages, preds, labels, groups, names)]
    # flips: class a 1 of 2, class b 0 of 2, class c 1 of 2 -> overall 2/6, few 0.5, worst 0.5
    assert got == [
        (0.5, False),
        (0.0, True),
        (pytest.approx(1 / 3), True),
        (0.5, True),
        (0.5, True),
        (0.5, True),
        (0.5, False),
    ]


def test_gate_on_unknown_class_names_the_classes():
    with pytest.raises(UsageError, match="no class named 'Sandals'. Did you mean: Sandal"):
        check_applicable(
            [parse("int8.class[Sandals] >= 0.1")],
            {"many": [0], "medium": [], "few": []},
            ("fp32", "int8"),
            ("Sandal", "Bag"),
        )


def _metrics(**values):
    """A stage's metrics with the given values, the others absent."""
    from ltcompress.metrics import StageMetrics

    empty = dict.fromkeys(("overall", "balanced", "many", "medium", "few", "worst", "worst_class"))
    return StageMetrics(**{**empty, "per_class": {}, **values})
