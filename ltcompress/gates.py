"""Gate expressions, parsed (and rejected with exit 2) before any work and evaluated on the verify stage.

    few >= 0.5                       fp32 (the exported model) when no stage is named
    int8.worst >= 0.3                a stage: teacher, student (torch), fp32, int8 (ONNX Runtime)
    int8.class[Ankle boot] >= 0.6    one class, by name
    int8.agreement >= 0.99           top-1 agreement with the torch student (fp32, int8)
    drop(fp32, int8).few <= 0.01     metric of the first stage minus the second's (a loss is positive)
    flip(fp32, int8).few <= 0.05     share of test images whose top-1 changed; worst = the most-flipped class

Metrics: overall, balanced, many, medium, few, worst, class[NAME] (and agreement for an ONNX stage).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ltcompress.errors import UsageError
from ltcompress.metrics import STAGES, SUMMARY_KEYS, GroupSummary, StageMetrics, flip_rates
from ltcompress.registry import did_you_mean

EXPORTED = ("fp32", "int8")  # stages with an agreement to the torch student
DEFAULT_STAGE = "fp32"
METRICS = SUMMARY_KEYS + ("agreement",)
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GATE = re.compile(rf"^\s*(?P<lhs>.*?)\s*(?P<op>>=|<=|>|<)\s*(?P<value>{_NUMBER})\s*$")
_PAIR = re.compile(r"^(?P<fn>drop|flip)\s*\(\s*(?P<a>\w+)\s*,\s*(?P<b>\w+)\s*\)\s*(?:\.\s*(?P<metric>.+))?$")
_STAGE = re.compile(r"^(?P<stage>[A-Za-z_]\w*)\s*\.\s*(?P<metric>.+)$")
_CLASS = re.compile(r"^class\s*\[\s*(?P<name>[^\]]+?)\s*\]$")
GATE_HELP = (
    "a gate reads '[stage.]metric OP threshold', 'drop(a, b).metric OP threshold' or "
    "'flip(a, b)[.metric] OP threshold', e.g. 'few >= 0.5', 'int8.class[Sandal] >= 0.6', "
    "'drop(fp32, int8).few <= 0.01'; stages "
    + ", ".join(STAGES)
    + f" (default {DEFAULT_STAGE}); metrics "
    + ", ".join(METRICS)
    + ", class[NAME]; OP one of "
    + ", ".join(OPS)
    + "; thresholds are fractions"
)


@dataclass(frozen=True)
class Gate:
    expr: str
    kind: str  # "stage", "drop" or "flip"
    stages: tuple[str, ...]  # one stage, or the (a, b) pair of drop/flip
    metric: str  # a METRICS key or "class"
    op: str
    threshold: float
    class_name: str | None = None

    @property
    def subject(self) -> str:
        """The measured quantity, spelled out: ``fp32.few``, ``drop(fp32, int8).class[Sandal]``."""
        metric = f"class[{self.class_name}]" if self.metric == "class" else self.metric
        head = self.stages[0] if self.kind == "stage" else f"{self.kind}({', '.join(self.stages)})"
        return f"{head}.{metric}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        g = self.gate
        return {
            "gate": g.expr,
            "subject": g.subject,
            "kind": g.kind,
            "stage": g.stages[-1],
            "stages": list(g.stages),
            "metric": g.metric,
            "class": g.class_name,
            "op": g.op,
            "threshold": g.threshold,
            "value": self.value,
            "passed": self.passed,
        }


def parse(expr: str) -> Gate:
    m = _GATE.match(expr)
    if not m or not m["lhs"]:
        raise UsageError(f"malformed gate {expr!r}: {GATE_HELP}")
    lhs, threshold = m["lhs"], float(m["value"])
    pair, staged = _PAIR.match(lhs), _STAGE.match(lhs)
    stages: tuple[str, ...]
    if pair:
        kind, stages, metric = pair["fn"], (pair["a"], pair["b"]), pair["metric"] or "overall"
        if pair["fn"] == "drop" and not pair["metric"]:
            raise UsageError(f"gate {expr!r}: drop(a, b) needs a metric, e.g. 'drop(fp32, int8).few <= 0.01'")
        if stages[0] == stages[1]:
            raise UsageError(f"gate {expr!r}: {kind}() compares two different stages")
    elif staged and not _CLASS.match(lhs):
        kind, stages, metric = "stage", (staged["stage"],), staged["metric"]
    else:
        kind, stages, metric = "stage", (DEFAULT_STAGE,), lhs
    for stage in stages:
        if stage not in STAGES:
            raise UsageError(f"gate {expr!r}: unknown stage {stage!r}.{did_you_mean(stage, list(STAGES))} {GATE_HELP}")
    class_name = None
    named = _CLASS.match(metric)
    if not named and not re.fullmatch(r"[A-Za-z_]\w*", metric):
        raise UsageError(f"malformed gate {expr!r}: {GATE_HELP}")
    if named:
        metric, class_name = "class", named["name"]
    elif metric not in METRICS or (metric == "agreement" and (kind != "stage" or stages[0] not in EXPORTED)):
        hint = (
            did_you_mean(metric, list(METRICS))
            if metric not in METRICS
            else (f" agreement (with the torch student) exists for the stages {', '.join(EXPORTED)} only.")
        )
        raise UsageError(f"gate {expr!r}: unknown metric {metric!r}.{hint} {GATE_HELP}")
    low = -1.0 if kind == "drop" else 0.0
    if not low <= threshold <= 1.0:
        hint = f" (did you mean {threshold / 100:g}?)" if 1 < abs(threshold) <= 100 else ""
        raise UsageError(f"gate {expr!r}: threshold {threshold:g} is not a fraction in [{low:g}, 1]{hint}")
    return Gate(expr.strip(), kind, stages, metric, m["op"], threshold, class_name)


def check_applicable(
    gates: Sequence[Gate], groups: Mapping[str, list[int]], stages: tuple[str, ...], class_names: tuple[str, ...]
) -> None:
    """Reject, before training, gates on a shot group the data lacks, a class it does not have, or a stage this
    run does not produce."""
    for gate in gates:
        if gate.metric in groups and not groups[gate.metric]:
            raise UsageError(
                f"gate {gate.expr!r}: this dataset has no {gate.metric.capitalize()}-shot class "
                f"(groups present: {', '.join(k for k, v in groups.items() if v)})"
            )
        if gate.metric == "class" and gate.class_name not in class_names:
            raise UsageError(
                f"gate {gate.expr!r}: no class named {gate.class_name!r}."
                f"{did_you_mean(str(gate.class_name), list(class_names))} Classes: "
                f"{', '.join(class_names)}"
            )
        for stage in gate.stages:
            if stage not in stages:
                extra = " (turn INT8 on with --int8)" if stage == "int8" else ""
                raise UsageError(
                    f"gate {gate.expr!r}: stage {stage!r} does not exist in this run "
                    f"(stages: {', '.join(stages)}){extra}"
                )


def evaluate(
    gates: Sequence[Gate],
    stage_metrics: Mapping[str, GroupSummary],
    predictions: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    groups: Mapping[str, list[int]] | None = None,
    class_names: tuple[str, ...] = (),
    flips: Mapping[tuple[str, ...], GroupSummary] | None = None,
) -> list[GateResult]:
    """Every gate's value and verdict; a value that does not exist (an empty group) fails its gate.
    flip() gates need the stages' predictions, the test labels and the groups, or `flips`: flip summaries per
    (a, b) pair measured another way (the INT8 repair's expected flips)."""
    results = []
    for gate in gates:
        if gate.kind == "flip":
            a, b = gate.stages
            if flips is not None:
                value = _pick(flips[(a, b)], gate)
            else:
                assert predictions is not None and labels is not None and groups is not None
                value = _pick(flip_rates(predictions[a], predictions[b], labels, groups, class_names), gate)
        elif gate.kind == "drop":
            first, second = (_pick(stage_metrics[s], gate) for s in gate.stages)
            value = None if first is None or second is None else first - second
        else:
            value = _pick(stage_metrics[gate.stages[0]], gate)
        passed = value is not None and OPS[gate.op](value, gate.threshold)
        results.append(GateResult(gate, value, passed))
    return results


def _pick(metrics: GroupSummary, gate: Gate) -> float | None:
    if gate.metric == "class":
        return metrics.per_class.get(str(gate.class_name))
    if gate.metric == "agreement":
        return metrics.agreement_with_student if isinstance(metrics, StageMetrics) else None
    return metrics.value(gate.metric)
