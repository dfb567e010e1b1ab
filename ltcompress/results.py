"""The typed values the verify stage and the INT8 repair hand on (parity, the repair's record), and the one
verdict: whether a run or a re-verification passed. Converted to JSON only where they are written."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # annotations only: CompressResult and VerifyResult build on Judged, and `import ltcompress`
    from ltcompress.gates import Gate, GateResult  # stays free of numpy for the CLI's --help
    from ltcompress.metrics import StageMetrics


@dataclass(frozen=True)
class Parity:
    """Numeric and label agreement of the FP32 export with the torch student, against the stated tolerances:
    when it is off, the export is wrong (exit 4), whatever the gates say."""

    max_abs_logit_diff: float
    allowed_logit_diff: float
    top1_agreement: float
    required_agreement: float

    @property
    def ok(self) -> bool:
        return self.max_abs_logit_diff <= self.allowed_logit_diff and self.top1_agreement >= self.required_agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_logit_diff": self.max_abs_logit_diff,
            "allowed_logit_diff": self.allowed_logit_diff,
            "top1_agreement": self.top1_agreement,
            "required_agreement": self.required_agreement,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Int8Parity:
    """The INT8 model's distance from the torch student: reported, and left to the gates to judge, since
    quantization is meant to change the logits."""

    max_abs_logit_diff: float
    top1_agreement: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "judged_by": "gates"}


@dataclass(frozen=True)
class RepairGate:
    """An int8 gate on the held-out images: its top-1 value and, for drop() and flip(), its expected value
    (true-class probability, total variation), which a handful of rare-class images still measure. Both pass."""

    gate: Gate
    value: float | None
    expected: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate.expr, "value": self.value, "expected": self.expected, "passed": self.passed}


@dataclass(frozen=True)
class RepairStep:
    """One node the repair returned to FP32, and what the model looked like after it."""

    node: str
    op_type: str
    damage: float
    size_bytes: int
    added_bytes: int
    size_ratio: float
    latency_ms: float | None
    kl_after: float
    second_pass: bool  # taken in rank order after no single node lowered the divergence
    gates: tuple[RepairGate, ...]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("second_pass", "gates")}
        return {**out, "pass": "second" if self.second_pass else "first", "gates": _shown(self.gates)}


@dataclass(frozen=True)
class RepairRecord:
    """What the INT8 repair did (report.json's `int8_repair`); `met` is False when its budget ran out before
    every int8 gate passed on the held-out images, which fails the run like a failed gate."""

    held_out: str
    held_out_images: int
    gates_before: tuple[RepairGate, ...]
    budget_nodes: int
    budget_max_size: float
    ranked_by: str
    needed: bool
    met: bool
    nodes: tuple[RepairStep, ...] = ()
    gates_after: tuple[RepairGate, ...] = ()
    gated_classes: tuple[str, ...] = ()
    int8_size_bytes: int | None = None
    int8_latency_ms: float | None = None
    stopped: str | None = None
    ranking: tuple[tuple[str, str, float], ...] = ()  # (node, op type, damage), the most damaging first
    unrepaired_model: str | None = None  # file name of the model before repair (kept when a node went back)
    test_before: StageMetrics | None = None  # the unrepaired model on the test set: reported only

    def to_dict(self) -> dict[str, Any]:
        return {
            "held_out": self.held_out,
            "held_out_images": self.held_out_images,
            "gates_before": _shown(self.gates_before),
            "budget": {"nodes": self.budget_nodes, "max_size": self.budget_max_size},
            "ranked_by": self.ranked_by,
            "needed": self.needed,
            "gated_classes": list(self.gated_classes),
            "int8_size_bytes": self.int8_size_bytes,
            "int8_latency_ms": self.int8_latency_ms,
            "met": self.met,
            "nodes": [n.to_dict() for n in self.nodes],
            "gates_after": _shown(self.gates_after),
            "stopped": self.stopped,
            "ranking": [{"node": n, "op_type": t, "damage": d} for n, t, d in self.ranking],
            "unrepaired_model": self.unrepaired_model,
            "test_before": self.test_before.to_dict() if self.test_before else None,
        }


def _shown(gates: Sequence[RepairGate]) -> list[dict[str, Any]]:
    return [g.to_dict() for g in gates]


@dataclass(frozen=True)
class Verdict:
    """Whether a run (or a re-verification) passed, and every reason it did not."""

    gates: tuple[GateResult, ...]
    parity_ok: bool = True  # the FP32 export reproduces torch (False: exit 4, not a gate)
    repair_met: bool = True  # the INT8 repair met the int8 gates on its held-out images (or did not run)

    @property
    def failed_gates(self) -> tuple[GateResult, ...]:
        return tuple(g for g in self.gates if not g.passed)

    @property
    def passed(self) -> bool:
        return self.parity_ok and self.repair_met and not self.failed_gates


class Judged:
    """A result that carries a Verdict (a run's, a re-verification's): its pass/fail and gates, read from it."""

    verdict: Verdict

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def gates(self) -> tuple[GateResult, ...]:
        return self.verdict.gates

    @property
    def failed_gates(self) -> tuple[GateResult, ...]:
        return self.verdict.failed_gates


def verdict(gates: Sequence[GateResult], parity: Parity | None = None, repair: RepairRecord | None = None) -> Verdict:
    """The one place pass/fail is decided: every gate passed, the FP32 export reproduces the torch student
    (when there is one to compare with), and the INT8 repair, when it ran, met the int8 gates."""
    return Verdict(tuple(gates), parity is None or parity.ok, repair is None or repair.met)


def results_sha256(config: Mapping[str, Any], stages: Mapping[str, Any], gates: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of report.json's results (its `config`, `stages` and `gates`, as canonical JSON), which every model
    file of the run carries as `ltcompress.report_sha256`: a report and a model belong together when it matches.
    (The report records the models' own sha256, so the models cannot carry the whole file's hash.)"""
    text = json.dumps({"config": config, "stages": stages, "gates": gates}, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()
