"""The typed results and the one verdict: every reason a run fails is decided by results.verdict(), and the
values convert to report.json's documented keys."""

from __future__ import annotations

import dataclasses

import pytest

from ltcompress.gates import evaluate, parse
from ltcompress.metrics import StageMetrics
from ltcompress.results import BiasStep, Int8Parity, Parity, RepairGate, RepairRecord, RepairStep, verdict

STAGE = StageMetrics(0.8, 0.7, 0.9, 0.6, 0.4, 0.2, "c", {"a": 0.9, "b": 0.6, "c": 0.2}, agreement_with_student=1.0)


def _gates(*exprs: str):
    return evaluate([parse(e) for e in exprs], {"fp32": STAGE})


def _repair(met: bool) -> RepairRecord:
    user = parse("int8.few >= 0.5")
    judged = parse("drop(fp32, int8).few <= 0")
    gate = RepairGate(user, judged, 0.1 if not met else 0.0, 0.05, 0.2, 12, "fails" if not met else "passes")
    step = RepairStep("conv1", "Conv", 0.3, 1000, 100, 1.1, None, 0.01, 2.5, False, (gate,))
    return RepairRecord(
        "training views", False, 12, 96, 0.95, (gate,), 4, 1.5, 60.0, "kl", needed=True, met=met, nodes=(step,),
        gates_after=(gate,),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("gates", "parity_diff", "passed", "failed"),
    [
        (("few >= 0.3", "balanced >= 0.5"), 0.0, True, []),
        (("few >= 0.5", "balanced >= 0.5"), 0.0, False, ["few >= 0.5"]),
        (("few >= 0.3",), 1.0, False, []),  # the export does not reproduce torch
    ],
)
def test_verdict_is_every_gate_and_parity(gates, parity_diff, passed, failed):
    parity = Parity(parity_diff, 0.5, 1.0, 0.99)
    judged = verdict(_gates(*gates), parity)
    assert judged.passed is passed
    assert [g.gate.expr for g in judged.failed_gates] == failed
    assert judged.parity_ok is (parity_diff <= 0.5)


def test_a_verdict_without_parity_is_the_gates_alone_and_the_repair_is_no_part_of_it():
    import inspect

    assert verdict(_gates("few >= 0.3")).passed and not verdict(_gates("few >= 0.9")).passed
    assert verdict([]).passed  # no gate, nothing failed
    # the repair's judgment on its evidence is reported, never a verdict: the test-set gates decide
    assert list(inspect.signature(verdict).parameters) == ["gates", "parity"]
    assert not _repair(met=False).met and verdict(_gates("few >= 0.3")).passed


def test_parity_judges_both_tolerances_at_their_edges():
    assert Parity(0.5, 0.5, 0.99, 0.99).ok  # equal to the allowance passes
    assert not Parity(0.5001, 0.5, 1.0, 0.99).ok and not Parity(0.0, 0.5, 0.9899, 0.99).ok
    assert Parity(0.1, 0.5, 1.0, 0.99).to_dict() == {
        "max_abs_logit_diff": 0.1,
        "allowed_logit_diff": 0.5,
        "top1_agreement": 1.0,
        "required_agreement": 0.99,
        "ok": True,
    }
    assert Int8Parity(2.0, 0.97).to_dict() == {"max_abs_logit_diff": 2.0, "top1_agreement": 0.97, "judged_by": "gates"}


def test_records_are_frozen_and_convert_to_the_documented_keys():
    record = _repair(met=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.met = True  # type: ignore[misc]
    doc = record.to_dict()
    documented = {
        "evidence", "needed", "met", "gates_before", "gates_after", "nodes", "stopped", "ranking", "budget",
        "int8_size_bytes", "int8_latency_ms", "gated_classes", "unrepaired_model", "test_before", "ranked_by",
        "trials", "seconds", "logit_bias",
    }  # fmt: skip
    assert set(doc) == documented and doc["budget"] == {"nodes": 4, "max_size": 1.5, "seconds": 60.0}
    assert doc["logit_bias"] is None  # not tried
    bias = BiasStep(True, (("a", 0.5), ("b", -0.25)), 0.2, 0.1, 3.0)
    assert dataclasses.replace(record, logit_bias=bias).to_dict()["logit_bias"] == {
        "kept": True, "per_class": {"a": 0.5, "b": -0.25}, "kl_before": 0.2, "kl_after": 0.1, "seconds": 3.0,
    }  # fmt: skip
    assert set(doc["evidence"]) == {"source", "held_out", "images", "views", "confidence", "classes"}
    assert doc["nodes"][0]["pass"] == "first" and doc["nodes"][0]["gates"] == doc["gates_after"]
    assert doc["gates_after"] == [
        {
            "gate": "int8.few >= 0.5",
            "judged_as": "drop(fp32, int8).few <= 0",
            "value": 0.1,
            "low": 0.05,
            "high": 0.2,
            "images": 12,
            "decision": "fails",
        }
    ]


def test_stage_metrics_round_trip_through_json():
    doc = STAGE.to_dict()
    assert list(doc)[:8] == ["overall", "balanced", "many", "medium", "few", "worst", "worst_class", "per_class"]
    assert StageMetrics.from_dict(doc) == STAGE
    assert "agreement_with_student" not in dataclasses.replace(STAGE, agreement_with_student=None).to_dict()
