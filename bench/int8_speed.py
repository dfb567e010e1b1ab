"""Why INT8 can be slower than FP32 (issue 16, item 5): ONNX Runtime CPU latency of a student at batch 1 and 32
for FP32 and INT8 variants (QDQ or QOperator format, per-channel or per-tensor weights), under graph
optimisation levels and thread counts, at the run's input size and at 224 px.

    python bench/int8_speed.py [--arch mobilenetv3_small_100] [--sizes 32 224] [--threads 0 1] [--budget 3]

Weights are random (speed does not depend on their values) and calibration uses random images, so no run is
needed. Every latency is the median of repeated runs in one process (see ltcompress.inference.latency_ms); the
speed-up column divides FP32's latency by the variant's at the same input size, batch, threads and level.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from ltcompress import models
from ltcompress.data import InputSpec
from ltcompress.onnx_export import export, prepare
from ltcompress.inference import latency_ms

LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
}
VARIANTS = {
    "QDQ per-channel (ltcompress default)": (QuantFormat.QDQ, True),
    "QDQ per-tensor": (QuantFormat.QDQ, False),
    "QOperator per-channel": (QuantFormat.QOperator, True),
    "QOperator per-tensor": (QuantFormat.QOperator, False),
}


class Reader(CalibrationDataReader):
    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {"input": batch}


def build(arch: str, size: int, work: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    spec = InputSpec(size, 3, (0.5,) * 3, (0.25,) * 3, "RGB", size)
    fp32 = export(models.create(arch, 10, 3).eval(), spec, work / f"fp32-{size}.onnx", 18)
    prepared = work / f"pre-{size}.onnx"
    prepare(fp32, prepared)
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(8, 3, size, size)).astype(np.float32) for _ in range(4)]
    out = {"FP32": fp32}
    for name, (fmt, per_channel) in VARIANTS.items():
        path = work / f"{name.split()[0]}-{per_channel}-{size}.onnx"
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared),
                str(path),
                Reader(batches),
                quant_format=fmt,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        out[name] = path
    return out


def latency(path: Path, x: np.ndarray, threads: int, level: str, budget: float) -> float:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    return latency_ms(path, x, budget, threads, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mobilenetv3_small_100")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 1], help="0: ORT's default")
    parser.add_argument("--levels", nargs="+", default=["all", "basic"], choices=list(LEVELS))
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of repeated runs per latency")
    args = parser.parse_args()
    flags = sorted(
        {
            f
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
            for f in line.split(":", 1)[1].split()
            if "vnni" in f or f.startswith("avx512")
        }
    )
    print(f"{args.arch}; {os.cpu_count()} cores; onnxruntime {ort.__version__}; CPU flags: {' '.join(flags)}\n")
    print("| input | batch | threads | graph opt | model | ms | speed-up vs FP32 |")
    print("|---:|---:|---:|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            paths = build(args.arch, size, Path(tmp))
            for batch in (1, 32):
                x = np.random.default_rng(1).normal(size=(batch, 3, size, size)).astype(np.float32)
                for threads in args.threads:
                    for level in args.levels:
                        fp32 = latency(paths["FP32"], x, threads, level, args.budget)
                        for name, path in paths.items():
                            ms = fp32 if name == "FP32" else latency(path, x, threads, level, args.budget)
                            print(
                                f"| {size} | {batch} | {threads or 'default'} | {level} | {name} | {ms:.3f} | "
                                f"{fp32 / ms:.2f}x |",
                                flush=True,
                            )


if __name__ == "__main__":
    main()
