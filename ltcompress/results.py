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
    """An int8 gate on the repair's evidence: the gate it is judged as there (itself, or on training views the
    part quantization controls), its value, one-sided bounds at the run's confidence, the images behind it,
    and the decision: "fails" or "passes" with confidence, or "undecided" (thin evidence, straddling bounds)."""

    gate: Gate
    judged: Gate
    value: float | None
    low: float | None
    high: float | None
    images: int
    decision: str

    @property
    def failing(self) -> bool:
        """Fails with confidence: the only case the repair acts on."""
        return self.decision == "fails"

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate.expr,
            "judged_as": self.judged.expr,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "images": self.images,
            "decision": self.decision,
        }


@dataclass(frozen=True)
class ClassEvidence:
    """A gated class on the repair's evidence: its distinct images, their views, and FP32's and INT8's top-1."""

    name: str
    images: int
    views: int
    fp32: float
    int8_before: float
    int8_after: float | None  # None when the repair left the model as it was

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    seconds: float  # since the repair started
    second_pass: bool  # taken in rank order after no single node lowered the divergence
    gates: tuple[RepairGate, ...]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("second_pass", "gates")}
        return {**out, "pass": "second" if self.second_pass else "first", "gates": _shown(self.gates)}


@dataclass(frozen=True)
class BiasStep:
    """The repair's logit bias correction: the per-class output offset measured, and whether it was kept (it
    lowered the class-balanced divergence from FP32 on the evidence)."""

    kept: bool
    per_class: tuple[tuple[str, float], ...]  # (class, offset added to its logit)
    kl_before: float
    kl_after: float  # with the offset (kept or not)
    seconds: float  # since the repair started

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "per_class": dict(self.per_class)}


@dataclass(frozen=True)
class RepairRecord:
    """What the INT8 repair did (report.json's `int8_repair`). `met`: no int8 gate fails with confidence on the
    evidence afterwards. It is reported, not a verdict: the test-set gates decide the run."""

    evidence: str  # where the evidence comes from, as the report states it
    held_out: bool  # held-out images (data.val_list) rather than training views
    images: int
    views: int
    confidence: float
    gates_before: tuple[RepairGate, ...]
    budget_nodes: int
    budget_max_size: float
    budget_seconds: float
    ranked_by: str
    needed: bool
    met: bool
    classes: tuple[ClassEvidence, ...] = ()
    logit_bias: BiasStep | None = None  # None: not tried (export.repair_logit_bias off, or nothing to repair)
    nodes: tuple[RepairStep, ...] = ()
    gates_after: tuple[RepairGate, ...] = ()
    gated_classes: tuple[str, ...] = ()
    int8_size_bytes: int | None = None
    int8_latency_ms: float | None = None
    stopped: str | None = None
    trials: int = 0  # models quantized and run on the evidence (ranking and trying nodes)
    seconds: float = 0.0
    ranking: tuple[tuple[str, str, float], ...] = ()  # (node, op type, damage), the most damaging first
    unrepaired_model: str | None = None  # file name of the model before repair (kept when a node went back)
    test_before: StageMetrics | None = None  # the unrepaired model on the test set: reported only

    def to_dict(self) -> dict[str, Any]:
        return {
            "evidence": {
                "source": self.evidence,
                "held_out": self.held_out,
                "images": self.images,
                "views": self.views,
                "confidence": self.confidence,
                "classes": [c.to_dict() for c in self.classes],
            },
            "gates_before": _shown(self.gates_before),
            "budget": {"nodes": self.budget_nodes, "max_size": self.budget_max_size, "seconds": self.budget_seconds},
            "ranked_by": self.ranked_by,
            "needed": self.needed,
            "gated_classes": list(self.gated_classes),
            "int8_size_bytes": self.int8_size_bytes,
            "int8_latency_ms": self.int8_latency_ms,
            "met": self.met,
            "logit_bias": self.logit_bias.to_dict() if self.logit_bias else None,
            "nodes": [n.to_dict() for n in self.nodes],
            "gates_after": _shown(self.gates_after),
            "stopped": self.stopped,
            "trials": self.trials,
            "seconds": self.seconds,
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

    @property
    def failed_gates(self) -> tuple[GateResult, ...]:
        return tuple(g for g in self.gates if not g.passed)

    @property
    def passed(self) -> bool:
        return self.parity_ok and not self.failed_gates


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


def verdict(gates: Sequence[GateResult], parity: Parity | None = None) -> Verdict:
    """The one place pass/fail is decided: every gate passed on the test set, and the FP32 export reproduces
    the torch student (when there is one to compare with). The INT8 repair's own judgment is evidence for its
    choices, never a verdict: a run whose INT8 model meets its gates on the test set passes."""
    return Verdict(tuple(gates), parity is None or parity.ok)


def results_sha256(config: Mapping[str, Any], stages: Mapping[str, Any], gates: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of report.json's results (its `config`, `stages` and `gates`, as canonical JSON), which every model
    file of the run carries as `ltcompress.report_sha256`: a report and a model belong together when it matches.
    (The report records the models' own sha256, so the models cannot carry the whole file's hash.)"""
    text = json.dumps({"config": config, "stages": stages, "gates": gates}, sort_keys=True, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()
