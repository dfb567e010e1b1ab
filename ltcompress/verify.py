"""Stage 5: measure every stage on the test set — torch teacher, torch student and the exported FP32 and INT8
models under ONNX Runtime (CPU provider named explicitly) — check that the FP32 export reproduces the torch
student, and count the per-class top-1 flips between consecutive stages."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TypeVar

import numpy as np
import torch
from torch import nn

from ltcompress import progress
from ltcompress.config import ExportConfig
from ltcompress.data import LTData, Split, eval_batches
from ltcompress.rundir import read_errors
from ltcompress.metrics import STAGES, agreement, confusion, flip_rates, summarize

log = logging.getLogger("ltcompress")
T = TypeVar("T")


@dataclass
class Verification:
    stages: dict[str, dict[str, Any]]  # stage key -> metrics (overall, balanced, many, medium, few, worst, ...)
    parity: dict[str, Any]
    predictions: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    flips: dict[str, dict[str, Any]] = field(default_factory=dict)  # "a->b" -> flip rates (metrics.flip_rates)
    int8_parity: dict[str, Any] | None = None  # reported and left to gates: quantization is meant to change logits
    labels: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))  # of the images measured
    confusions: dict[str, np.ndarray] = field(repr=False, default_factory=dict)  # stage -> [true, predicted]

    @property
    def parity_ok(self) -> bool:
        return bool(self.parity["ok"])


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """No TF32 on CUDA (its 10-bit mantissa would be mistaken for an export defect by the parity check)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def torch_logits(
    model: nn.Module, split: Split, data: LTData, device: torch.device, batch: int, desc: str = ""
) -> np.ndarray:
    """fp32 logits (no autocast, no TF32), so they are comparable with ONNX Runtime's; `desc`: under a progress
    bar of that name."""
    model.eval().to(device)
    with full_fp32():
        out = [model(x).float().cpu() for x, _ in _shown(eval_batches(data, split, batch, device), desc, split, batch)]
    return torch.cat(out).numpy()


def _shown(batches: Iterator[T], desc: str, split: Split, batch: int) -> Iterator[T]:
    return progress.bar(batches, desc, bool(desc), progress.batches(len(split), batch))


def open_session(onnx_path: Path) -> Any:
    """An ONNX Runtime CPU session; an unreadable or damaged file is named (rundir.read_errors)."""
    import onnxruntime as ort

    with read_errors(onnx_path, "export it again, or copy it again from its run"):
        with open(onnx_path, "rb"):  # an OSError here is the disk's; ONNX Runtime's own errors say neither
            pass
        return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def latency_ms(onnx_path: Path, x: np.ndarray, budget_s: float = 1.0, threads: int = 0, options: Any = None) -> float:
    """Median wall time (ms) of one ONNX Runtime CPU run on `x` after warm-up, repeated for `budget_s` and at
    least 10 times: medians of repeats in one process, so ratios between models hold on a noisy machine.
    `threads` is ORT's intra-op thread count (0: its default); `options`, an ort.SessionOptions to start from."""
    import statistics
    import time

    import onnxruntime as ort

    opts = options or ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times) < 10:
        t = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def speed(models: dict[str, Path], shape: tuple[int, int, int], budget_s: float) -> dict[str, Any] | None:
    """Median ONNX Runtime CPU latency of each exported model at batch 1 and 32 (ORT's default threads), and
    INT8's speed-up over FP32: INT8 is not faster everywhere (small inputs, CPUs without VNNI), and the report
    says so rather than letting a user assume it. None when export.speed_budget_s is 0."""
    if budget_s <= 0:
        return None
    out: dict[str, Any] = {"budget_s": budget_s, "threads": "onnxruntime default"}
    for batch in (1, 32):
        x = np.zeros((batch, *shape), np.float32)
        row = {stage: round(latency_ms(path, x, budget_s), 4) for stage, path in models.items()}
        if "int8" in row:
            row["int8_speedup"] = round(row["fp32"] / row["int8"], 3)
        out[f"batch_{batch}"] = row
    if "int8" in models:
        slower = [b for b in (1, 32) if out[f"batch_{b}"]["int8_speedup"] < 1.2]
        out["int8_worth_it"] = not slower
        if slower:
            out["note"] = (
                f"INT8 is less than 1.2x faster than FP32 here at batch {' and '.join(map(str, slower))} "
                f"(this CPU, onnxruntime's default threads): ship FP32 for speed on a CPU like this one, "
                f"INT8 for size; measure on the target device"
            )
            log.warning("verify: %s", out["note"])
    return out


def onnx_header(onnx_path: Path) -> tuple[list[int], dict[str, str]]:
    """The model's input shape (0 for a dynamic axis) and its metadata_props, from one read of the file; a
    damaged or unreadable file is named (rundir.read_errors)."""
    import onnx

    with read_errors(onnx_path, "export it again, or copy it again from its run"):
        model = onnx.load(str(onnx_path), load_external_data=False)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        return dims, {p.key: p.value for p in model.metadata_props}


def ort_logits(onnx_path: Path, split: Split, data: LTData, batch: int, desc: str = "") -> np.ndarray:
    session = open_session(onnx_path)
    name = session.get_inputs()[0].name
    out = [
        session.run(None, {name: x.contiguous().numpy()})[0]
        for x, _ in _shown(eval_batches(data, split, batch, torch.device("cpu")), desc, split, batch)
    ]
    return np.concatenate(out)


def test_inputs(data: LTData, count: int = 4) -> np.ndarray:
    """The first `count` test images as the exported model takes them: the bundle's test vectors."""
    x, _ = next(eval_batches(data, data.test, count, torch.device("cpu")))
    return x.contiguous().numpy()


def split_labels(data: LTData, split: Split) -> np.ndarray:
    """The labels of the images a pass measured: unreadable ones skipped during it (data.skip_corrupt) left out."""
    if not split.lazy or not data.skipped:
        return split.labels
    skipped = set(data.skipped)
    return np.asarray([y for f, y in zip(split.paths, split.labels) if f not in skipped], dtype=np.int64)


def check_parity(reference: np.ndarray, exported: np.ndarray, cfg: ExportConfig) -> dict[str, Any]:
    """Numeric and label agreement of the FP32 export with torch; judged against the stated tolerances."""
    diff = float(np.abs(reference - exported).max())
    allowed = cfg.logits_atol + cfg.logits_rtol * float(np.abs(reference).max())
    agree = agreement(reference.argmax(1), exported.argmax(1))
    return {
        "max_abs_logit_diff": diff,
        "allowed_logit_diff": allowed,
        "top1_agreement": agree,
        "required_agreement": 1.0 - cfg.agreement_tol,
        "ok": diff <= allowed and agree >= 1.0 - cfg.agreement_tol,
    }


def run(
    data: LTData,
    groups: dict[str, list[int]],
    student: nn.Module,
    onnx_path: Path,
    cfg: ExportConfig,
    device: torch.device,
    batch: int,
    teacher: nn.Module | None = None,
    int8_path: Path | None = None,
    show: bool = False,
) -> Verification:
    """Every stage on the test set (`show`: under progress bars). The FP32 export's parity with torch is judged
    here (exit 4 when off); the INT8 model's agreement is only reported, for gates to judge."""
    test = data.test
    logits: dict[str, np.ndarray] = {}

    def named(stage: str) -> str:
        return f"verify {stage}" if show else ""

    if teacher is not None:
        logits["teacher"] = torch_logits(teacher, test, data, device, batch, named("teacher"))
    logits["student"] = torch_logits(student, test, data, device, batch, named("student"))
    logits["fp32"] = ort_logits(onnx_path, test, data, batch, named("fp32 (parity)"))
    if int8_path is not None:
        logits["int8"] = ort_logits(int8_path, test, data, batch, named("int8"))
    preds = {k: v.argmax(1) for k, v in logits.items()}
    labels = split_labels(data, test)
    stages = measure(preds, labels, groups, data.class_names)
    parity = check_parity(logits["student"], logits["fp32"], cfg)
    int8_parity = None
    if "int8" in logits:
        int8_parity = {
            "max_abs_logit_diff": float(np.abs(logits["student"] - logits["int8"]).max()),
            "top1_agreement": stages["int8"]["agreement_with_student"],
            "judged_by": "gates",
        }
    confusions = {k: confusion(p, labels, data.num_classes) for k, p in preds.items()}
    return Verification(
        stages, parity, preds, flips(preds, labels, groups, data.class_names), int8_parity, labels, confusions
    )


def measure(
    preds: dict[str, np.ndarray], labels: np.ndarray, groups: dict[str, list[int]], class_names: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """Each stage's metrics; the ONNX stages also carry their top-1 agreement with the torch student."""
    stages = {k: summarize(p, labels, groups, class_names) for k, p in preds.items()}
    for key in ("fp32", "int8"):
        if key in stages and "student" in preds:
            stages[key]["agreement_with_student"] = agreement(preds[key], preds["student"])
    for key, m in stages.items():
        log.info(
            "verify %-7s overall %.4f  balanced %.4f  few %s  worst %.4f (%s)",
            key,
            m["overall"],
            m["balanced"],
            "absent" if m["few"] is None else f"{m['few']:.4f}",
            m["worst"],
            m["worst_class"],
        )
    return stages


def flips(
    preds: dict[str, np.ndarray], labels: np.ndarray, groups: dict[str, list[int]], class_names: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """Per-class top-1 flip rates between consecutive stages (teacher->student, student->fp32, fp32->int8)."""
    order = [k for k in STAGES if k in preds]
    return {f"{a}->{b}": flip_rates(preds[a], preds[b], labels, groups, class_names) for a, b in zip(order, order[1:])}
