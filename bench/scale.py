"""Real-scale data path: the lazy image-folder pipeline (JPEG files decoded per image in DataLoader workers, timm
augmentation, 224 px) at two dataset sizes, resnet50 -> mobilenetv3_small_100 (KD), on the CPU:

1. peak memory of an `ltcompress run` process (and of its process tree, workers included), per size;
2. seconds from launching that command to its log line "student: first training step done";
3. images/s of the data pipeline alone (ltcompress.data.train_batches, no model);
4. images/s of a bounded KD loop fed by the lazy pipeline against the same loop fed by the very same batches
   preloaded as normalised tensors, with the teacher's forward pass and with precomputed teacher logits; plus
   ltcompress's own loop (loop.train) on a subset, filling and then reading its teacher-logit cache.

The dataset is synthetic but shaped like ImageNet-LT: `--classes` classes with an exponential profile (class i
gets n_max * IF^(-i/(C-1)) training images, n_max solved for the size), JPEGs (quality 90) of 300-500 px with
smooth gradients, shapes and noise, and a balanced test split. Images are generated once into a pool under
--work; each size's tree hard-links its share of it, so the smaller tree is a subset of the larger one.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/scale.py [--sizes 5000 25000] [--work bench-runs/scale] [--quick]

The `ltcompress run` child gets a ready teacher (--teacher-weights: random resnet50 weights, saved once; its
accuracy is irrelevant to throughput) and is stopped with SIGINT as soon as it logs its first step: it finishes
the step in flight, checkpoints and exits 130. Compare ratios, not absolute figures: the machine is noisy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from scale_child import SIZE, STUDENT, RunResult, measure_run
from scale_loops import LOOPS, load_lazy, measure_loops, pipeline_rate, toolkit_cache
from synthetic_tree import TEACHER, TreeSpec, build_trees, make_teacher


@dataclass
class SizeResult:
    train: int
    counts: list[int]
    runs: list[RunResult] = field(default_factory=list)
    load_s: float = 0.0
    pipeline: tuple[float, float] = (0.0, 0.0)
    loops: dict[str, list[list[float]]] = field(default_factory=dict)
    toolkit: list[dict[str, Any]] = field(default_factory=list)
    others: dict[str, float] = field(default_factory=dict)  # cores other processes kept busy, per phase

    def first_step(self) -> float:
        """The fastest launch-to-first-step of the repeated runs: the one other load disturbed least."""
        return min(r.milestones.get("first step", float("inf")) for r in self.runs)

    def peak(self, attr: str) -> int:
        """The largest peak over the repeated runs (memory does not suffer from noise; keep the worst)."""
        return max(getattr(r, attr) for r in self.runs)

    def rate(self, name: str, batch: int) -> float:
        """images/s of a loop configuration: its best round's median step (timeit's rule on a shared machine)."""
        return batch / min(statistics.median(t) for t in self.loops[name])

    def ratio(self, kind: str) -> float:
        """Throughput of the lazy-fed loop over the tensor-fed one."""
        return self.rate(f"lazy, {kind}", 1) / self.rate(f"tensor-fed, {kind}", 1)


def measure_in_process(result: SizeResult, tree: Path, teacher_path: Path, work: Path, args: Any) -> None:
    """Items 3 and 4 for one size, in this process (the child has exited: nothing else of ours competes)."""
    import torch

    from ltcompress.loop import freeze
    from ltcompress.teacher import load_weights_file

    t0 = time.perf_counter()
    data = load_lazy(tree, work)
    result.load_s = time.perf_counter() - t0
    teacher = freeze(load_weights_file(TEACHER, teacher_path, data.num_classes)).to(memory_format=torch.channels_last)
    result.pipeline = pipeline_rate(data, args.pipeline_batch, args.pipeline_batches)
    result.loops = measure_loops(data, teacher, args.batch, args.steps, args.repeats, args.teacher_repeats)
    result.toolkit = toolkit_cache(data, teacher, args.batch, args.steps, work)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def _runs(x: SizeResult, milestone: str) -> str:
    values = [r.milestones.get(milestone, float("nan")) for r in x.runs]
    return " / ".join(f"{v:.1f}" for v in values)


def table_rows(results: dict[int, SizeResult], args: Any) -> list[tuple[str, list[str]]]:
    """The table's rows (label, one cell per size) from the measurements."""
    r = list(results.values())
    rows = [
        (
            "training images (classes; largest - smallest class)",
            [f"{x.train} ({len(x.counts)}; {max(x.counts)} - {min(x.counts)})" for x in r],
        ),
        (
            "other processes' load during the runs / the in-process part (cores)",
            [f"{x.others.get('runs', 0):.2f} / {x.others.get('in process', 0):.2f}" for x in r],
        ),
        ("peak RSS, `ltcompress run` main process (MiB, wait4)", [_mib(x.peak("peak_rss_main")) for x in r]),
        ("peak PSS, its process tree incl. workers (MiB, /proc)", [_mib(x.peak("peak_tree_pss")) for x in r]),
        ("peak RSS summed over the tree (MiB, /proc)", [_mib(x.peak("peak_tree_rss")) for x in r]),
        ("launch -> data indexed, stats sampled (s), per run", [_runs(x, "data indexed + stats") for x in r]),
        ("launch -> teacher loaded (s), per run", [_runs(x, "teacher loaded") for x in r]),
        ("launch -> first step done (s), per run", [_runs(x, "first step") for x in r]),
        ("launch -> exit 130 after the step in flight (s), per run", [_runs(x, "exited") for x in r]),
        (
            "steps done at exit, exit code, per run",
            [" / ".join(f"{run.steps}, {run.exit_code}" for run in x.runs) for x in r],
        ),
        ("data.load in this process (s)", [f"{x.load_s:.1f}" for x in r]),
        (
            f"pipeline alone, batch {args.pipeline_batch}: first batch (s) / images/s",
            [f"{x.pipeline[0]:.1f} / {x.pipeline[1]:.0f}" for x in r],
        ),
    ]
    for name, _, _ in LOOPS:
        rows.append((f"KD loop, {name} (images/s)", [f"{x.rate(name, args.batch):.1f}" for x in r]))
    for kind in ("teacher forward", "precomputed logits"):
        rows.append((f"lazy / tensor-fed, {kind}", [f"{x.ratio(kind):.2f}" for x in r]))
    for i, label in enumerate(("filling the cache", "from the cache")):
        rows.append(
            (
                f"loop.train, {args.steps * args.batch}-image epoch, {label} (images/s)",
                [f"{x.toolkit[i]['images_per_s']:.1f} ({x.toolkit[i].get('teacher_logits')})" for x in r],
            )
        )
    return rows


def print_report(results: dict[int, SizeResult], args: Any) -> None:
    """The markdown table, then each target with its verdict."""
    sizes = list(results)
    print("| measurement | " + " | ".join(f"{n} images" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for label, cells in table_rows(results, args):
        print(f"| {label} | " + " | ".join(cells) + " |")
    small, large = results[sizes[0]], results[sizes[-1]]
    grow_main = large.peak("peak_rss_main") / small.peak("peak_rss_main") - 1
    grow_tree = large.peak("peak_tree_pss") / small.peak("peak_tree_pss") - 1
    first = large.first_step()
    print(f"\nTargets ({sizes[0]} -> {sizes[-1]} images):")
    print(
        f"- peak RSS grows < 15 %: main process {grow_main:+.1%}, tree PSS {grow_tree:+.1%}: "
        f"{'met' if max(grow_main, grow_tree) < 0.15 else 'NOT met'}"
    )
    print(f"- first step within 30 s at {sizes[-1]} (best run): {first:.1f} s: {'met' if first <= 30 else 'NOT met'}")
    for kind in ("teacher forward", "precomputed logits"):
        ratio = large.ratio(kind)
        print(
            f"- lazy loop >= 0.9x tensor-fed, {kind}, at {sizes[-1]}: {ratio:.2f}x: "
            f"{'met' if ratio >= 0.9 else 'NOT met'}"
        )


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its reaped children): their
    difference over an interval is what other processes took from the cores meanwhile (this machine is shared)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def others(since: tuple[float, float], wall: float) -> float:
    """Average number of cores other processes kept busy since `since` (a cpu_seconds() reading)."""
    busy, own = cpu_seconds()
    return max(0.0, (busy - since[0]) - (own - since[1])) / max(wall, 1e-9)


def header(args: Any, workers: int) -> str:
    """What ran where: the figures depend on the cores, threads and versions."""
    import platform

    import timm
    import torch

    cores = len(os.sched_getaffinity(0))
    return (
        f"{TEACHER} -> {STUDENT}, KD, {SIZE} px, lazy JPEG path (data.in_memory=false, timm augmentation, "
        f"data.workers default = {workers}); {platform.machine()}, {cores} cores, {torch.get_num_threads()} "
        f"torch threads, torch {torch.__version__}, timm {timm.__version__}; `ltcompress run` batch "
        f"{args.run_batch}; KD loops batch {args.batch}, {args.steps} timed steps after 1 warm-up per round, "
        f"{args.teacher_repeats} rounds with the teacher, {args.repeats} on precomputed logits, images/s from "
        f"the best round's median step; `ltcompress run` x{args.run_repeats} per size\n"
    )


def parse_args() -> argparse.Namespace:
    """Sizes and budgets; the defaults keep the whole benchmark near 10 minutes on 2 idle CPU cores."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 25000], help="training images per tree")
    parser.add_argument("--quick", action="store_true", help="500 and 2500 images, 2 steps, 1 round: tests the script")
    parser.add_argument("--work", type=Path, default=Path("bench-runs/scale"), help="image pool, trees, runs")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--imbalance", type=float, default=100.0, help="largest / smallest class")
    parser.add_argument("--test-per-class", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-batch", type=int, default=64, help="`ltcompress run` batch (the preset's)")
    parser.add_argument("--batch", type=int, default=32, help="batch of the KD loops")
    parser.add_argument("--steps", type=int, default=6, help="timed KD steps per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the KD loops on precomputed logits")
    parser.add_argument("--run-repeats", type=int, default=2, help="`ltcompress run` launches per size")
    parser.add_argument("--teacher-repeats", type=int, default=3, help="rounds of the KD loops with the teacher")
    parser.add_argument("--pipeline-batch", type=int, default=64)
    parser.add_argument("--pipeline-batches", type=int, default=20)
    parser.add_argument("--run-limit", type=float, default=600, help="SIGINT a run that has not stepped by then")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.steps, args.pipeline_batches = [500, 2500], 2, 5
        args.repeats = args.teacher_repeats = args.run_repeats = 1
    args.sizes = sorted(args.sizes)
    return args


def repeat_runs(result: SizeResult, tree: Path, teacher: Path, args: Any) -> None:
    """`--run-repeats` launches of `ltcompress run` on one tree (the first-step time is noisy: keep the best)."""
    for _ in range(args.run_repeats):
        result.runs.append(measure_run(tree, teacher, args.work, args.run_batch, args.run_limit))


def phase(result: SizeResult, name: str, t0: float, work: Callable[[], None]) -> None:
    """Runs `work()`, noting how many cores other processes kept busy meanwhile (the machine is shared)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    print(f"[{start - t0:.0f} s] {name}, {result.train} images", file=sys.stderr)
    work()
    result.others[name] = others(cpu, time.perf_counter() - start)


def main() -> None:
    """Trees, then the `ltcompress run` children (this process idle), then the in-process measurements."""
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    spec = TreeSpec(args.classes, args.imbalance, args.test_per_class, args.seed)
    trees = build_trees(args.work, args.sizes, spec)
    teacher = make_teacher(args.work, args.classes)
    results: dict[int, SizeResult] = {}
    for n, tree in trees.items():  # the children first, while this process is idle
        counts = json.loads((tree / ".complete").read_text())["train_counts"]
        results[n] = SizeResult(sum(counts), counts)
        phase(results[n], "runs", t0, functools.partial(repeat_runs, results[n], tree, teacher, args))
    for n, tree in trees.items():
        phase(
            results[n],
            "in process",
            t0,
            functools.partial(measure_in_process, results[n], tree, teacher, args.work, args),
        )
    from ltcompress.config import recipe_data
    from ltcompress.data.core import resolve_workers

    print(header(args, resolve_workers(recipe_data())))
    print_report(results, args)
    wall = time.perf_counter() - t0
    print(
        f"\ntotal wall time {wall:.0f} s (images already generated are reused); other processes kept "
        f"{others(cpu0, wall):.2f} of the {len(os.sched_getaffinity(0))} cores busy on average meanwhile"
    )


if __name__ == "__main__":
    main()
