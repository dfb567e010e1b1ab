"""Running a model over a data split, the one way every stage does it: torch logits in full fp32, ONNX Runtime
sessions on the CPU provider named explicitly, the header of an ONNX file, and latency as medians of repeats."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, TypeVar

import numpy as np
import torch
from torch import nn

from ltcompress import progress
from ltcompress.data import LTData, Split, eval_batches
from ltcompress.rundir import read_errors

log = logging.getLogger("ltcompress")
T = TypeVar("T")
DAMAGED = "export it again, or copy it again from its run"


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


def ort_logits(onnx_path: Path, split: Split, data: LTData, batch: int, desc: str = "") -> np.ndarray:
    """An ONNX model's logits over `split`, batch by batch on the CPU provider."""
    session = open_session(onnx_path)
    name = session.get_inputs()[0].name
    out = [
        session.run(None, {name: x.contiguous().numpy()})[0]
        for x, _ in _shown(eval_batches(data, split, batch, torch.device("cpu")), desc, split, batch)
    ]
    return np.concatenate(out)


def _shown(batches: Iterator[T], desc: str, split: Split, batch: int) -> Iterator[T]:
    return progress.bar(batches, desc, bool(desc), progress.batches(len(split), batch))


def split_labels(data: LTData, split: Split) -> np.ndarray:
    """The labels of the images a pass measured: unreadable ones skipped during it (data.skip_corrupt) left out."""
    if not split.lazy or not data.skipped:
        return split.labels
    skipped = set(data.skipped)
    return np.asarray([y for f, y in zip(split.paths, split.labels) if f not in skipped], dtype=np.int64)


def open_session(onnx_path: Path) -> Any:
    """An ONNX Runtime CPU session; an unreadable or damaged file is named (rundir.read_errors)."""
    import onnxruntime as ort

    with read_errors(onnx_path, DAMAGED):
        with open(onnx_path, "rb"):  # an OSError here is the disk's; ONNX Runtime's own errors say neither
            pass
        return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def onnx_header(onnx_path: Path) -> tuple[list[int], dict[str, str]]:
    """The model's input shape (0 for a dynamic axis) and its metadata_props, from one read of the file; a
    damaged or unreadable file is named (rundir.read_errors)."""
    import onnx

    with read_errors(onnx_path, DAMAGED):
        model = onnx.load(str(onnx_path), load_external_data=False)
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        return dims, {p.key: p.value for p in model.metadata_props}


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
    INT8's speed-up over FP32, as report.json's `artifacts.latency_ms` records it: INT8 is not faster everywhere
    (small inputs, CPUs without VNNI), and the report says so rather than letting a user assume it. None when
    export.speed_budget_s is 0."""
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
