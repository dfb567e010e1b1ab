"""INT8 repair (part of stage 4, export.int8_repair): when an int8 gate fails, the quantized nodes that hurt the
gated classes most go back to FP32, one at a time, until every int8 gate passes or the budget is spent.

Every decision is made on held-out images (data.val_list, or a stratified slice of the training set set aside
before training), never on the test set the gates are reported on. Nodes are ranked by the damage each does
alone (the model with only that node quantized): the mean, over the classes the failing gates look at, of each
class's mean KL divergence from the FP32 model, so a rare class counts as much as a frequent one and a handful of
held-out images still gives a graded signal where their top-1 accuracy could only be 0 or 1. The order is fixed
once (as Intel Neural Compressor's op-wise fallback does), then the worst nodes go back to float one by one.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ltcompress.config import ExportConfig
from ltcompress.data import LTData, hold_out
from ltcompress.errors import UsageError
from ltcompress.gates import Gate, GateResult, evaluate
from ltcompress.metrics import agreement, summarize
from ltcompress.onnx_export import Quantizer
from ltcompress.verify import latency_ms, ort_logits, split_labels, torch_logits

log = logging.getLogger("ltcompress")
UNREPAIRED = "student.int8.unrepaired.onnx"
RANKED_BY = ("per-class mean KL divergence from FP32 of the model with only that node quantized, averaged over "
             "the classes the failing int8 gates look at (held-out images)")


@dataclass(frozen=True)
class HeldOut:
    """The held-out images' labels, the FP32 export's logits on them, and the top-1 predictions of every other
    stage the int8 gates compare with (fp32, and student or teacher when a gate names them)."""

    labels: np.ndarray
    fp32_logits: np.ndarray
    fixed: dict[str, np.ndarray]
    source: str


def int8_gates(gates: list[Gate]) -> list[Gate]:
    """The gates the repair works for: those that read the int8 stage (int8.x, drop/flip with int8)."""
    return [g for g in gates if "int8" in g.stages]


def set_aside(data: LTData, gates: list[Gate], share: float, seed: int) -> LTData:
    """The held-out images the repair decides on, checked before anything trains: data.val_list's, or a
    stratified training slice set aside here (the class counts then count what is left for training)."""
    if not int8_gates(gates):
        raise UsageError("export.int8_repair works toward the int8 gates and this run has none: add one, e.g. "
                         "--gate 'drop(fp32, int8).few <= 0.01'")
    if data.val is None:
        data = hold_out(data, share, seed)
    log.info("INT8 repair decides on held-out images: %s", data.val_source)
    return data


def held_out(data: LTData, gates: list[Gate], fp32_path: Path, models: Mapping[str, Any], device: Any,
             batch: int) -> HeldOut:
    """Measure the fixed stages on `data.val` once (torch stages only when a gate needs them)."""
    assert data.val is not None, "the held-out split is set aside before training (api._validate)"
    fp32 = ort_logits(fp32_path, data.val, data, batch)
    fixed = {"fp32": fp32.argmax(1)}
    wanted = {s for g in gates for s in g.stages} | ({"student"} if any(g.metric == "agreement" for g in gates)
                                                    else set())
    for stage in sorted(wanted - {"fp32", "int8"}):
        fixed[stage] = torch_logits(models[stage], data.val, data, device, batch).argmax(1)
    return HeldOut(split_labels(data, data.val), fp32, fixed, data.val_source)


def gated_classes(gates: list[Gate], groups: Mapping[str, list[int]], class_names: tuple[str, ...]) -> list[int]:
    """The classes a set of gates reads: a shot group's, one named class, or all of them (overall, balanced,
    worst, agreement)."""
    classes: set[int] = set()
    for g in gates:
        if g.metric in ("many", "medium", "few"):
            classes |= set(groups[g.metric])
        elif g.metric == "class":
            classes.add(class_names.index(str(g.class_name)))
        else:
            classes |= set(range(len(class_names)))
    return sorted(classes)


def damage(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray, classes: list[int]) -> float:
    """Mean over `classes` (those with held-out images) of the class's mean KL(softmax(reference) || softmax(logits))."""
    ref, out = _log_softmax(reference), _log_softmax(logits)
    kl = (np.exp(ref) * (ref - out)).sum(1)
    per_class = [float(kl[labels == c].mean()) for c in classes if (labels == c).any()]
    return float(np.mean(per_class)) if per_class else 0.0


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def judge(gates: list[Gate], held: HeldOut, int8_pred: np.ndarray, groups: Mapping[str, list[int]],
          class_names: tuple[str, ...]) -> list[GateResult]:
    """The int8 gates evaluated on the held-out images (the same expressions the test set is gated with)."""
    preds = {**held.fixed, "int8": int8_pred}
    stages = {k: summarize(p, held.labels, dict(groups), class_names) for k, p in preds.items()}
    if "student" in preds:
        for key in ("fp32", "int8"):
            stages[key]["agreement_with_student"] = agreement(preds[key], preds["student"])
    return evaluate(gates, stages, preds, held.labels, groups, class_names)


def shown(results: list[GateResult]) -> list[dict[str, Any]]:
    return [{"gate": r.gate.expr, "value": r.value, "passed": r.passed} for r in results]


def repair(quantizer: Quantizer, int8_path: Path, held: HeldOut, data: LTData, groups: Mapping[str, list[int]],
           gates: list[Gate], cfg: ExportConfig, workdir: Path, progress: bool = False) -> dict[str, Any]:
    """Repair `int8_path` in place (the unrepaired model is kept beside it as UNREPAIRED when a node goes back
    to FP32); returns report.json's `int8_repair`. `met` is False when the budget ran out first: the run then
    fails like a failed gate (exit 5, no bundle)."""
    gates = int8_gates(gates)
    names = data.class_names
    before = judge(gates, held, _logits(int8_path, data).argmax(1), groups, names)
    record: dict[str, Any] = {
        "held_out": held.source, "held_out_images": int(len(held.labels)), "gates_before": shown(before),
        "budget": {"nodes": cfg.repair_budget, "max_size": cfg.repair_max_size}, "ranked_by": RANKED_BY}
    if all(r.passed for r in before):
        log.info("INT8 repair: every int8 gate passes on the %d held-out images; nothing to repair", len(held.labels))
        return {**record, "needed": False, "met": True, "nodes": [], "gates_after": shown(before)}
    classes = gated_classes([r.gate for r in before if not r.passed], groups, names)
    record.update(needed=True, gated_classes=[names[c] for c in classes],
                  int8_size_bytes=int8_path.stat().st_size, int8_latency_ms=_latency(int8_path, data))
    ranked = _rank(quantizer, held, data, classes, cfg.exclude_nodes, workdir, progress)
    steps, stopped, after = _fall_back(quantizer, int8_path, ranked, held, data, groups, before, cfg, workdir)
    met = all(r.passed for r in after)
    if steps:
        os.replace(int8_path, int8_path.with_name(UNREPAIRED))
        os.replace(workdir / "candidate.onnx", int8_path)
    log.info("INT8 repair: %d node(s) back to FP32 (%s); the int8 gates %s on the held-out images", len(steps),
             ", ".join(s["node"] for s in steps) or "none", "pass" if met else "still fail: " + stopped)
    return {**record, "met": met, "nodes": steps, "gates_after": shown(after), "stopped": stopped,
            "ranking": [{"node": n, "op_type": quantizer.op_types[n], "damage": d} for n, d in ranked[:20]],
            "unrepaired_model": UNREPAIRED if steps else None}


def _logits(path: Path, data: LTData) -> np.ndarray:
    assert data.val is not None
    return ort_logits(path, data.val, data, 256)


def _latency(path: Path, data: LTData) -> float:
    x = np.zeros((1, data.spec.channels, data.spec.size, data.spec.size), np.float32)
    return round(latency_ms(path, x, budget_s=0.5), 4)


def _rank(quantizer: Quantizer, held: HeldOut, data: LTData, classes: list[int], exclude: tuple[str, ...],
          workdir: Path, progress: bool) -> list[tuple[str, float]]:
    """Every quantized node with the damage it does alone to the gated classes, worst first (graph order on ties)."""
    from tqdm.auto import tqdm

    probe = workdir / "probe.onnx"
    scores = []
    for node in tqdm([n for n in quantizer.nodes if n not in exclude], desc="int8 repair: ranking nodes",
                     disable=not progress, leave=False):
        quantizer.write(probe, only=[node])
        scores.append((node, damage(held.fp32_logits, _logits(probe, data), held.labels, classes)))
    return sorted(scores, key=lambda s: -s[1])


def _fall_back(quantizer: Quantizer, int8_path: Path, ranked: list[tuple[str, float]], held: HeldOut,
               data: LTData, groups: Mapping[str, list[int]], before: list[GateResult], cfg: ExportConfig,
               workdir: Path) -> tuple[list[dict[str, Any]], str, list[GateResult]]:
    """Return nodes to FP32 worst first, re-measuring after each, until the gates pass on the held-out images,
    `cfg.repair_budget` nodes went back, or no node fits the size budget; a node whose return would make the
    file larger than `cfg.repair_max_size` times the INT8 one is passed over for the next."""
    base = int8_path.stat().st_size
    candidate, trial = workdir / "candidate.onnx", workdir / "trial.onnx"
    fallen: list[str] = []
    steps: list[dict[str, Any]] = []
    gates, after = [r.gate for r in before], before
    skipped = 0
    for node, score in ranked:
        if len(fallen) == cfg.repair_budget:
            return steps, f"the budget of {cfg.repair_budget} node(s) is spent", after
        quantizer.write(trial, exclude=(*cfg.exclude_nodes, *fallen, node))
        size = trial.stat().st_size
        if size > cfg.repair_max_size * base:
            skipped += 1
            continue
        os.replace(trial, candidate)
        fallen.append(node)
        after = judge(gates, held, _logits(candidate, data).argmax(1), groups, data.class_names)
        previous = steps[-1]["size_bytes"] if steps else base
        steps.append({"node": node, "op_type": quantizer.op_types[node], "damage": score, "size_bytes": size,
                      "added_bytes": size - previous, "size_ratio": round(size / base, 4),
                      "latency_ms": _latency(candidate, data), "gates": shown(after)})
        if all(r.passed for r in after):
            return steps, "", after
    why = f"{skipped} node(s) would exceed {cfg.repair_max_size:g}x the INT8 file size" if skipped else ""
    return steps, f"every quantized node was tried{'; ' + why if why else ''}", after
