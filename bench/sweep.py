"""Recipe sweep: many `ltcompress run`s in parallel on one machine (a GPU runs a dozen 32 px runs at once),
to find settings that meet the benchmark's targets.

    python bench/sweep.py bench/sweeps/fmnist-recipes.yaml [--jobs 12] [--threads 1] [--deadline 0]
                          [--out bench-runs/sweep] [--report-only]

The sweep file names a preset, the student seeds, settings common to every run and a list of arms (label,
method, method args, `--set` settings, and `teacher`: a label for the teacher those settings produce). Runs that
share a teacher label wait until one of them has finished, so each teacher trains once and the rest reuse it
from the cache. Runs go seed-major (every arm's seed 0 first), so a sweep stopped by --deadline still covers
every arm. A finished run (its report.json exists) is reused. Prints mean ± std over seeds per arm.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from methods import COLUMNS, cell, slug


@dataclass
class Job:
    arm: dict
    seed: int
    name: str
    proc: subprocess.Popen | None = None
    started: float = 0.0
    log: Path | None = None
    cmd: list[str] = field(default_factory=list)

    @property
    def group(self) -> str | None:
        return self.arm.get("teacher")


def command(sweep: dict, arm: dict, seed: int, name: str, out: Path) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "ltcompress",
        "run",
        "--preset",
        sweep["preset"],
        "--method",
        arm["method"],
        "--seed",
        str(seed),
        "--runs-dir",
        str(out),
        "--name",
        name,
        "--no-progress",
    ]
    for key, value in {**sweep.get("common", {}), **arm.get("set", {})}.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    for key, value in arm.get("args", {}).items():
        cmd += ["--method-arg", f"{key}={json.dumps(value)}"]
    return cmd


def run_all(sweep: dict, jobs: list[Job], out: Path, slots: int, threads: int, deadline: float) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = [j for j in jobs if not (out / j.name / "report.json").is_file()]
    running: list[Job] = []
    done_groups = {j.group for j in jobs if (out / j.name / "report.json").is_file()}
    start = time.monotonic()
    while pending or running:
        for job in list(running):
            if job.proc.poll() is not None:
                running.remove(job)
                code = job.proc.returncode
                print(
                    f"[{time.monotonic() - start:5.0f} s] {job.name}: exit {code} after "
                    f"{time.monotonic() - job.started:.0f} s",
                    flush=True,
                )
                if code not in (0, 5):
                    print(job.log.read_text()[-1500:], flush=True)
                done_groups.add(job.group)
        if deadline and time.monotonic() - start > deadline:
            for job in running:
                job.proc.send_signal(signal.SIGINT)
                print(f"deadline: stopped {job.name}", flush=True)
            for job in running:
                job.proc.wait()
            return
        busy = {j.group for j in running}
        while pending and len(running) < slots:
            ready = [j for j in pending if j.group is None or j.group in done_groups or j.group not in busy]
            if not ready:
                break
            job = ready[0]
            pending.remove(job)
            busy.add(job.group)
            stale = out / job.name
            if stale.exists():  # interrupted earlier: keep it aside, run again
                stale.rename(out / f"{job.name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
            job.cmd = command(sweep, job.arm, job.seed, job.name, out)
            job.log = out / f"{job.name}.log"
            job.proc = subprocess.Popen(job.cmd, stdout=job.log.open("w"), stderr=subprocess.STDOUT, env=env)
            job.started = time.monotonic()
            running.append(job)
        time.sleep(1.0)


def table(sweep: dict, jobs: list[Job], out: Path) -> None:
    print(
        f"\npreset `{sweep['preset']}` + {sweep.get('common', {})}; seeds {sweep['seeds']}; "
        f"ONNX Runtime accuracy in %, mean ± std over seeds, last epoch\n"
    )
    print("| arm | settings | " + " | ".join(COLUMNS) + " | teacher (torch) overall / few | seeds | time per run |")
    print("|---" * (len(COLUMNS) + 5) + "|")
    for arm in sweep["arms"]:
        reps = [
            json.loads((out / j.name / "report.json").read_text())
            for j in jobs
            if j.arm is arm and (out / j.name / "report.json").is_file()
        ]
        if not reps:
            print(f"| {arm['label']} | | " + " | ".join("-" for _ in COLUMNS) + " | | 0 | |")
            continue
        cells = " | ".join(cell([r["stages"]["fp32"][c] for r in reps]) for c in COLUMNS)
        t = reps[0]["stages"].get("teacher")
        teacher = f"{100 * t['overall']:.1f} / {100 * t['few']:.1f}" if t else "-"
        secs = statistics.median(sum(r["run"]["timings_s"].values()) for r in reps)
        settings = ", ".join(f"{k}={v}" for k, v in {**arm.get("set", {}), **arm.get("args", {})}.items())
        print(f"| {arm['label']} | {settings} | {cells} | {teacher} | {len(reps)} | {secs:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, default=Path("bench-runs/sweep"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2), help="CPU threads per run")
    parser.add_argument("--deadline", type=float, default=0, help="stop starting and interrupt runs after S s")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    sweep = yaml.safe_load(args.sweep.read_text())
    jobs = [Job(arm, seed, f"{slug(arm['label'])}-seed{seed}") for seed in sweep["seeds"] for arm in sweep["arms"]]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_all(sweep, jobs, args.out, args.jobs, args.threads, args.deadline)
    table(sweep, jobs, args.out)


if __name__ == "__main__":
    main()
