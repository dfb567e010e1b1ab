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

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ltcompress.config import ExportConfig
from ltcompress.data import LTData, hold_out
from ltcompress.errors import UsageError
from ltcompress.gates import Gate, evaluate
from ltcompress.inference import latency_ms, ort_logits, split_labels, torch_logits
from ltcompress.metrics import Groups, expected_accuracy, expected_flips, summarize_stages
from ltcompress.onnx_export import Quantizer
from ltcompress.results import RepairGate, RepairRecord, RepairStep

log = logging.getLogger("ltcompress")
UNREPAIRED = "student.int8.unrepaired.onnx"
RANKED_BY = (
    "per-class mean KL divergence from FP32 of the model with only that node quantized, averaged over "
    "the classes the failing int8 gates look at (held-out images)"
)


@dataclass(frozen=True)
class HeldOut:
    """The held-out images' labels and the logits of every stage the int8 gates compare with (fp32, and student
    or teacher when a gate names them)."""

    labels: np.ndarray
    fixed: dict[str, np.ndarray]  # stage -> logits
    source: str

    @property
    def fp32_logits(self) -> np.ndarray:
        return self.fixed["fp32"]


def int8_gates(gates: Sequence[Gate]) -> list[Gate]:
    """The gates the repair works for: those that read the int8 stage (int8.x, drop/flip with int8)."""
    return [g for g in gates if "int8" in g.stages]


def set_aside(data: LTData, gates: Sequence[Gate], share: float, seed: int) -> LTData:
    """The held-out images the repair decides on, checked before anything trains: data.val_list's, or a
    stratified training slice set aside here (the class counts then count what is left for training)."""
    if not int8_gates(gates):
        raise UsageError(
            "export.int8_repair works toward the int8 gates and this run has none: add one, e.g. "
            "--gate 'drop(fp32, int8).few <= 0.01'"
        )
    if data.val is None:
        data = hold_out(data, share, seed)
    log.info("INT8 repair decides on held-out images: %s", data.val_source)
    return data


def held_out(
    data: LTData,
    gates: Sequence[Gate],
    fp32_path: Path,
    models: Mapping[str, nn.Module | None],
    device: torch.device,
    batch: int,
) -> HeldOut:
    """Measure the fixed stages on `data.val` once (torch stages only when a gate needs them)."""
    assert data.val is not None, "the held-out split is set aside before training (plan.validate)"
    fixed = {"fp32": ort_logits(fp32_path, data.val, data, batch)}
    wanted = {s for g in gates for s in g.stages} | (
        {"student"} if any(g.metric == "agreement" for g in gates) else set()
    )
    for stage in sorted(wanted - {"fp32", "int8"}):
        model = models[stage]
        assert model is not None, f"a gate on {stage} is checked against the run's stages (plan)"
        fixed[stage] = torch_logits(model, data.val, data, device, batch)
    return HeldOut(split_labels(data, data.val), fixed, data.val_source)


def gated_classes(gates: Sequence[Gate], groups: Mapping[str, list[int]], class_names: tuple[str, ...]) -> list[int]:
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
    """Mean over `classes` (those with held-out images) of the class's mean KL(softmax(reference) ||
    softmax(logits))."""
    ref, out = _log_softmax(reference), _log_softmax(logits)
    kl = (np.exp(ref) * (ref - out)).sum(1)
    per_class = [float(kl[labels == c].mean()) for c in classes if (labels == c).any()]
    return float(np.mean(per_class)) if per_class else 0.0


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(1, keepdims=True))
    return out


def judge(
    gates: Sequence[Gate],
    held: HeldOut,
    int8_logits: np.ndarray,
    groups: Groups,
    class_names: tuple[str, ...],
) -> list[RepairGate]:
    """The int8 gates on the held-out images: each as the test set judges it (top-1), and drop()/flip() gates
    also on expected values, since with one or two images per rare class top-1 moves in steps of 50 % or not at
    all (a 5-point Few loss on the test set can be 0 there)."""
    logits = {**held.fixed, "int8": int8_logits}
    preds = {k: z.argmax(1) for k, z in logits.items()}
    stages = summarize_stages(preds, held.labels, groups, class_names)
    hard = evaluate(gates, stages, preds, held.labels, groups, class_names)
    probs = {k: np.exp(_log_softmax(z)) for k, z in logits.items()}
    relative = [g for g in gates if g.kind != "stage"]
    expected = dict(
        zip(
            relative,
            evaluate(
                relative,
                {k: expected_accuracy(p, held.labels, groups, class_names) for k, p in probs.items()},
                flips={
                    g.stages: expected_flips(probs[g.stages[0]], probs[g.stages[1]], held.labels, groups, class_names)
                    for g in relative
                    if g.kind == "flip"
                },
            ),
        )
    )
    return [
        RepairGate(
            r.gate,
            r.value,
            expected[r.gate].value if r.gate in expected else None,
            r.passed and (r.gate not in expected or expected[r.gate].passed),
        )
        for r in hard
    ]


def repair(
    quantizer: Quantizer,
    int8_path: Path,
    held: HeldOut,
    data: LTData,
    groups: Groups,
    gates: Sequence[Gate],
    cfg: ExportConfig,
    workdir: Path,
    progress: bool = False,
) -> RepairRecord:
    """Repair `int8_path` in place (the unrepaired model is kept beside it as UNREPAIRED when a node goes back
    to FP32); returns report.json's `int8_repair`. `met` is False when the budget ran out first: the run then
    fails like a failed gate (exit 5, no bundle)."""
    gates = int8_gates(gates)
    names = data.class_names
    int8_logits = _logits(int8_path, data)
    before = judge(gates, held, int8_logits, groups, names)
    record = RepairRecord(
        held_out=held.source,
        held_out_images=int(len(held.labels)),
        gates_before=tuple(before),
        budget_nodes=cfg.repair_budget,
        budget_max_size=cfg.repair_max_size,
        ranked_by=RANKED_BY,
        needed=False,
        met=True,
        gates_after=tuple(before),
    )
    if all(r.passed for r in before):
        log.info("INT8 repair: every int8 gate passes on the %d held-out images; nothing to repair", len(held.labels))
        return record
    classes = gated_classes([r.gate for r in before if not r.passed], groups, names)
    size, latency = int8_path.stat().st_size, _latency(int8_path, data, cfg.speed_budget_s)
    ranked = _rank(quantizer, held, data, classes, cfg.exclude_nodes, workdir, progress)
    search = _Search(quantizer, held, data, groups, cfg, workdir, int8_path, int8_logits, before)
    steps, stopped, after = _fall_back(search, ranked, progress)
    met = all(r.passed for r in after)
    if steps:
        os.replace(int8_path, int8_path.with_name(UNREPAIRED))
        os.replace(workdir / "candidate.onnx", int8_path)
    log.info(
        "INT8 repair: %d node(s) back to FP32 (%s); the int8 gates %s on the held-out images%s",
        *(len(steps), ", ".join(s.node for s in steps) or "none", "pass" if met else "still fail"),
        "" if met else f" ({stopped})",
    )
    return dataclasses.replace(
        record,
        needed=True,
        gated_classes=tuple(names[c] for c in classes),
        int8_size_bytes=size,
        int8_latency_ms=latency,
        met=met,
        nodes=tuple(steps),
        gates_after=tuple(after),
        stopped=stopped,
        ranking=tuple((n, quantizer.op_types[n], d) for n, d in ranked[:20]),
        unrepaired_model=UNREPAIRED if steps else None,
    )


def _logits(path: Path, data: LTData) -> np.ndarray:
    assert data.val is not None
    return ort_logits(path, data.val, data, 256)


def _latency(path: Path, data: LTData, budget_s: float) -> float | None:
    """Batch-1 latency within the run's export.speed_budget_s (None when that is 0: not measured)."""
    if budget_s <= 0:
        return None
    x = np.zeros((1, data.spec.channels, data.spec.size, data.spec.size), np.float32)
    return round(latency_ms(path, x, budget_s=budget_s), 4)


def _rank(
    quantizer: Quantizer,
    held: HeldOut,
    data: LTData,
    classes: list[int],
    exclude: tuple[str, ...],
    workdir: Path,
    progress: bool,
) -> list[tuple[str, float]]:
    """Every quantized node with the damage it does alone to the gated classes, worst first (graph order on ties)."""
    from tqdm.auto import tqdm

    probe = workdir / "probe.onnx"
    scores = []
    for node in tqdm(
        [n for n in quantizer.nodes if n not in exclude],
        desc="int8 repair: ranking nodes",
        disable=not progress,
        leave=False,
    ):
        quantizer.write(probe, only=[node])
        scores.append((node, damage(held.fp32_logits, _logits(probe, data), held.labels, classes)))
    return sorted(scores, key=lambda s: -s[1])


def _fall_back(
    state: _Search, ranked: list[tuple[str, float]], progress: bool
) -> tuple[list[RepairStep], str, list[RepairGate]]:
    """Return nodes to float, worst first, until the int8 gates pass on the held-out images or
    `cfg.repair_budget` nodes went back. First pass: a node goes back only when that lowers the class-balanced
    KL divergence from FP32 over all held-out images (quantization errors partly cancel, so a return can make
    things worse, and a handful of rare-class images alone would be overfitted). Second pass, when the gates
    still fail: the nodes passed over, in rank order, unconditionally (errors that compound through the network,
    such as activations clipped at every layer, yield to no single node). A node whose return would make the
    file larger than `cfg.repair_max_size` times the INT8 one is never taken."""
    from tqdm.auto import tqdm

    cfg = state.cfg
    passed_over = []
    for node, score in tqdm(ranked, desc="int8 repair: trying nodes", disable=not progress, leave=False):
        if state.done():
            break
        if not state.take(node, score, force=False):
            passed_over.append((node, score))
    for node, score in passed_over:
        if state.done():
            break
        state.take(node, score, force=True)
    if all(r.passed for r in state.after):
        return state.steps, "", state.after
    if len(state.steps) == cfg.repair_budget:
        return state.steps, f"the budget of {cfg.repair_budget} node(s) is spent", state.after
    too_big = (
        f" ({len(state.too_big)} would exceed {cfg.repair_max_size:g}x the INT8 file size)" if state.too_big else ""
    )
    return state.steps, "every quantized node was tried" + too_big, state.after


class _Search:
    """The repair's state between trials: the nodes back in float, each accepted step, the current loss."""

    def __init__(
        self,
        quantizer: Quantizer,
        held: HeldOut,
        data: LTData,
        groups: Groups,
        cfg: ExportConfig,
        workdir: Path,
        int8_path: Path,
        int8_logits: np.ndarray,
        before: list[RepairGate],
    ) -> None:
        self.q, self.held, self.data, self.groups, self.cfg = quantizer, held, data, groups, cfg
        self.gates = [r.gate for r in before]
        self.candidate, self.trial = workdir / "candidate.onnx", workdir / "trial.onnx"
        self.base, self.every = int8_path.stat().st_size, list(range(data.num_classes))
        self.loss = damage(held.fp32_logits, int8_logits, held.labels, self.every)
        self.fallen: list[str] = []
        self.steps: list[RepairStep] = []
        self.after: list[RepairGate] = before
        self.too_big: set[str] = set()

    def done(self) -> bool:
        return len(self.fallen) == self.cfg.repair_budget or bool(self.after) and all(r.passed for r in self.after)

    def take(self, node: str, score: float, force: bool) -> bool:
        """Try `node` back in float; keep it when forced or when it lowers the loss. True when kept."""
        self.q.write(
            self.trial, exclude=(*self.cfg.exclude_nodes, *self.fallen, node), int8_weights=(*self.fallen, node)
        )
        size = self.trial.stat().st_size
        if size > self.cfg.repair_max_size * self.base:
            self.too_big.add(node)
            return False
        logits = _logits(self.trial, self.data)
        loss = damage(self.held.fp32_logits, logits, self.held.labels, self.every)
        if not force and loss >= self.loss:
            return False
        os.replace(self.trial, self.candidate)
        self.fallen.append(node)
        self.loss, self.after = loss, judge(self.gates, self.held, logits, self.groups, self.data.class_names)
        previous = self.steps[-1].size_bytes if self.steps else self.base
        self.steps.append(
            RepairStep(
                node=node,
                op_type=self.q.op_types[node],
                damage=score,
                size_bytes=size,
                added_bytes=size - previous,
                size_ratio=round(size / self.base, 4),
                latency_ms=_latency(self.candidate, self.data, self.cfg.speed_budget_s),
                kl_after=loss,
                second_pass=force,
                gates=tuple(self.after),
            )
        )
        return True
