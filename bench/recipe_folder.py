"""The image-folder recipe against the default preset on the same images (issue: your own photos).

    python bench/recipe_folder.py [--seeds 0 1 2] [--method krdistill] [--out bench-runs/recipe-folder]

Writes the default preset's exact Fashion-MNIST-LT images (its long-tailed training subset and the full test
split, 28 px gray PNGs) as a folder, ``train/<label>_<class>/`` and ``test/<label>_<class>/`` (the label prefix
keeps the class order), then runs the README's command twice per seed: as ``fmnist-lt`` (the default) and as a
user with that folder would, with only ``--dataset imagefolder --data-dir DIR`` (the ``photos`` recipe fits
itself). Seed 0 of each arm starts with an empty teacher cache (its wall time includes training the teacher);
the other seeds share that teacher (``--set teacher.seed=0``), so they measure the student. Accuracies are the
exported student's (ONNX Runtime, ``fp32``) on the 10 000 test images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ltcompress.config import resolve  # noqa: E402
from ltcompress.data.core import longtail_counts, longtail_indices  # noqa: E402
from ltcompress.data.fmnist import FMNIST_CLASSES, _read_idx, locate_fmnist  # noqa: E402

COLUMNS = ("balanced", "many", "medium", "few", "worst")


def write_folder(root: Path) -> int:
    """The default preset's images as PNG files; returns how many were written (0 when already there)."""
    if (root / "done").is_file():
        return 0
    d = resolve("fmnist-lt", {}).data
    files = locate_fmnist(None, Path(tempfile.gettempdir()), allow_download=False)
    arrays = {key: _read_idx(path, key.split("_")[1]) for key, path in files.items()}
    counts = longtail_counts(d.n_max, len(FMNIST_CLASSES), d.imbalance, d.profile)
    train_idx = longtail_indices(arrays["train_labels"].astype(np.int64), counts, d.seed)
    splits = {"train": train_idx, "test": np.arange(len(arrays["test_labels"]))}
    written = 0
    for split, idx in splits.items():
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        for i in idx:
            label = int(labels[i])
            folder = root / split / f"{label}_{FMNIST_CLASSES[label].replace('/', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{i:05d}.png")
            written += 1
    (root / "done").write_text("")
    return written


def run(arm: str, seed: int, folder: Path, method: str, out: Path, cache: Path) -> tuple[dict, float]:
    name = f"{arm}-s{seed}-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "-m", "ltcompress", "run", "--teacher", "resnet50"]
    cmd += ["--student", "mobilenetv3", "--method", method, "--seed", str(seed)]
    cmd += ["--runs-dir", str(out), "--name", name, "--no-progress"]
    if arm == "imagefolder":
        cmd += ["--dataset", "imagefolder", "--data-dir", str(folder)]
    if seed != 0:
        cmd += ["--set", "teacher.seed=0"]  # the seed-0 run's teacher, from the cache
    start = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "LTCOMPRESS_CACHE": str(cache)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / name / "report.json").read_text()), wall


def choices(folder: Path, method: str) -> None:
    """The speed side of the small-image choice: the cost estimate's timed steps (--dry-run) with the recipe's
    pad geometry and vectorised pad-crop, against timm's crop geometry and per-image RandomResizedCrop."""
    print("| geometry (augmentation) | teacher s/step | student s/step | teacher epoch s | student epoch s |")
    print("|---|---|---|---|---|")
    for label, extra in (("pad (crop_flip), the recipe's", []), ("crop (timm)", ["--set", "data.geometry=crop"])):
        cmd = [sys.executable, "-m", "ltcompress", "run", "--dataset", "imagefolder", "--data-dir", str(folder)]
        cmd += ["--teacher", "resnet50", "--student", "mobilenetv3", "--method", method, "--dry-run", "--json"]
        proc = subprocess.run(cmd + extra, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd + extra)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        stages = {s["stage"]: s for s in json.loads(proc.stdout)["estimate"]["stages"]}
        steps = [float(stages[m]["how"].split(" s/step")[0].rsplit(" ", 1)[-1]) for m in ("teacher", "student")]
        epochs = [stages[m]["epoch_s"] for m in ("teacher", "student")]
        print(f"| {label} | {steps[0]:.3f} | {steps[1]:.3f} | {epochs[0]:.1f} | {epochs[1]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--method", default="krdistill")
    parser.add_argument("--out", type=Path, default=Path("bench-runs/recipe-folder"))
    parser.add_argument("--choices", action="store_true", help="only time the small-image choice (dry runs)")
    args = parser.parse_args()
    folder = args.out / "fmnist-lt-png"
    start = time.perf_counter()
    print(f"wrote {write_folder(folder)} PNG files in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.choices:
        return choices(folder, args.method)
    results: dict[str, list[tuple[dict, float]]] = {"fmnist-lt": [], "imagefolder": []}
    with tempfile.TemporaryDirectory(prefix="ltcompress-bench-cache-") as cache:
        for seed in args.seeds:
            for arm in results:
                rep, wall = run(arm, seed, folder, args.method, args.out, Path(cache))
                results[arm].append((rep, wall))
                print(f"{arm} seed {seed}: {wall:.0f} s", file=sys.stderr, flush=True)
    print(f"method {args.method}; seeds {args.seeds}; accuracy in % (ONNX Runtime, fp32), wall time in s\n")
    print("| arm | seed | " + " | ".join(COLUMNS) + " | wall | fitted |")
    print("|---" * (len(COLUMNS) + 4) + "|")
    for arm, rows in results.items():
        for seed, (rep, wall) in zip(args.seeds, rows):
            m = rep["stages"]["fp32"]
            cells = " | ".join(f"{100 * m[c]:.1f}" for c in COLUMNS)
            fitted = "; ".join(f.split(":")[0] for f in rep["config"].get("fitted", [])) or "-"
            print(f"| {arm} | {seed} | {cells} | {wall:.0f} | {fitted} |")
        means = " | ".join(f"{100 * statistics.mean(r['stages']['fp32'][c] for r, _ in rows):.1f}" for c in COLUMNS)
        print(f"| {arm} | mean | {means} | {statistics.mean(w for _, w in rows):.0f} | |")
    base, mine = results["fmnist-lt"], results["imagefolder"]
    for c in ("balanced", "few"):
        gap = statistics.mean(r["stages"]["fp32"][c] for r, _ in mine) - statistics.mean(
            r["stages"]["fp32"][c] for r, _ in base
        )
        print(f"\n{c}: imagefolder - fmnist-lt = {100 * gap:+.1f} points (mean of {len(args.seeds)} seeds)")
    print(
        f"wall time of seed {args.seeds[0]} (teacher trained): imagefolder / fmnist-lt = {mine[0][1] / base[0][1]:.2f}"
    )


if __name__ == "__main__":
    main()
