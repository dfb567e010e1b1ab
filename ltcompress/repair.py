"""INT8 repair (part of stage 4, export.int8_repair): when an int8 gate fails with confidence on the repair's
evidence (evidence.py), the quantized nodes that hurt the gated classes most go back to FP32 until every such
gate passes there with confidence, or the budget (nodes, file size, seconds) is spent.

Nodes are ranked by the damage each does alone (the model with only that node quantized): the mean, over the
gated classes, of each class's mean KL divergence from the FP32 model, so a rare class counts as much as a
frequent one. The order is fixed once (as Intel Neural Compressor's op-wise fallback does). With many nodes,
blocks of consecutive nodes are ranked first and only the most damaging blocks node by node, which bounds the
trials (each one quantizes the model and runs the evidence) near twice the square root of the node count.

When the budget is spent with a gate still failing, a logit bias correction is tried last (export.repair_logit_bias):
each output gets the class-balanced mean shift between FP32's logits and the model's, measured on training images
of every class, kept when it lowers the divergence on the evidence (the bias correction of Nagel et al.,
"Data-Free Quantization", ICCV 2019, applied to the output alone).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ltcompress.config import ExportConfig
from ltcompress.data import LTData
from ltcompress.errors import UsageError
from ltcompress.evidence import Evidence, bias_sample, gated_classes, int8_gates, judge, ort_run, per_class
from ltcompress.gates import Gate
from ltcompress.inference import latency_ms
from ltcompress.metrics import Groups
from ltcompress.onnx_export import Quantizer, add_logit_bias
from ltcompress.results import BiasStep, ClassEvidence, RepairGate, RepairRecord, RepairStep

log = logging.getLogger("ltcompress")
UNREPAIRED = "student.int8.unrepaired.onnx"
BLOCKS_FROM = 32  # more quantized nodes than this: rank blocks of them first
RANKED_BY = (
    "per-class mean KL divergence from FP32 of the model with only that node (or its block) quantized, averaged "
    "over the gated classes of the gates that failed with confidence (the repair's evidence)"
)


def check(gates: Sequence[Gate]) -> None:
    """Before anything trains: the repair works toward the run's int8 gates, so it needs one."""
    if not int8_gates(gates):
        raise UsageError(
            "export.int8_repair works toward the int8 gates and this run has none: add one, e.g. "
            "--gate 'drop(fp32, int8).few <= 0.01'"
        )


def damage(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray, classes: list[int]) -> float:
    """Mean over `classes` (those with evidence) of the class's mean KL(softmax(reference) || softmax(logits))."""
    ref, out = _log_softmax(reference), _log_softmax(logits)
    kl = (np.exp(ref) * (ref - out)).sum(1)
    per_class = [float(kl[labels == c].mean()) for c in classes if (labels == c).any()]
    return float(np.mean(per_class)) if per_class else 0.0


def logit_shift(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per output, the mean of FP32's minus INT8's logit over each class's images, averaged over the classes
    (so the head's images do not set the tail's offset): what the logit bias correction adds."""
    diff = fp32.astype(np.float64) - int8.astype(np.float64)
    out: np.ndarray = np.mean([diff[labels == c].mean(0) for c in np.unique(labels)], axis=0)
    return out


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64) - z.max(1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(1, keepdims=True))
    return out


class Clock:
    """The repair's time budget (export.repair_seconds), checked before each trial."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.start = budget_s, time.monotonic()

    @property
    def elapsed(self) -> float:
        return round(time.monotonic() - self.start, 2)

    def spent(self) -> bool:
        return time.monotonic() - self.start >= self.budget_s


def repair(
    quantizer: Quantizer,
    int8_path: Path,
    ev: Evidence,
    data: LTData,
    groups: Groups,
    gates: Sequence[Gate],
    cfg: ExportConfig,
    workdir: Path,
    progress: bool = False,
) -> RepairRecord:
    """Repair `int8_path` in place (the unrepaired model is kept beside it as UNREPAIRED when a node goes back
    to FP32); returns report.json's `int8_repair`. Only gates that fail with confidence are worked on; the
    record says how each gate stood, and why the repair stopped."""
    clock, names = Clock(cfg.repair_seconds), data.class_names
    gates = int8_gates(gates)
    int8_logits = ort_run(int8_path, ev.inputs)
    before = judge(gates, ev, int8_logits, groups, names, cfg.repair_confidence)
    record = _unrepaired(ev, before, cfg, per_class(ev, int8_logits, None, names))
    _log_undecided(before)
    failing = [r.judged for r in before if r.failing]
    if not failing:
        log.info("INT8 repair: no int8 gate fails with confidence on the evidence; nothing to repair")
        return dataclasses.replace(record, seconds=clock.elapsed)
    classes = gated_classes(failing, groups, names)
    size, latency = int8_path.stat().st_size, _latency(int8_path, data, cfg.speed_budget_s)
    search = _Search(quantizer, ev, data, groups, cfg, workdir, int8_path, int8_logits, before, clock)
    ranked = _rank(search, classes, progress)
    steps, stopped, after = _fall_back(search, ranked, progress)
    bias = None
    if not search.settled() and ev.fp32_path is not None and not clock.spent():
        bias = search.correct_bias(workdir / "candidate.onnx" if steps else int8_path)
        after, stopped = search.after, "" if search.settled() else stopped
    changed = bool(steps) or search.bias is not None
    if changed:
        os.replace(int8_path, int8_path.with_name(UNREPAIRED))
        os.replace(workdir / "candidate.onnx", int8_path)
    met = not any(r.failing for r in after)
    _log_done(search, met, stopped)
    return dataclasses.replace(
        record,
        needed=True,
        logit_bias=bias,
        classes=per_class(ev, int8_logits, search.logits if changed else None, names),
        gated_classes=tuple(names[c] for c in classes),
        int8_size_bytes=size,
        int8_latency_ms=latency,
        met=met,
        nodes=tuple(steps),
        gates_after=tuple(after),
        stopped=stopped or None,
        trials=search.trials,
        seconds=clock.elapsed,
        ranking=tuple((n, quantizer.op_types[n], d) for n, d in ranked[:20]),
        unrepaired_model=UNREPAIRED if changed else None,
    )


def _unrepaired(
    ev: Evidence, before: list[RepairGate], cfg: ExportConfig, classes: tuple[ClassEvidence, ...]
) -> RepairRecord:
    """The record of a repair that returned no node (yet): the evidence, the gates on it, the budgets."""
    return RepairRecord(
        evidence=ev.source,
        held_out=ev.held_out,
        images=int(len(np.unique(ev.images))),
        views=int(len(ev.labels)),
        confidence=cfg.repair_confidence,
        gates_before=tuple(before),
        budget_nodes=cfg.repair_budget,
        budget_max_size=cfg.repair_max_size,
        budget_seconds=cfg.repair_seconds,
        ranked_by=RANKED_BY,
        needed=False,
        met=True,
        classes=classes,
        gates_after=tuple(before),
    )


def _log_done(search: _Search, met: bool, stopped: str) -> None:
    log.info(
        "INT8 repair: %d node(s) back to FP32 (%s)%s in %.0f s; %s%s",
        *(len(search.steps), ", ".join(s.node for s in search.steps) or "none"),
        *(", logit bias correction kept" if search.bias is not None else "", search.clock.elapsed),
        "no int8 gate fails with confidence on the evidence" if met else "an int8 gate still fails on the evidence",
        f" ({stopped})" if stopped else "",
    )


def _log_undecided(judged: list[RepairGate]) -> None:
    for r in judged:
        if r.decision == "undecided":
            log.info(
                "INT8 repair: the evidence cannot decide '%s' (judged as '%s' on %d image(s)%s): not acted on; "
                "the test set judges it",
                *(r.gate.expr, r.judged.expr, r.images),
                "" if r.low is None else f", bounds {r.low:.4f} to {r.high:.4f}",
            )


def _latency(path: Path, data: LTData, budget_s: float) -> float | None:
    """Batch-1 latency within the run's export.speed_budget_s (None when that is 0: not measured)."""
    if budget_s <= 0:
        return None
    x = np.zeros((1, data.spec.channels, data.spec.size, data.spec.size), np.float32)
    return round(latency_ms(path, x, budget_s=budget_s), 4)


def _rank(search: _Search, classes: list[int], progress: bool) -> list[tuple[str, float]]:
    """Every quantized node with the damage it does alone to the gated classes, worst first. With more than
    BLOCKS_FROM nodes, blocks of about sqrt(n) consecutive nodes are scored first; the nodes of the most damaging
    blocks are then scored one by one until twice the node budget is, and the rest follow by their block's
    score. Nodes the time budget left unscored follow last, in graph order."""
    from tqdm.auto import tqdm

    nodes = [n for n in search.q.nodes if n not in search.cfg.exclude_nodes]
    size = 1 if len(nodes) <= BLOCKS_FROM else math.ceil(math.sqrt(len(nodes)))
    blocks = [nodes[i : i + size] for i in range(0, len(nodes), size)]
    want = len(nodes) if size == 1 else max(2 * search.cfg.repair_budget, size)
    total = (len(blocks) if size > 1 else 0) + want
    bar = tqdm(total=total, desc="int8 repair: ranking nodes", disable=not progress, leave=False)
    scored_blocks: list[tuple[list[str], float]] = []
    for block in blocks if size > 1 else []:
        if search.clock.spent():
            break
        scored_blocks.append((block, search.probe(block, classes)))
        bar.update(1)
    ordered = [b for b, _ in sorted(scored_blocks, key=lambda s: -s[1])] + blocks[len(scored_blocks) :]
    block_score = {n: d for b, d in scored_blocks for n in b}
    scored: list[tuple[str, float]] = []
    rest: list[tuple[str, float]] = []
    for node in (n for b in ordered for n in b):
        if len(scored) < want and not search.clock.spent():
            scored.append((node, search.probe([node], classes)))
            bar.update(1)
        else:
            rest.append((node, block_score.get(node, 0.0)))
    bar.close()
    return sorted(scored, key=lambda s: -s[1]) + rest


def _fall_back(
    state: _Search, ranked: list[tuple[str, float]], progress: bool
) -> tuple[list[RepairStep], str, list[RepairGate]]:
    """Return nodes to float, worst first, until every gate that failed passes with confidence on the evidence
    and none fails, or a budget is spent. First pass: a node goes back only when that lowers the
    class-balanced KL divergence from FP32 over all the evidence (quantization errors partly cancel, so a
    return can make things worse). Second pass, when gates still fail: the nodes passed over, in rank order,
    unconditionally (errors that compound through the network, such as activations clipped at every layer,
    yield to no single node). A node whose return would make the file larger than `cfg.repair_max_size` times
    the INT8 one is never taken."""
    from tqdm.auto import tqdm

    cfg = state.cfg
    passed_over = []
    for node, score in tqdm(ranked, desc="int8 repair: trying nodes", disable=not progress, leave=False):
        if state.done() or state.clock.spent():
            break
        if not state.take(node, score, force=False):
            passed_over.append((node, score))
    for node, score in passed_over:
        if state.done() or state.clock.spent():
            break
        state.take(node, score, force=True)
    if state.settled():
        return state.steps, "", state.after
    if len(state.steps) == cfg.repair_budget:
        return state.steps, f"the budget of {cfg.repair_budget} node(s) is spent", state.after
    if state.clock.spent():
        return state.steps, f"the time budget of {cfg.repair_seconds:g} s is spent", state.after
    too_big = (
        f" ({len(state.too_big)} would exceed {cfg.repair_max_size:g}x the INT8 file size)" if state.too_big else ""
    )
    return state.steps, "every quantized node was tried" + too_big, state.after


class _Search:
    """The repair's state between trials: the nodes back in float, each accepted step, the current loss."""

    def __init__(
        self,
        quantizer: Quantizer,
        ev: Evidence,
        data: LTData,
        groups: Groups,
        cfg: ExportConfig,
        workdir: Path,
        int8_path: Path,
        int8_logits: np.ndarray,
        before: list[RepairGate],
        clock: Clock,
    ) -> None:
        self.q, self.ev, self.data, self.groups, self.cfg, self.clock = quantizer, ev, data, groups, cfg, clock
        self.gates = [r.gate for r in before]
        self.worked_on = {r.gate for r in before if r.failing}
        self.candidate, self.trial, self.probe_path = (workdir / f"{n}.onnx" for n in ("candidate", "trial", "probe"))
        self.base, self.every = int8_path.stat().st_size, sorted(set(ev.labels.tolist()))
        self.loss = damage(ev.fp32_logits, int8_logits, ev.labels, self.every)
        self.logits = int8_logits
        self.fallen: list[str] = []
        self.steps: list[RepairStep] = []
        self.after: list[RepairGate] = before
        self.too_big: set[str] = set()
        self.bias: np.ndarray | None = None  # the logit bias correction, once kept
        self.trials = 0

    def probe(self, only: list[str], classes: list[int]) -> float:
        """The damage to `classes` of the model with only the nodes `only` quantized."""
        self.trials += 1
        self.q.write(self.probe_path, only=only)
        return damage(self.ev.fp32_logits, ort_run(self.probe_path, self.ev.inputs), self.ev.labels, classes)

    def settled(self) -> bool:
        """Every gate worked on passes with confidence on the evidence (its point value passing is not enough:
        the test set's images are others, and a gate just under its threshold on the evidence fails there as
        often as not), and none fails with confidence."""
        worked = [r for r in self.after if r.gate in self.worked_on]
        return all(r.decision == "passes" for r in worked) and not any(r.failing for r in self.after)

    def done(self) -> bool:
        return self.settled() or len(self.fallen) == self.cfg.repair_budget

    def correct_bias(self, current: Path) -> BiasStep:
        """The logit bias correction, when the nodes within the budget leave a gate failing: add to each output
        of the model at `current` the class-balanced mean of FP32's minus its logits over training images of
        every class (a shift quantization put into the tail's logits, undone without a node in float), kept
        when it lowers the loss on the evidence, as a node would be. It comes last because it is fitted on
        training images the evidence shares: on its own it can look better there than on unseen images."""
        assert self.ev.fp32_path is not None, "repair() calls this only with the FP32 model to measure against"
        sample = bias_sample(self.data, self.ev.fp32_path, self.ev.seed)
        bias = logit_shift(sample.fp32, ort_run(current, sample.inputs), sample.labels)
        shutil.copyfile(current, self.trial)
        add_logit_bias(self.trial, bias)
        self.trials += 1
        logits = ort_run(self.trial, self.ev.inputs)
        loss, before = damage(self.ev.fp32_logits, logits, self.ev.labels, self.every), self.loss
        kept = loss < self.loss
        if kept:
            self.bias = bias
            self._accept(logits, loss)
        names = self.data.class_names
        return BiasStep(kept, tuple(zip(names, map(float, bias))), before, loss, self.clock.elapsed)

    def take(self, node: str, score: float, force: bool) -> bool:
        """Try `node` back in float; keep it when forced or when it lowers the loss. True when kept."""
        self.q.write(
            self.trial, exclude=(*self.cfg.exclude_nodes, *self.fallen, node), int8_weights=(*self.fallen, node)
        )
        size = self.trial.stat().st_size
        if size > self.cfg.repair_max_size * self.base:
            self.too_big.add(node)
            return False
        self.trials += 1
        logits = ort_run(self.trial, self.ev.inputs)
        loss = damage(self.ev.fp32_logits, logits, self.ev.labels, self.every)
        if not force and loss >= self.loss:
            return False
        self.fallen.append(node)
        self._accept(logits, loss)
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
                seconds=self.clock.elapsed,
                second_pass=force,
                gates=tuple(self.after),
            )
        )
        return True

    def _accept(self, logits: np.ndarray, loss: float) -> None:
        """The trial model becomes the candidate; the gates are judged again on its logits."""
        os.replace(self.trial, self.candidate)
        self.loss, self.logits = loss, logits
        names = self.data.class_names
        self.after = judge(self.gates, self.ev, logits, self.groups, names, self.cfg.repair_confidence)
