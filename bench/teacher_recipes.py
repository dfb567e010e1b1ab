"""Teacher recipe x student method at the default preset: what a balanced teacher contributes, and what the
distillation does.

    python bench/teacher_recipes.py [--seeds 0 1 2] [--out bench-runs/teacher-recipes]
                                    [--teachers ce bsce tau-norm crt] [--methods kd bkd krdistill ltkd-tau0.5]

Probes beyond the grid run only when named: the teacher `tau-norm-0.5` (a partial tau-normalisation) and the
method `krdistill-tau0` (krdistill with its prior correction off, for a teacher that is balanced already), and
the methods `bkd-80ep` and `krdistill-80ep` (the student's 40 epochs doubled: about 12 minutes with the teacher
for a first-time user, whose run computes the teacher on every batch).

Teacher recipes (all resnet50 trained here with the preset's recipe, seed `teacher.seed` = 0, shared by the
student seeds): `ce` (cross-entropy, the default), `bsce` (`teacher.loss=bsce`, Balanced Softmax), `tau-norm`
and `crt` (the cross-entropy teacher with its classifier re-balanced after training, `teacher.rebalance`; they
share the `ce` teacher's cache entry as their base). Each student runs the default preset with that teacher;
accuracies are the exported student's with ONNX Runtime (the teacher's own with torch), mean ± std over the
student seeds. A run whose report.json is in --out is reused, so an interrupted benchmark picks up where it
stopped; runs go seed by seed, so a partial run is still a table. The teacher-logit cache is on: the methods
of one seed and teacher share the teacher's forward passes (exact).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from methods import cell, launch  # noqa: E402

COLUMNS = ("overall", "balanced", "many", "medium", "few", "worst")
TEACHERS = {
    "ce": ["--set", "teacher.loss=ce"],
    "bsce": ["--set", "teacher.loss=bsce"],
    "tau-norm": ["--set", "teacher.loss=ce", "--teacher-rebalance", "tau-norm"],
    "crt": ["--set", "teacher.loss=ce", "--teacher-rebalance", "crt"],
    # probes beyond the grid (not run by default): a partial tau-norm
    "tau-norm-0.5": [
        "--set",
        "teacher.loss=ce",
        "--teacher-rebalance",
        "tau-norm",
        "--set",
        "teacher.rebalance_args.tau=0.5",
    ],
}
METHODS = {
    "kd": ["--method", "kd"],
    "bkd": ["--method", "bkd"],
    "krdistill": ["--method", "krdistill"],
    "ltkd-tau0.5": ["--method", "ltkd", "--method-arg", "tau=0.5"],
    # a probe (not run by default): krdistill with its prior correction off, for a teacher balanced already
    "krdistill-tau0": ["--method", "krdistill", "--method-arg", "tau=0"],
    # probes: the student's schedule doubled, what the 10 minutes left after the teacher's 5 allow
    "bkd-80ep": ["--method", "bkd", "--set", "student.train.epochs=80"],
    "krdistill-80ep": ["--method", "krdistill", "--set", "student.train.epochs=80"],
}
GRID = (["ce", "bsce", "tau-norm", "crt"], ["kd", "bkd", "krdistill", "ltkd-tau0.5"])


def run_one(teacher: str, method: str, seed: int, out: Path) -> dict:
    """The finished run's report.json (run now unless it is in `out` already)."""
    name = f"{teacher}-{method}-seed{seed}"
    report, _ = launch(name, [*METHODS[method], *TEACHERS[teacher], "--seed", str(seed)], out)
    if not isinstance(report, dict):
        sys.exit(f"{name} diverged: {report}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-runs/teacher-recipes"))
    parser.add_argument("--teachers", nargs="+", default=GRID[0], choices=list(TEACHERS))
    parser.add_argument("--methods", nargs="+", default=GRID[1], choices=list(METHODS))
    args = parser.parse_args()
    rows: dict[tuple[str, str], list[dict]] = {(t, m): [] for t in args.teachers for m in args.methods}
    for seed in args.seeds:
        for teacher in args.teachers:
            for method in args.methods:
                rows[teacher, method].append(run_one(teacher, method, seed, args.out))
    some = next(r[0] for r in rows.values() if r)
    v = some["environment"]["versions"]
    print(
        f"default preset, student seeds {' '.join(map(str, args.seeds))} (teacher seed 0); {platform.machine()}, "
        f"{os.cpu_count()} cores; torch {v['torch']}, timm {v['timm']}, onnxruntime {v['onnxruntime']}; "
        f"accuracy in %, mean ± std over seeds, last epoch, {some['data']['test_size']} test images\n"
    )
    print("| teacher recipe | model | " + " | ".join(COLUMNS) + " | run time (median) |")
    print("|---|---" + "|---:" * len(COLUMNS) + "|---:|")
    for teacher in args.teachers:
        first = rows[teacher, args.methods[0]][0]
        t = first["teacher"]
        extra = f", re-balanced {t['rebalance']['seconds']:.0f} s" if t.get("rebalance") else ""
        own = " | ".join(cell([first["stages"]["teacher"][c]]) for c in COLUMNS)
        print(f"| {teacher} | teacher (torch) | {own} | {t.get('train_seconds', 0):.0f} s training{extra} |")
        for method in args.methods:
            reps = rows[teacher, method]
            cells = " | ".join(cell([r["stages"]["fp32"][c] for r in reps]) for c in COLUMNS)
            wall = statistics.median(sum(r["run"]["timings_s"].values()) for r in reps)
            print(f"| {teacher} | student `{method}` | {cells} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
