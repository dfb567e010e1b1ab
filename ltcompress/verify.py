"""Stage 5: measure every stage on the test set — torch teacher, torch student and the exported FP32 and INT8
models under ONNX Runtime (CPU provider named explicitly) — check that the FP32 export reproduces the torch
student, count the per-class top-1 flips between consecutive stages, evaluate the gates and time the models."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ltcompress.config import ExportConfig
from ltcompress.data import LTData
from ltcompress.gates import Gate, GateResult, evaluate
from ltcompress.inference import ort_logits, speed, split_labels, torch_logits
from ltcompress.metrics import STAGES, Flips, Groups, StageMetrics, TailLoss, agreement, confusion, flip_rates
from ltcompress.metrics import summarize, summarize_stages, tail_losses
from ltcompress.results import Int8Parity, Parity

log = logging.getLogger("ltcompress")


@dataclass(frozen=True)
class Verification:
    """What the verify stage measured, for the report and the verdict."""

    stages: Mapping[str, StageMetrics]  # stage key -> metrics
    parity: Parity
    gates: tuple[GateResult, ...]
    flips: Mapping[str, Flips]  # "a->b" -> flip rates between consecutive stages
    tails: Mapping[str, Mapping[str, TailLoss]]  # stage -> Medium/Few class -> where its errors go
    int8_parity: Int8Parity | None = None  # reported and left to gates: quantization is meant to change logits
    latency: dict[str, Any] | None = None  # report.json's artifacts.latency_ms (inference.speed)
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))  # of the images measured
    predictions: Mapping[str, np.ndarray] = field(repr=False, default_factory=dict)
    confusions: Mapping[str, np.ndarray] = field(repr=False, default_factory=dict)  # stage -> [true, predicted]


def check_parity(reference: np.ndarray, exported: np.ndarray, cfg: ExportConfig) -> Parity:
    """Numeric and label agreement of the FP32 export with torch; judged against the stated tolerances."""
    return Parity(
        max_abs_logit_diff=float(np.abs(reference - exported).max()),
        allowed_logit_diff=cfg.logits_atol + cfg.logits_rtol * float(np.abs(reference).max()),
        top1_agreement=agreement(reference.argmax(1), exported.argmax(1)),
        required_agreement=1.0 - cfg.agreement_tol,
    )


def run(
    data: LTData,
    groups: Groups,
    models: Mapping[str, nn.Module | Path],
    gates: Sequence[Gate],
    cfg: ExportConfig,
    device: torch.device,
    batch: int,
    show: bool = False,
) -> Verification:
    """Every stage in `models` (torch modules for teacher and student, ONNX files for fp32 and int8) on the test
    set (`show`: under progress bars). The FP32 export's parity with torch is judged here (exit 4 when off); the
    INT8 model's agreement is only reported, for gates to judge."""
    logits: dict[str, np.ndarray] = {}
    for stage in (s for s in STAGES if s in models):
        model, desc = models[stage], (f"verify {stage}{' (parity)' * (stage == 'fp32')}" if show else "")
        if isinstance(model, Path):
            logits[stage] = ort_logits(model, data.test, data, batch, desc)
        else:
            logits[stage] = torch_logits(model, data.test, data, device, batch, desc)
    preds = {k: v.argmax(1) for k, v in logits.items()}
    labels = split_labels(data, data.test)
    stages = measure(preds, labels, groups, data.class_names)
    int8_parity = None
    if "int8" in logits:
        diff = float(np.abs(logits["student"] - logits["int8"]).max())
        int8_parity = Int8Parity(diff, stages["int8"].agreement_with_student)
    confusions = {k: confusion(p, labels, data.num_classes) for k, p in preds.items()}
    exported = {k: p for k, p in models.items() if isinstance(p, Path)}
    return Verification(
        stages=stages,
        parity=check_parity(logits["student"], logits["fp32"], cfg),
        gates=tuple(evaluate(gates, stages, preds, labels, groups, data.class_names)),
        flips=flips(preds, labels, groups, data.class_names),
        tails={k: tail_losses(m, groups, data.class_names) for k, m in confusions.items()},
        int8_parity=int8_parity,
        latency=speed(exported, (data.spec.channels, data.spec.size, data.spec.size), cfg.speed_budget_s),
        labels=labels,
        predictions=preds,
        confusions=confusions,
    )


def measure(
    preds: Mapping[str, np.ndarray], labels: np.ndarray, groups: Groups, class_names: tuple[str, ...]
) -> dict[str, StageMetrics]:
    """Each stage's metrics; the ONNX stages also carry their top-1 agreement with the torch student."""
    stages = summarize_stages(preds, labels, groups, class_names)
    for key, m in stages.items():
        log.info(
            "verify %-7s overall %.4f  balanced %.4f  few %s  worst %.4f (%s)",
            key,
            m.overall,
            m.balanced,
            "absent" if m.few is None else f"{m.few:.4f}",
            m.worst,
            m.worst_class,
        )
    return stages


def measure_file(onnx_path: Path, data: LTData, groups: Groups, batch: int) -> StageMetrics:
    """One more ONNX model on the test set, outside the run's stages (the INT8 model before its repair)."""
    logits = ort_logits(onnx_path, data.test, data, batch)
    return summarize(logits.argmax(1), split_labels(data, data.test), groups, data.class_names)


def flips(
    preds: Mapping[str, np.ndarray], labels: np.ndarray, groups: Groups, class_names: tuple[str, ...]
) -> dict[str, Flips]:
    """Per-class top-1 flip rates between consecutive stages (teacher->student, student->fp32, fp32->int8)."""
    order = [k for k in STAGES if k in preds]
    return {f"{a}->{b}": flip_rates(preds[a], preds[b], labels, groups, class_names) for a, b in zip(order, order[1:])}
