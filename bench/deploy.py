"""Deployment benchmark on a finished run: teacher ONNX vs student FP32 vs student INT8 (size, ONNX Runtime
latency at batch 1 and 32, accuracy), and INT8 calibration: class-stratified vs random samples of several sizes.

    python bench/deploy.py RUN_DIR [--sizes 64 256 512 1024] [--seeds 0 1 2] [--threads 0]

RUN_DIR is a finished `ltcompress run` (its teacher.safetensors, student.onnx and report.json are used; the
data is loaded as the run loaded it). Latencies are medians of repeated runs in one process, so the ratios
between models are comparable even on a noisy machine; accuracies are on the full test split, measured with
ONNX Runtime. Calibration rows report the median over calibration seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ltcompress import config as config_mod
from ltcompress import data as data_stage
from ltcompress.config import ExportConfig
from ltcompress.metrics import summarize
from ltcompress.onnx_export import export, int8
from ltcompress.teacher import cache_root, load_weights_file
from ltcompress.verify import ort_logits

COLUMNS = ("overall", "balanced", "few", "worst")


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latency_ms(path: Path, shape: tuple[int, ...], threads: int, budget_s: float = 6.0) -> float:
    """Median wall time of one ORT run at `shape`, after warm-up; as many repeats as fit in `budget_s`."""
    sess = session(path, threads)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for _ in range(5):
        sess.run(None, {"input": x})
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < budget_s or len(times) < 10:
        t = time.perf_counter()
        sess.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def accuracy(path: Path, data: data_stage.LTData, groups: dict) -> dict:
    pred = ort_logits(path, data.test, data, 256).argmax(1)
    return summarize(pred, data.test.labels, groups, data.class_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    args = parser.parse_args()
    report = json.loads((args.run / "report.json").read_text())
    saved = report["config"]
    cfg = config_mod.resolve(None, {f"data.{k}": v for k, v in saved["data"].items()})
    data = data_stage.load(cfg.data, cache_root(None))
    groups = data_stage.shot_groups(data.class_counts, cfg.data.many_threshold, cfg.data.few_threshold)
    work = Path(tempfile.mkdtemp(prefix="ltcompress-deploy-"))

    arch = saved["resolved"]["teacher_arch"]
    teacher = load_weights_file(arch, args.run / "teacher.safetensors", data.num_classes, data.spec.channels)
    models = {f"teacher ({arch}) FP32": export(teacher, data.spec, work / "teacher.onnx", 18),
              "student FP32": args.run / "student.onnx", "student INT8": work / "student.int8.onnx"}
    int8(models["student FP32"], data, ExportConfig(), 0, models["student INT8"])
    print(f"run {args.run.name}: {saved['method']['name']} on {cfg.data.dataset}, {len(data.train)} train / "
          f"{len(data.test)} test images, {data.spec.size} px; {os.cpu_count()} cores, onnxruntime "
          f"{ort.__version__}, torch {torch.__version__}; CPU flags: "
          f"{' '.join(report['environment'].get('cpu_flags', []))}\n", flush=True)

    rows, measured = [], {}
    shape = (data.spec.channels, data.spec.size, data.spec.size)
    for label, path in models.items():
        m = accuracy(path, data, groups)
        measured[label] = {"mb": path.stat().st_size / 1e6, "b1": latency_ms(path, (1, *shape), args.threads),
                           "b32": latency_ms(path, (32, *shape), args.threads), **{c: m[c] for c in COLUMNS}}
        print(f"  measured {label}", file=sys.stderr, flush=True)
    print("| model | size (MB) | batch-1 latency (ms) | batch-32 latency (ms) | "
          + " | ".join(COLUMNS) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(COLUMNS))
    for label, r in measured.items():
        rows.append(f"| {label} | {r['mb']:.2f} | {r['b1']:.2f} | {r['b32']:.1f} | "
                    + " | ".join(f"{100 * r[c]:.1f}" for c in COLUMNS) + " |")
    print("\n".join(rows))
    t, s, q = (measured[k] for k in models)
    print(f"\nstudent/teacher size {s['mb'] / t['mb']:.3f} (target <= 0.1); teacher/student batch-1 latency "
          f"{t['b1'] / s['b1']:.1f}x (target >= 5x); INT8/FP32 size {q['mb'] / s['mb']:.3f} (target <= 0.3); "
          f"INT8 batch-1 speed-up {s['b1'] / q['b1']:.2f}x; Few drop FP32 -> INT8 "
          f"{100 * (s['few'] - q['few']):.2f} points (target <= 1)\n")

    rarest = data.class_names[int(np.argmin(data.class_counts))]
    print("| calibration | images | Few (median) | Few drop vs FP32 (points) | balanced (median) | worst (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for how in ("stratified", "random"):
            runs = []
            for seed in args.seeds:
                path = work / f"cal-{how}-{size}-{seed}.onnx"
                info = int8(models["student FP32"], data, ExportConfig(calibration=how, calibration_size=size),
                            seed, path)
                runs.append((accuracy(path, data, groups), info))
                path.unlink()
            few = statistics.median(m["few"] for m, _ in runs)
            tail = min(i["calibration_per_class"][rarest] for _, i in runs)
            print(f"| {how} | {size} (rarest class: {tail}) | {100 * few:.1f} | {100 * (s['few'] - few):.2f} | "
                  f"{100 * statistics.median(m['balanced'] for m, _ in runs):.1f} | "
                  f"{100 * statistics.median(m['worst'] for m, _ in runs):.1f} |", flush=True)


if __name__ == "__main__":
    main()
