"""Wall time of the README's main command and accuracy of the default preset's teacher and ce/kd/bkd students.

    python bench/default_preset.py [--methods bkd kd ce] [--out bench-runs]

The first method runs with an empty teacher cache, exactly as a first-time user would, so its wall time includes
training the teacher; the others reuse the cached teacher (as the README says they do). Every accuracy is
measured with ONNX Runtime on the exported student (the `fp32` stage), on the full balanced test split.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLUMNS = ("overall", "balanced", "many", "medium", "few", "worst")


def run(method: str, out: Path, cache: Path, preset: str) -> tuple[dict, float]:
    name = f"{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [
        str(Path(sys.executable).parent / "ltcompress"),
        "run",
        "--teacher",
        "resnet50",
        "--student",
        "mobilenetv3",
        "--method",
        method,
        "--preset",
        preset,
        "--runs-dir",
        str(out),
        "--name",
        name,
        "--no-progress",
    ]
    env = {**os.environ, "LTCOMPRESS_CACHE": str(cache)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / name / "report.json").read_text()), wall


def row(label: str, m: dict, extra: str) -> str:
    cells = " | ".join("absent" if m[c] is None else f"{100 * m[c]:.1f}" for c in COLUMNS)
    return f"| {label} | {cells} | {extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["bkd", "kd", "ce"])
    parser.add_argument("--preset", default="fmnist-lt")
    parser.add_argument("--out", type=Path, default=Path("bench-runs"))
    args = parser.parse_args()
    reports = {}
    with tempfile.TemporaryDirectory(prefix="ltcompress-bench-cache-") as cache:
        for method in args.methods:
            reports[method] = run(method, args.out, Path(cache), args.preset)
            print(f"{method}: {reports[method][1]:.0f} s", file=sys.stderr, flush=True)
    first, (first_report, _) = args.methods[0], reports[args.methods[0]]
    env = first_report["environment"]
    print(
        f"preset `{args.preset}`; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {env['versions']['torch']}, timm {env['versions']['timm']}, "
        f"onnxruntime {env['versions']['onnxruntime']}; accuracy in %, test set of "
        f"{first_report['data']['test_size']} images\n"
    )
    print("| model | " + " | ".join(COLUMNS) + " | wall time |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    teacher = first_report["stages"].get("teacher")
    if teacher:
        t = first_report["run"]["timings_s"]["teacher"]
        print(row(f"teacher {first_report['teacher']['arch']} (torch)", teacher, f"{t:.0f} s training"))
    for method, (rep, wall) in reports.items():
        note = (
            "no teacher"
            if rep["teacher"] is None
            else "incl. teacher training"
            if method == first
            else "teacher from cache"
        )
        print(row(f"student `{method}` (ONNX Runtime)", rep["stages"]["fp32"], f"{wall:.0f} s ({note})"))


if __name__ == "__main__":
    main()
