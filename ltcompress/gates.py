"""Gate expressions: ``[stage.]metric OP threshold``, e.g. ``few >= 0.5`` or ``student.worst > 0.3``.

Parsed (and rejected with exit 2) before any training; evaluated on the verify stage's metrics.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ltcompress.errors import UsageError
from ltcompress.metrics import SUMMARY_KEYS
from ltcompress.registry import did_you_mean

STAGES = ("teacher", "student", "fp32")
DEFAULT_STAGE = "fp32"
OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}
_GATE = re.compile(r"^\s*(?:(?P<stage>[A-Za-z_]\w*)\s*\.\s*)?(?P<metric>[A-Za-z_]\w*)\s*"
                   r"(?P<op>>=|<=|>|<)\s*(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
GATE_HELP = ("a gate reads '[stage.]metric OP threshold', e.g. 'few >= 0.5' or 'student.balanced > 0.7'; "
             f"stages {', '.join(STAGES)} (default {DEFAULT_STAGE}); metrics {', '.join(SUMMARY_KEYS)}; "
             f"OP one of {', '.join(OPS)}; thresholds are fractions in [0, 1]")


@dataclass(frozen=True)
class Gate:
    expr: str
    stage: str
    metric: str
    op: str
    threshold: float


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        g = self.gate
        return {"gate": g.expr, "stage": g.stage, "metric": g.metric, "op": g.op,
                "threshold": g.threshold, "value": self.value, "passed": self.passed}

    def describe(self) -> str:
        g = self.gate
        shown = "n/a" if self.value is None else f"{self.value:.4f}"
        return f"{g.stage}.{g.metric} = {shown}, required {g.op} {g.threshold:g} ('{g.expr}')"


def parse(expr: str) -> Gate:
    m = _GATE.match(expr)
    if not m:
        raise UsageError(f"malformed gate {expr!r}: {GATE_HELP}")
    stage = m["stage"] or DEFAULT_STAGE
    metric, threshold = m["metric"], float(m["value"])
    if stage not in STAGES:
        raise UsageError(f"gate {expr!r}: unknown stage {stage!r}.{did_you_mean(stage, list(STAGES))} {GATE_HELP}")
    if metric not in SUMMARY_KEYS:
        raise UsageError(f"gate {expr!r}: unknown metric {metric!r}.{did_you_mean(metric, list(SUMMARY_KEYS))} "
                         f"{GATE_HELP}")
    if not 0.0 <= threshold <= 1.0:
        hint = f" (did you mean {threshold / 100:g}?)" if 1 < threshold <= 100 else ""
        raise UsageError(f"gate {expr!r}: threshold {threshold:g} is not a fraction in [0, 1]{hint}")
    return Gate(expr.strip(), stage, metric, m["op"], threshold)


def check_applicable(gates: list[Gate], groups: Mapping[str, list[int]], stages: tuple[str, ...]) -> None:
    """Reject, before training, gates on a shot group the data lacks or on a stage this run does not have."""
    for gate in gates:
        if gate.metric in groups and not groups[gate.metric]:
            raise UsageError(f"gate {gate.expr!r}: this dataset has no {gate.metric.capitalize()}-shot class "
                             f"(groups present: {', '.join(k for k, v in groups.items() if v)})")
        if gate.stage not in stages:
            raise UsageError(f"gate {gate.expr!r}: stage {gate.stage!r} does not exist in this run "
                             f"(stages: {', '.join(stages)})")


def evaluate(gates: list[Gate], stage_metrics: Mapping[str, Mapping[str, Any]]) -> list[GateResult]:
    results = []
    for gate in gates:
        value = stage_metrics[gate.stage][gate.metric]
        passed = value is not None and OPS[gate.op](value, gate.threshold)
        results.append(GateResult(gate, value, passed))
    return results
