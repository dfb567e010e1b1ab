"""The method benchmark: every method on one preset, several student seeds, one shared teacher per teacher loss.

    python bench/methods.py [--preset fmnist-lt-bench] [--seeds 0 1 2] [--out bench-runs/methods]
                            [--only kd bkd ...] [--no-ablations]

Prints a markdown table of mean ± std over seeds of overall, balanced, Many, Medium, Few and worst-class
accuracy, measured with ONNX Runtime on each exported student (teachers with torch). Teachers train once (seed
`teacher.seed` = 0) and come from the cache afterwards; a run whose report.json already exists in --out is reused,
so an interrupted benchmark picks up where it stopped. Runs go seed by seed, so a partial run is still a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

COLUMNS = ("overall", "balanced", "many", "medium", "few", "worst")
# (row label, method, method args): baselines, every distillation method, then the readings' switchable parts
VARIANTS = [
    ("ce", "ce", {}),
    ("bsce", "bsce", {}),
    ("kd", "kd", {}),
    ("dkd", "dkd", {}),
    ("dkd beta=0.5", "dkd", {"beta": 0.5}),
    ("bkd", "bkd", {}),
    ("dive", "dive", {}),
    ("rekd", "rekd", {}),
    ("rekd beta=0.5", "rekd", {"beta": 0.5}),
    ("krdistill", "krdistill", {}),
    ("ltkd", "ltkd", {}),
]
FIRST_READING = {"T": 4.0, "prior_after_temper": False, "swap": "all", "feature_term": True}
# beta 8 (the default of both dkd and rekd) diverges on the fmnist-lt recipe; the ablation uses beta 0.5
ABLATIONS = [
    ("rekd beta=0.5 topk_from=teacher", "rekd", {"beta": 0.5, "topk_from": "teacher"}),
    # krdistill's second reading is its logit part (the default); its feature part switched on, and alone
    ("krdistill feature_term=true", "krdistill", {"feature_term": True}),
    ("krdistill feature term only", "krdistill", {"logit_term": False, "feature_term": True}),
    # the first reading's defaults (issue 4), kept as the ablation the second reading is measured against
    ("krdistill first reading", "krdistill", FIRST_READING),
    ("ltkd tau=0.5", "ltkd", {"tau": 0.5}),
]


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-")


def run_one(
    label: str, method: str, args: dict, seed: int, preset: str, out: Path, report_only: bool = False
) -> tuple[dict | str | None, float | None]:
    """The run's report, or the error line of a run that diverged (exit 6), and its wall time (None: reused).
    With `report_only`, a run that has not finished is skipped (None) instead of started."""
    options = ["--preset", preset, "--method", method]
    for key, value in args.items():
        options += ["--method-arg", f"{key}={json.dumps(value)}"]
    return launch(f"{slug(label)}-seed{seed}", [*options, "--seed", str(seed)], out, report_only)


def launch(
    name: str, options: list[str], out: Path, report_only: bool = False
) -> tuple[dict | str | None, float | None]:
    """`ltcompress run OPTIONS` as run `name` in `out` with one shared teacher (seed 0) and the teacher-logit
    cache: its report, or the error line of a run that diverged (exit 6), and its wall time (None: reused). A
    finished run is reused; an interrupted one is kept aside and run again."""
    report, diverged = out / name / "report.json", out / name / "DIVERGED"
    if report.is_file():
        return json.loads(report.read_text()), None
    if diverged.is_file():
        return diverged.read_text().strip(), None
    if report_only:
        return None, None
    if (out / name).exists():  # interrupted earlier: keep it aside, run again
        (out / name).rename(out / f"{name}.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
    cmd = [
        str(Path(sys.executable).parent / "ltcompress"),
        "run",
        *options,
        "--set",
        "teacher.seed=0",
        "--set",
        "run.teacher_cache=true",
        "--runs-dir",
        str(out),
        "--name",
        name,
        "--no-progress",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(f"{name}: {wall:.0f} s, exit {proc.returncode}", file=sys.stderr, flush=True)
    if proc.returncode == 6:
        line = proc.stderr.strip().splitlines()[-1].removeprefix("ltcompress: error: ")
        diverged.write_text(line + "\n")
        return line, wall
    if proc.returncode not in (0, 5):
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(report.read_text()), wall


def cell(values: list[float | None]) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "absent"
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fmnist-lt-bench")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-runs/methods"))
    parser.add_argument("--only", nargs="+", help="row labels to run (default: all)")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="print the table from finished runs only")
    args = parser.parse_args()
    variants = VARIANTS + ([] if args.no_ablations else ABLATIONS)
    if args.only:
        variants = [v for v in variants if v[0] in args.only]
    rows: dict[str, list[dict]] = {label: [] for label, _, _ in variants}
    failures: dict[str, list[str]] = {label: [] for label, _, _ in variants}
    teachers: dict[str, dict] = {}
    for seed in args.seeds:
        for label, method, margs in variants:
            rep, _ = run_one(label, method, margs, seed, args.preset, args.out, args.report_only)
            if rep is None:
                continue
            if isinstance(rep, str):
                failures[label].append(f"seed {seed}: {rep}")
                continue
            rows[label].append(rep)
            if rep["teacher"] is not None:
                teachers.setdefault(rep["teacher"]["loss"], rep)
    some = next(r[0] for r in rows.values() if r)
    v = some["environment"]["versions"]
    print(
        f"preset `{args.preset}`, student seeds {' '.join(map(str, args.seeds))} (teacher seed 0); "
        f"{platform.machine()}, {os.cpu_count()} cores; torch {v['torch']}, timm {v['timm']}, "
        f"onnxruntime {v['onnxruntime']}; accuracy in %, mean ± std over seeds, last epoch, "
        f"{some['data']['test_size']} test images\n"
    )
    print("| model | " + " | ".join(COLUMNS) + " | time per run (median) |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for loss, rep in sorted(teachers.items()):
        m = rep["stages"]["teacher"]
        cells = " | ".join(cell([m[c]]) for c in COLUMNS)
        print(
            f"| teacher {rep['teacher']['arch']} `{loss}` (torch) | {cells} | "
            f"{rep['teacher'].get('train_seconds', 0):.0f} s training |"
        )
    for label, reps in rows.items():
        cells = " | ".join(cell([r["stages"]["fp32"][c] for r in reps]) if reps else "diverged" for c in COLUMNS)
        # each run's own stage timings (process start-up excluded), so reused runs keep their figure
        times = [sum(r["run"]["timings_s"].values()) for r in reps]
        wall = f"{statistics.median(times):.0f} s" if times else "-"
        finished = len(reps) + len(failures[label])
        diverged = f" ({len(failures[label])} of {finished} seeds diverged)" if failures[label] else ""
        seeds = f" [{len(reps)} seed{'s' if len(reps) != 1 else ''}]" if args.report_only else ""
        print(f"| student `{label}` (ONNX Runtime){diverged}{seeds} | {cells} | {wall} |")
    for label, lines in failures.items():
        for line in lines:
            print(f"\n`{label}` {line}")


if __name__ == "__main__":
    main()
