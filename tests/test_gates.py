import pytest

from ltcompress.errors import UsageError
from ltcompress.gates import check_applicable, evaluate, parse


@pytest.mark.parametrize("expr, stage, metric, op, threshold", [
    ("few >= 0.5", "fp32", "few", ">=", 0.5),
    ("balanced>0.8", "fp32", "balanced", ">", 0.8),
    (" student.worst <= .3 ", "student", "worst", "<=", 0.3),
    ("teacher.overall < 1", "teacher", "overall", "<", 1.0),
])
def test_parse(expr, stage, metric, op, threshold):
    g = parse(expr)
    assert (g.stage, g.metric, g.op, g.threshold) == (stage, metric, op, threshold)


@pytest.mark.parametrize("expr, message", [
    ("few", "malformed"), ("few => 0.5", "malformed"), ("few >= abc", "malformed"),
    ("fewshot >= 0.5", "unknown metric"), ("int9.few >= 0.5", "unknown stage"),
    ("few >= 60", "did you mean 0.6"), ("few >= -0.1", "not a fraction"),
    ("__import__('os') >= 0.1", "malformed"),
])
def test_malformed_gates_are_usage_errors(expr, message):
    with pytest.raises(UsageError, match=message) as info:
        parse(expr)
    assert info.value.exit_code == 2


def test_evaluate_reports_value_threshold_and_absent_metric_fails():
    stages = {"fp32": {"few": 0.42, "many": None, "balanced": 0.8}}
    results = evaluate([parse("few >= 0.5"), parse("balanced >= 0.8"), parse("many > 0.1")], stages)
    assert [r.passed for r in results] == [False, True, False]
    assert results[0].to_dict() == {"gate": "few >= 0.5", "stage": "fp32", "metric": "few", "op": ">=",
                                    "threshold": 0.5, "value": 0.42, "passed": False}


def test_gate_on_absent_group_or_missing_stage_is_rejected():
    groups = {"many": [0], "medium": [1], "few": []}
    with pytest.raises(UsageError, match="no Few-shot class"):
        check_applicable([parse("few >= 0.1")], groups, ("student", "fp32"))
    with pytest.raises(UsageError, match="stage 'teacher' does not exist"):
        check_applicable([parse("teacher.many >= 0.1")], groups, ("student", "fp32"))
    check_applicable([parse("many >= 0.1")], groups, ("student", "fp32"))
