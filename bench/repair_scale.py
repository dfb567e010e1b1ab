"""The INT8 repair's cost at real scale: 224 px JPEGs decoded per image (bench/scale.py's synthetic photo tree),
mobilenetv3_small_100, the repair's default budgets and evidence, on the CPU.

The student is an untrained mobilenetv3_small_100 exported at the size the photo recipe picks (its accuracy is
irrelevant to the cost). The gates are made to fail so that the repair does its whole work: `flip(fp32,
int8).balanced <= 0` reads every class (the most evidence: export.repair_max_views) and `drop(fp32,
int8).few <= 0` the tail; any INT8 change breaks them, so the repair ranks and tries nodes until a budget stops
it. Printed: the evidence (images, views, seconds to build), the quantized nodes, the trials (models quantized
and run on the evidence) against one per node, seconds per trial, and the repair's total time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/repair_scale.py [--images 5000] [--classes 100]
        [--work bench-runs/scale] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_tree import TreeSpec, build_trees  # noqa: E402

from ltcompress import evidence, models, onnx_export, repair  # noqa: E402
from ltcompress.api import build_config  # noqa: E402
from ltcompress.gates import parse  # noqa: E402
from ltcompress.prepare import prepare  # noqa: E402

GATES = ["flip(fp32, int8).balanced <= 0", "drop(fp32, int8).few <= 0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="training images of the tree")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--work", type=Path, default=Path("bench-runs/scale"))
    parser.add_argument("--seconds", type=float, help="export.repair_seconds (default: the config's)")
    args = parser.parse_args()
    tree = build_trees(args.work, [args.images], TreeSpec(args.classes, 10.0, 2, 0))[args.images]
    cfg = build_config(
        dataset="imagefolder",
        data_dir=str(tree),
        student="mobilenetv3_small_100",
        method="ce",
        gates=GATES,
        int8_repair=True,
        runs_dir=str(args.work / "runs"),
        overrides={} if args.seconds is None else {"export.repair_seconds": args.seconds},
    )
    plan, _ = prepare(cfg, progress=False)
    data, e = plan.data, plan.cfg.export
    print(
        f"{os.cpu_count()} cores, torch {torch.__version__}; tree {tree.name}: {len(data.train)} training images, "
        f"{data.num_classes} classes, {data.spec.size} px, {'in memory' if data.in_memory else 'lazy'}, "
        f"augment {data.pipeline.augment}; budgets: {e.repair_budget} nodes, {e.repair_max_size}x size, "
        f"{e.repair_seconds:g} s; evidence {e.repair_views} views per class, {e.repair_max_views} at most",
        flush=True,
    )
    torch.manual_seed(0)
    student = models.create("mobilenetv3_small_100", data.num_classes, data.spec.channels).eval()
    with tempfile.TemporaryDirectory(prefix="repair-scale-") as tmp:
        work = Path(tmp)
        fp32 = onnx_export.export(student, data.spec, work / "student.onnx", e.opset)
        t0 = time.perf_counter()
        quantizer, _ = onnx_export.int8(fp32, data, e, 0, work / "student.int8.onnx", work)
        quantize_s = time.perf_counter() - t0
        gates = [parse(g) for g in GATES]
        t0 = time.perf_counter()
        seen = evidence.collect(data, gates, plan.groups, e, 0, fp32, {}, torch.device("cpu"))
        evidence_s = time.perf_counter() - t0
        record = repair.repair(quantizer, work / "student.int8.onnx", seen, data, plan.groups, gates, e, work)
    nodes = len([n for n in quantizer.nodes if n not in e.exclude_nodes])
    per_trial = record.seconds / max(1, record.trials)
    print(
        f"\nINT8 calibration and quantization: {quantize_s:.0f} s\n"
        f"evidence: {record.images} images, {record.views} views ({record.views / data.num_classes:.0f} per class), "
        f"built in {evidence_s:.0f} s ({seen.inputs.nbytes / 2**20:.0f} MiB of float32 inputs)\n"
        f"quantized nodes: {nodes}; trials: {record.trials} (one per node would be {nodes} for the ranking alone)\n"
        f"repair: {record.seconds:.0f} s, {per_trial:.1f} s per trial; {len(record.nodes)} node(s) back to FP32; "
        f"stopped: {record.stopped or 'the gates hold'}\n"
        f"ranking node by node at the same cost per trial: about {nodes * per_trial:.0f} s before the first node "
        f"is tried\n"
        f"gates before: "
        + "; ".join(f"{g.judged.expr} = {g.value:.4f} {g.decision}" for g in record.gates_before)
        + "\ngates after: "
        + "; ".join(f"{g.judged.expr} = {g.value:.4f} {g.decision}" for g in record.gates_after),
        flush=True,
    )


if __name__ == "__main__":
    main()
