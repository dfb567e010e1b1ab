"""The INT8 repair's evidence: the images it judges the int8 gates on, and the judgment, with how sure it is.

How far the INT8 model strays from the FP32 one (what drop() and flip() gates between the student's own versions
ask) is a property of the two models, measurable on any image from the data's distribution. Without
data.val_list the evidence is the gated classes' own training images, shown `export.repair_views` times per
class through the training augmentation: a Few class of ten images gives tens of distinct views, and no image
leaves training (the teacher, its cache key and the student stay those of the run without the repair). An
accuracy claim (`int8.few >= 0.7`, a drop against the teacher) needs images the model never saw: on training
views it is judged as the part quantization controls, `drop(fp32, int8).<metric> <= 0` on its classes; with
data.val_list (held-out images) every gate is judged as written.

A gate is acted on only when it fails with confidence: in a bootstrap over images (all views of an image drawn
together, within each class), the one-sided bound at `export.repair_confidence` lies on the failing side. With
fewer than MIN_IMAGES images behind a gate the evidence is too thin to say, and the gate is left undecided.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ltcompress.config import ExportConfig
from ltcompress.data import LTData, Split, eval_batches, train_batches
from ltcompress.errors import DataError
from ltcompress.gates import OPS, Gate
from ltcompress.inference import full_fp32, open_session
from ltcompress.metrics import Groups
from ltcompress.results import ClassEvidence, RepairGate

MIN_IMAGES = 5  # distinct images below which a gate's evidence is too thin to act on
REPLICATES = 1000  # bootstrap resamples
FIDELITY = frozenset({"student", "fp32", "int8"})  # the student's own versions: their distance is fidelity
_VIEWS_KEY = 7919  # keys the evidence's augmentation apart from any training epoch's
_BIAS_KEY = 7927  # keys the bias correction's images apart from the evidence's
BIAS_IMAGES = 1024  # training images (every class alike, as evaluated) the logit bias correction is measured on


@dataclass(frozen=True)
class BiasSample:
    """Training images of every class, as evaluated, with the FP32 model's logits: where the INT8 model's mean
    shift of each output from FP32's is measured (the repair's logit bias correction)."""

    inputs: np.ndarray
    labels: np.ndarray
    fp32: np.ndarray


@dataclass(frozen=True)
class Evidence:
    """The views the repair judges on, their labels, the image each is a view of, and the fixed stages' logits."""

    inputs: np.ndarray  # float32 [N, C, H, W], as the exported model takes them
    labels: np.ndarray
    images: np.ndarray  # per view: its image's index in the split (the bootstrap's unit)
    fixed: dict[str, np.ndarray]  # stage -> logits on `inputs` (fp32; student, teacher when a gate reads them)
    weights: np.ndarray  # [1 + REPLICATES, N]: row 0 the evidence itself, then the bootstrap's resamples
    source: str
    held_out: bool  # held-out images (accuracy claims hold) rather than training views (fidelity only)
    fp32_path: Path | None = None  # the FP32 model, for the logit bias correction (None: export.repair_logit_bias off)
    seed: int = 0

    @property
    def fp32_logits(self) -> np.ndarray:
        return self.fixed["fp32"]


def int8_gates(gates: Sequence[Gate]) -> list[Gate]:
    """The gates the repair works for: those that read the int8 stage (int8.x, drop/flip with int8)."""
    return [g for g in gates if "int8" in g.stages]


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


def judged_as(gate: Gate, held_out: bool) -> Gate:
    """The gate the evidence can judge: the gate itself on held-out images, or when it compares the student's
    own versions; else (an accuracy claim on training views) the part quantization controls."""
    if held_out or (gate.kind != "stage" and set(gate.stages) <= FIDELITY) or gate.metric == "agreement":
        return gate
    metric = f"class[{gate.class_name}]" if gate.metric == "class" else gate.metric
    return Gate(f"drop(fp32, int8).{metric} <= 0", "drop", ("fp32", "int8"), gate.metric, "<=", 0.0, gate.class_name)


def views_per_class(classes: int, cfg: ExportConfig) -> int:
    """export.repair_views per gated class, fewer when that would pass export.repair_max_views in all."""
    return max(1, min(cfg.repair_views, cfg.repair_max_views // max(1, classes)))


def collect(
    data: LTData,
    gates: Sequence[Gate],
    groups: Groups,
    cfg: ExportConfig,
    seed: int,
    fp32_path: Path,
    models: Mapping[str, nn.Module | None],
    device: torch.device,
) -> Evidence:
    """The evidence for `gates` (the int8 ones): views of the gated classes' images, the FP32 model's logits on
    them, and the torch stages' when a gate reads them."""
    rng = np.random.default_rng([seed, _VIEWS_KEY])
    held_out = data.val is not None
    split = data.val if data.val is not None else data.train
    classes = gated_classes([judged_as(g, held_out) for g in gates], groups, data.class_names)
    order = _order(data, split, classes, views_per_class(len(classes), cfg), rng, repeat=not held_out)
    inputs, labels = _views(data, split, order, seed, augment=not held_out)
    fixed = {"fp32": ort_run(fp32_path, inputs)}
    wanted = {s for g in gates for s in judged_as(g, held_out).stages}
    wanted |= {"student"} if any(g.metric == "agreement" for g in gates) else set()
    for stage in sorted(wanted - {"fp32", "int8"}):
        model = models.get(stage)
        assert model is not None, f"a gate on {stage} is checked against the run's stages (plan)"
        fixed[stage] = torch_run(model, inputs, device)
    if held_out:
        source = f"{len(order)} held-out images of the gated classes ({data.val_source})"
    else:
        source = (
            f"training images of the {len(classes)} gated class(es), {len(order)} augmented views of "
            f"{len(np.unique(order))} images (export.repair_views {cfg.repair_views} per class)"
        )
    weights = np.vstack([np.ones((1, len(order)), np.float32), bootstrap(labels, order, REPLICATES, rng)])
    bias_from = fp32_path if cfg.repair_logit_bias else None
    return Evidence(inputs, labels, order, fixed, weights, source, held_out, bias_from, seed)


def bias_sample(data: LTData, fp32_path: Path, seed: int) -> BiasSample:
    """Up to BIAS_IMAGES training images, as many of each class as that allows (at least one), as evaluated:
    a shift of one output is measured over every class's images alike, so the head does not set it. Drawn
    only when the repair gets to the bias correction."""
    rng = np.random.default_rng([seed, _BIAS_KEY])
    per_class = max(1, BIAS_IMAGES // data.num_classes)
    order = _order(data, data.train, list(range(data.num_classes)), per_class, rng, repeat=False)
    inputs, labels = _views(data, data.train, order, 0, augment=False)
    return BiasSample(inputs, labels, ort_run(fp32_path, inputs))


def _order(
    data: LTData, split: Split, classes: list[int], per_class: int, rng: np.random.Generator, repeat: bool
) -> np.ndarray:
    """`per_class` images of each gated class (each image about equally often when `repeat` and the class has
    fewer; at most its images otherwise), leaving out images skipped as unreadable."""
    usable = np.ones(len(split), bool)
    if split.lazy and data.skipped:
        skipped = set(data.skipped)
        usable = np.array([f not in skipped for f in split.paths])
    chosen = []
    for c in classes:
        idx = np.flatnonzero((split.labels == c) & usable)
        if len(idx) >= per_class or not repeat:
            chosen.append(np.sort(rng.permutation(idx)[:per_class]))
        elif len(idx):
            chosen.append(np.sort(np.resize(rng.permutation(idx), per_class)))
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def _views(
    data: LTData, split: Split, order: np.ndarray, seed: int, augment: bool, batch: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """The images at `order` as the model takes them: through the training augmentation (the run's own, with a
    generator of its own) or the evaluation transform."""
    cpu = torch.device("cpu")
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    if augment:
        padded = np.resize(order, -(-len(order) // batch) * batch)  # train_batches yields whole batches only
        generator = torch.Generator().manual_seed(seed)
        batches = (
            (b.x, b.y)
            for b in train_batches(
                data, padded, batch, cpu, key=(seed, _VIEWS_KEY, 0), first_step=0, generator=generator
            )
        )
    else:
        batches = eval_batches(data, split, batch, cpu, indices=order)
    xs, ys = zip(*[(x.contiguous().numpy(), y.numpy()) for x, y in batches]) if len(order) else ((), ())
    inputs = np.concatenate(xs)[: len(order)] if xs else np.zeros((0, 1, 1, 1), np.float32)
    labels = np.concatenate(ys)[: len(order)] if ys else np.zeros(0, np.int64)
    if len(labels) != len(order) or not np.array_equal(labels, split.labels[order]):
        raise DataError("an image of the INT8 repair's evidence could not be read again since training")
    return inputs, labels


def bootstrap(labels: np.ndarray, images: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[replicates, N] weights: in each resample, every class's images are drawn with replacement (as many as
    it has), and each view weighs as often as its image was drawn, so the views of one image count as one."""
    ids, view_image = np.unique(images, return_inverse=True)
    counts = np.zeros((replicates, len(ids)), np.float32)
    rows = np.arange(replicates)[:, None]
    for c in np.unique(labels):
        members = np.unique(view_image[labels == c])
        draws = members[rng.integers(0, len(members), (replicates, len(members)))]
        np.add.at(counts, (np.broadcast_to(rows, draws.shape), draws), 1.0)
    out: np.ndarray = counts[:, view_image]
    return out


def ort_run(onnx_path: Path, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """An ONNX model's logits on the evidence, batch by batch on the CPU provider."""
    session = open_session(onnx_path)
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def torch_run(model: nn.Module, inputs: np.ndarray, device: torch.device, batch: int = 256) -> np.ndarray:
    """A torch stage's fp32 logits on the evidence (no autocast, no TF32: comparable with ONNX Runtime's)."""
    model.eval().to(device)
    with full_fp32():
        out = [
            model(torch.from_numpy(inputs[i : i + batch]).to(device).contiguous(memory_format=torch.channels_last))
            .float()
            .cpu()
            .numpy()
            for i in range(0, len(inputs), batch)
        ]
    return np.concatenate(out)


def judge(
    gates: Sequence[Gate],
    ev: Evidence,
    int8_logits: np.ndarray,
    groups: Groups,
    class_names: tuple[str, ...],
    confidence: float,
) -> list[RepairGate]:
    """Each int8 gate on the evidence: its value, its one-sided bounds at `confidence`, and whether it fails
    with confidence, passes with confidence, or cannot be told (thin evidence, or the bounds straddle)."""
    preds = {k: z.argmax(1) for k, z in {**ev.fixed, "int8": int8_logits}.items()}
    out = []
    for gate in gates:
        judged = judged_as(gate, ev.held_out)
        values = _values(judged, preds, ev, groups, class_names)
        images = _images(judged, ev, groups, class_names)
        point, resampled = values[0], values[1:][~np.isnan(values[1:])]
        low = high = None
        if not np.isnan(point) and len(resampled):
            low = float(np.quantile(resampled, 1 - confidence))
            high = float(np.quantile(resampled, confidence))
        out.append(
            RepairGate(
                gate=gate,
                judged=judged,
                value=None if np.isnan(point) else float(point),
                low=low,
                high=high,
                images=images,
                decision=_decision(judged, low, high, images),
            )
        )
    return out


def _decision(gate: Gate, low: float | None, high: float | None, images: int) -> str:
    if low is None or high is None or images < MIN_IMAGES:
        return "undecided"
    passes = OPS[gate.op]
    best, worst = (low, high) if gate.op in ("<=", "<") else (high, low)
    if not passes(best, gate.threshold):
        return "fails"
    return "passes" if passes(worst, gate.threshold) else "undecided"


def _images(gate: Gate, ev: Evidence, groups: Groups, class_names: tuple[str, ...]) -> int:
    """Distinct images behind a gate: those of the classes it reads."""
    classes = gated_classes([gate], groups, class_names)
    return int(len(np.unique(ev.images[np.isin(ev.labels, classes)])))


def _values(
    gate: Gate, preds: Mapping[str, np.ndarray], ev: Evidence, groups: Groups, class_names: tuple[str, ...]
) -> np.ndarray:
    """The gate's value under every row of `ev.weights` (row 0: the evidence as it is)."""
    if gate.kind == "flip":
        a, b = gate.stages
        return _reduce(preds[a] != preds[b], gate, ev, groups, class_names, worst=np.nanmax)
    if gate.metric == "agreement":
        return _reduce(preds[gate.stages[0]] == preds["student"], gate, ev, groups, class_names)
    first, *second = (_reduce(preds[s] == ev.labels, gate, ev, groups, class_names) for s in gate.stages)
    return first - second[0] if second else first


def _reduce(
    hits: np.ndarray,
    gate: Gate,
    ev: Evidence,
    groups: Groups,
    class_names: tuple[str, ...],
    worst: Callable[..., Any] = np.nanmin,
) -> np.ndarray:
    """A metric of per-view 0/1 scores under each weighting: group and balanced means of per-class means, the
    worst class, one class, or the overall mean."""
    w, x = ev.weights, hits.astype(np.float32)
    if gate.metric in ("overall", "agreement"):
        out: np.ndarray = (w @ x) / w.sum(1)
        return out
    onehot = np.eye(len(class_names), dtype=np.float32)[ev.labels]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an empty column is NaN, as summarize() leaves it
        per_class = (w @ (onehot * x[:, None])) / (w @ onehot)
        if gate.metric == "class":
            column: np.ndarray = per_class[:, class_names.index(str(gate.class_name))]
            return column
        if gate.metric == "worst":
            return np.asarray(worst(per_class, axis=1))
        columns = list(range(len(class_names))) if gate.metric == "balanced" else groups[gate.metric]
        return np.asarray(np.nanmean(per_class[:, columns], axis=1))


def per_class(
    ev: Evidence, before: np.ndarray, after: np.ndarray | None, class_names: tuple[str, ...]
) -> tuple[ClassEvidence, ...]:
    """What stands behind the judgment, per gated class: images, views, and FP32's and INT8's top-1 on them."""
    out = []
    for c in np.unique(ev.labels):
        views = ev.labels == c
        acc = [float((z[views].argmax(1) == c).mean()) for z in (ev.fp32_logits, before)]
        out.append(
            ClassEvidence(
                name=class_names[c],
                images=int(len(np.unique(ev.images[views]))),
                views=int(views.sum()),
                fp32=acc[0],
                int8_before=acc[1],
                int8_after=None if after is None else float((after[views].argmax(1) == c).mean()),
            )
        )
    return tuple(out)
