"""The cost estimate against the epochs it predicts, on bench/scale.py's photo tree (300-500 px JPEGs).

    python bench/estimate_check.py [--images 512] [--classes 20] [--work bench-runs/estimate]

Runs the README's command on the tree as a user with such a folder would (``--dataset imagefolder``: the photos
recipe fits itself), one teacher epoch and one student epoch, and compares the per-epoch estimate the run logged
before training (report.json's ``estimate``) with the first measured epoch of each model (metrics.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_tree import TreeSpec, build_trees  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="training images in the tree")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("bench-runs/estimate"))
    parser.add_argument("--method", default="kd")
    args = parser.parse_args()
    tree = build_trees(args.work, [args.images], TreeSpec(args.classes, 10.0, 2, 0))[args.images]
    name = f"est-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "-m", "ltcompress", "run", "--dataset", "imagefolder", "--data-dir", str(tree)]
    cmd += ["--teacher", "resnet50", "--student", "mobilenetv3", "--method", args.method, "--epochs", "1"]
    cmd += ["--teacher-epochs", "1", "--runs-dir", str(args.work / "runs"), "--name", name, "--no-progress"]
    env = {**os.environ, "LTCOMPRESS_CACHE": str(args.work / f"cache-{name}")}  # an empty teacher cache
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    run = args.work / "runs" / name
    rep = json.loads((run / "report.json").read_text())
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    predicted = {s["stage"]: s for s in rep["estimate"]["stages"]}
    print(f"{platform.machine()}, {os.cpu_count()} cores; tree {tree.name}; {' '.join(cmd[3:])}\n")
    print("fitted: " + "; ".join(rep["recipe"]["fitted"]) + "\n")
    print("| model | estimated epoch (s) | first measured epoch (s) | estimate / measured |")
    print("|---|---|---|---|")
    for stage in ("teacher", "student"):
        measured = next(e["seconds"] for e in epochs if e["stage"] == stage)
        guess = predicted[stage]["epoch_s"]
        print(f"| {stage} | {guess:.1f} | {measured:.1f} | {guess / measured:.2f} |")
    timings = rep["run"]["timings_s"]
    print("\n| stage | estimated (s) | measured (s) |\n|---|---|---|")
    for stage in ("teacher", "distill", "export", "verify"):
        key = "student" if stage == "distill" else stage
        print(f"| {stage} | {predicted[key]['seconds']:.0f} | {timings.get(stage, 0):.0f} |")
    print(f"\nwall time of the run {wall:.0f} s (the estimate itself included)")


if __name__ == "__main__":
    main()
