"""Real-scale data path: the lazy image-folder pipeline (JPEG files decoded per image in DataLoader workers, timm
augmentation, 224 px) at two dataset sizes, resnet50 -> mobilenetv3_small_100 (KD), on the CPU:

1. peak memory of an `ltcompress run` process (and of its process tree, workers included), per size;
2. seconds from launching that command to its log line "student: first training step done";
3. images/s of the data pipeline alone (ltcompress.data.train_batches, no model);
4. images/s of a bounded KD loop fed by the lazy pipeline against the same loop fed by the very same batches
   preloaded as normalised tensors, with the teacher's forward pass and with precomputed teacher logits; plus
   ltcompress's own loop (distill.train) on a subset, filling and then reading its teacher-logit cache.

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
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

TEACHER, STUDENT = "resnet50", "mobilenetv3_small_100"
SIZE = 224
FIRST_STEP = "student: first training step done"
BANK_SIDE = 1024  # the noise texture images crop their grain from


# ---------------------------------------------------------------- the synthetic long-tailed JPEG tree
def class_counts(total: int, classes: int, imbalance: float) -> list[int]:
    """Exp profile n_max * IF^(-i/(C-1)), at least one image per class; n_max is solved (bisection) so that the
    counts add up to about `total`, which keeps the profile's shape the same at every size."""
    def counts(n_max: float) -> list[int]:
        return [max(1, int(n_max * imbalance ** (-i / max(1, classes - 1)))) for i in range(classes)]

    lo, hi = 1.0, float(total)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(counts(mid)) < total else (lo, mid)
    return counts(hi)


_BANK: Any = None


def _noise_bank(seed: int) -> Any:
    """One seeded RGB noise texture per process: cropping grain from it is ~7x cheaper than drawing noise per
    image (2.7 against 19.5 ms an image here): 27k images take about 35 s on 2 cores."""
    global _BANK
    if _BANK is None:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng([seed, 999])
        _BANK = Image.fromarray(np.clip(128 + 48 * rng.standard_normal((BANK_SIDE, BANK_SIDE, 3)), 0, 255)
                                .astype(np.uint8))
    return _BANK


def draw_image(rng: Any, bank: Any) -> bytes:
    """A photo-like JPEG: a smooth random colour field (a 4x3 grid upsampled bicubically), random filled
    ellipses, rectangles and strokes, film-grain noise; 300-500 px a side, quality 90 (50-80 KiB)."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(300, 501)), int(rng.integers(300, 501))
    img = Image.fromarray(rng.integers(0, 256, size=(3, 4, 3), dtype="uint8")).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        if kind == 2:
            draw.line(box, fill=colour, width=int(rng.integers(2, 10)))
        else:
            (draw.ellipse if kind else draw.rectangle)(box, fill=colour)
    ox, oy = int(rng.integers(0, BANK_SIDE - w)), int(rng.integers(0, BANK_SIDE - h))
    img = Image.blend(img, bank.crop((ox, oy, ox + w, oy + h)), float(rng.uniform(0.2, 0.4)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _fill_class(job: tuple[str, str, int, int, int]) -> int:
    """Pool worker: make sure images 0..k-1 of one class of one split exist (each seeded by its own position,
    so the pool grows without changing images already made). Returns how many it wrote."""
    import numpy as np

    folder, split, label, k, seed = job
    out = Path(folder) / split / f"c{label:04d}"
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for i in range(k):
        path = out / f"{i:05d}.jpg"
        if path.exists():
            continue
        rng = np.random.default_rng([seed, split == "test", label, i])
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(draw_image(rng, _noise_bank(seed)))
        os.replace(tmp, path)  # a killed generator never leaves a truncated JPEG behind
        written += 1
    return written


@dataclass(frozen=True)
class TreeSpec:
    classes: int
    imbalance: float
    test_per_class: int
    seed: int


def build_trees(work: Path, sizes: list[int], spec: TreeSpec) -> dict[int, Path]:
    """One folder tree per size (train/<class>/, test/<class>/), hard-linked from a shared image pool that is
    generated (in parallel, once) up to what the largest size needs; a finished tree is reused as it is."""
    from multiprocessing import Pool

    pool = work / f"pool-c{spec.classes}-s{spec.seed}"
    counts = {n: class_counts(n, spec.classes, spec.imbalance) for n in sizes}
    need = [max(counts[n][c] for n in sizes) for c in range(spec.classes)]
    jobs = [(str(pool), "train", c, need[c], spec.seed) for c in range(spec.classes)]
    jobs += [(str(pool), "test", c, spec.test_per_class, spec.seed) for c in range(spec.classes)]
    t0 = time.perf_counter()
    with Pool(os.cpu_count() or 1) as workers:
        made = sum(workers.imap_unordered(_fill_class, jobs, chunksize=4))
    if made:
        print(f"generated {made} JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {n: _link_tree(work, pool, counts[n], spec) for n in sizes}


def _link_tree(work: Path, pool: Path, counts: list[int], spec: TreeSpec) -> Path:
    """The tree for one size: its first counts[c] pool images of each class, and the whole balanced test pool."""
    tree = work / f"tree-c{spec.classes}-if{spec.imbalance:g}-n{sum(counts)}-t{spec.test_per_class}-s{spec.seed}"
    marker = tree / ".complete"
    if marker.is_file():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    for split, per_class in (("train", counts), ("test", [spec.test_per_class] * spec.classes)):
        for label, k in enumerate(per_class):
            (tree / split / f"c{label:04d}").mkdir(parents=True)
            for i in range(k):
                name = f"{split}/c{label:04d}/{i:05d}.jpg"
                os.link(pool / name, tree / name)
    marker.write_text(json.dumps({"train_counts": counts}))
    return tree


def make_teacher(work: Path, classes: int) -> Path:
    """A resnet50 with random weights for `classes` classes, saved once: the run needs a ready teacher, not a
    good one (training one at 224 px on 2 CPU cores would take hours)."""
    path = work / f"teacher-{TEACHER}-c{classes}.safetensors"
    if not path.is_file():
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = timm.create_model(TEACHER, num_classes=classes)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# ---------------------------------------------------------------- 1 + 2: an `ltcompress run` child
def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over `pid` and all its descendants (the DataLoader workers). PSS splits pages
    shared after fork between the processes, so the PSS sum is the tree's real footprint; the RSS sum counts
    shared pages once per process."""
    pids, rss, pss = [pid], 0, 0
    while pids:
        p = pids.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                pids += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kb = int(line.split()[1]) * 1024
                    rss, pss = (rss + kb, pss) if line.startswith("Rss:") else (rss, pss + kb)
        except (OSError, ValueError):
            continue  # the process ended between the listing and the read
    return rss, pss


@dataclass
class RunResult:
    milestones: dict[str, float] = field(default_factory=dict)  # seconds since launch
    peak_rss_main: int = 0  # bytes, wait4's ru_maxrss: the largest single process (the main one)
    peak_tree_rss: int = 0
    peak_tree_pss: int = 0
    exit_code: int | None = None
    steps: int | None = None
    tail: list[str] = field(default_factory=list)


def _poll_memory(pid: int, result: RunResult, done: threading.Event) -> None:
    """Samples the process tree's memory every 0.2 s until `done`, keeping the peaks."""
    while not done.wait(0.2):
        rss, pss = tree_memory(pid)
        result.peak_tree_rss = max(result.peak_tree_rss, rss)
        result.peak_tree_pss = max(result.peak_tree_pss, pss)


MILESTONES = {"data: decoded lazily": "data indexed + stats", "run directory:": "run folder written",
              "teacher:": "teacher loaded", FIRST_STEP: "first step"}


def run_child(cmd: list[str], env: dict[str, str], limit_s: float) -> RunResult:
    """Launches `cmd`, timestamps its log lines live, sends SIGINT at the first training step (the run
    checkpoints after the step in flight and exits 130) and reaps it with wait4 for its own peak RSS."""
    result, done = RunResult(), threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    poller = threading.Thread(target=_poll_memory, args=(proc.pid, result, done), daemon=True)
    poller.start()
    watchdog = threading.Timer(limit_s, proc.send_signal, args=(signal.SIGINT,))
    watchdog.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        now = time.perf_counter() - t0
        result.tail = (result.tail + [line.rstrip()])[-15:]
        for needle, name in MILESTONES.items():
            if needle in line and name not in result.milestones:
                result.milestones[name] = now
                if needle == FIRST_STEP:
                    proc.send_signal(signal.SIGINT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = result.exit_code = os.waitstatus_to_exitcode(status)
    result.milestones["exited"] = time.perf_counter() - t0
    watchdog.cancel()
    done.set()
    poller.join()
    result.peak_rss_main = usage.ru_maxrss * 1024  # kB on Linux
    return result


def measure_run(tree: Path, teacher: Path, work: Path, batch: int, limit_s: float) -> RunResult:
    """One `ltcompress run` on the lazy path at 224 px with timm augmentation (what a user with a folder of
    JPEGs too large for memory runs), stopped at its first step; its run folder is removed afterwards."""
    name = f"scale-{tree.name}-{os.getpid()}-{int(time.time())}"
    runs = work / "runs"
    cmd = [sys.executable, "-m", "ltcompress", "run", "--dataset", "imagefolder", "--data-dir", str(tree),
           "--teacher", TEACHER, "--student", STUDENT, "--method", "kd", "--teacher-weights", str(teacher),
           "--student-init", "scratch", "--device", "cpu", "--no-progress", "--runs-dir", str(runs), "--name", name,
           "--set", f"data.input_size={SIZE}", "--set", "data.in_memory=false", "--set", "data.augment=timm",
           "--set", f"student.train.batch_size={batch}", "--set", f"run.cache_dir={work / 'cache'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = run_child(cmd, env, limit_s)
    ckpt = runs / name / "checkpoints" / "student-last.pt"
    if ckpt.is_file():
        import torch

        result.steps = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    if result.exit_code != 130 or result.steps is None:
        print("\n".join(result.tail), file=sys.stderr)
    shutil.rmtree(runs / name, ignore_errors=True)
    return result


# ---------------------------------------------------------------- 3 + 4: the pipeline and the loop, in process
def load_lazy(tree: Path, work: Path) -> Any:
    """The tree as `ltcompress run` loads it above: lazy (files decoded in workers), timm augmentation, 224 px,
    mean/std from the default seeded sample, data.workers left to its CPU-count default."""
    from ltcompress.config import DataConfig
    from ltcompress.data import load

    cfg = DataConfig(dataset="imagefolder", data_dir=str(tree), input_size=SIZE, in_memory=False, augment="timm")
    return load(cfg, work / "cache")


def lazy_feed(data: Any, order: Any, batch: int) -> Iterator[tuple[Any, Any]]:
    """ltcompress's training batches (train_batches: workers, timm per image, normalised channels_last) of
    `order`; closing this generator shuts the workers down."""
    import torch

    from ltcompress.data import train_batches

    batches = train_batches(data, order, batch, torch.device("cpu"), key=(0, 0, 0), first_step=0,
                            generator=torch.Generator().manual_seed(0))
    try:
        for b in batches:
            yield b.x, b.y
    finally:
        batches.close()


def stream(data: Any, images: int) -> Any:
    """The first `images` positions of epoch 0's instance-sampled stream (what the loop's first steps read)."""
    from ltcompress.data.samplers import epoch_stream

    return epoch_stream("instance", data.train.labels, 0, 0)[:images]


def pipeline_rate(data: Any, batch: int, batches: int) -> tuple[float, float]:
    """(seconds to the first batch, images/s after it) of the data pipeline alone: what decoding and timm's
    augmentation can deliver to a model that costs nothing."""
    batches = min(batches, len(data.train) // batch)
    t0 = time.perf_counter()
    feed = lazy_feed(data, stream(data, batches * batch), batch)
    first, t1, images = 0.0, 0.0, 0
    for i, (_, y) in enumerate(feed):
        if i == 0:
            t1 = time.perf_counter()
            first = t1 - t0
        else:
            images += len(y)
    return first, images / (time.perf_counter() - t1)


def kd_steps(feed: Iterator[tuple[Any, Any]], teacher: Any, student: Any, logits: list[Any] | None,
             steps: int) -> tuple[list[float], list[Any]]:
    """Seconds per step of a bare KD loop (fp32 on the CPU, SGD, one host sync a step, as distill.Loop) for steps
    2..steps+1, each including the wait for its batch (what the feed costs the loop); step 1 is warm-up (worker
    start, first allocations). Teacher logits come from `logits` (precomputed) or a no-grad forward (returned)."""
    import torch

    from ltcompress.methods.kd import kd_loss

    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    times, computed = [], []
    t = time.perf_counter()
    for i, (x, y) in enumerate(feed):
        if logits is None:
            with torch.no_grad():
                computed.append(teacher(x))
        zt = computed[i] if logits is None else logits[i]
        loss = kd_loss(student(x), zt, y, 4.0, 0.1, 0.9)
        loss.item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        now = time.perf_counter()
        times.append(now - t)
        t = now
        if i == steps:
            break
    return times[1:], computed


LOOPS = (("lazy, teacher forward", True, False), ("tensor-fed, teacher forward", False, False),
         ("lazy, precomputed logits", True, True), ("tensor-fed, precomputed logits", False, True))


def measure_loops(data: Any, teacher: Any, batch: int, steps: int, repeats: int,
                  teacher_repeats: int) -> dict[str, list[list[float]]]:
    """Step times, per round, of the KD loop fed by the lazy pipeline and by the same batches preloaded as
    tensors (one pass of the pipeline, kept in memory: identical pixels, no decoding), with the teacher's
    forward pass (`teacher_repeats` rounds) and with its logits precomputed (`repeats` rounds); configurations
    interleaved per round so that load from other processes, which comes and goes, can spare a round of each."""
    import torch

    from ltcompress import models

    order = stream(data, (steps + 1) * batch)
    preloaded = list(lazy_feed(data, order, batch))
    torch.manual_seed(0)
    student = models.create(STUDENT, data.num_classes).to(memory_format=torch.channels_last)
    init = {k: v.clone() for k, v in student.state_dict().items()}
    times: dict[str, list[list[float]]] = {name: [] for name, _, _ in LOOPS}
    logits: list[Any] | None = None
    for round_ in range(max(repeats, teacher_repeats)):
        for name, lazy, cached in LOOPS:
            if round_ >= (repeats if cached else teacher_repeats):
                continue
            student.load_state_dict(init)
            student.train()
            feed = lazy_feed(data, order, batch) if lazy else iter(preloaded)
            got, computed = kd_steps(feed, teacher, student, logits if cached else None, steps)
            if lazy:
                feed.close()  # type: ignore[attr-defined]
            times[name].append(got)
            logits = logits or computed
    return times


def toolkit_cache(data: Any, teacher: Any, batch: int, steps: int, work: Path) -> list[dict[str, Any]]:
    """distill.train (ltcompress's loop, lazy pipeline) for one epoch over a subset of steps*batch training
    images, twice with one LogitCache: the first epoch runs the teacher and fills the cache, the second reads
    it. (The cache holds whole epochs: a full 25k-image epoch with a resnet50 at 224 px on 2 CPU cores would
    take half an hour.) Each record's images/s covers the whole epoch, worker start-up and first step included."""
    import dataclasses
    import tempfile

    import numpy as np
    import torch

    from ltcompress.config import TrainConfig
    from ltcompress.data.core import Split
    from ltcompress.distill import LoopOptions, train
    from ltcompress.logit_cache import LogitCache
    from ltcompress.methods import METHODS
    from ltcompress.methods.base import MethodContext
    from ltcompress import models

    idx = stream(data, steps * batch)
    labels = data.train.labels[idx]
    files = data.train.files
    sub = dataclasses.replace(data, train=Split(None, labels, tuple(files[i] for i in idx)),
                              class_counts=np.bincount(labels, minlength=data.num_classes))
    kd = METHODS.get("kd")
    records = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        cache = LogitCache.open(Path(tmp), {"bench": "scale.py"})
        for _ in range(2):
            torch.manual_seed(0)
            student = models.create(STUDENT, data.num_classes)
            method = kd(kd.make_params({}), MethodContext(torch.as_tensor(sub.class_counts, dtype=torch.float32), 1))
            result = train(student, method, sub, TrainConfig(epochs=1, batch_size=batch), torch.device("cpu"),
                           stage="student", seed=0, teacher=teacher, options=LoopOptions(teacher_cache=cache,
                                                                                         progress=False))
            records.append(result.history[0])
    return records


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

    from ltcompress.distill import freeze
    from ltcompress.teacher import load_weights_file

    t0 = time.perf_counter()
    data = load_lazy(tree, work)
    result.load_s = time.perf_counter() - t0
    teacher = freeze(load_weights_file(TEACHER, teacher_path, data.num_classes)).to(memory_format=torch.channels_last)
    result.pipeline = pipeline_rate(data, args.pipeline_batch, args.pipeline_batches)
    result.loops = measure_loops(data, teacher, args.batch, args.steps, args.repeats, args.teacher_repeats)
    result.toolkit = toolkit_cache(data, teacher, args.batch, args.steps, work)


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.0f}"


def _runs(x: SizeResult, milestone: str) -> str:
    values = [r.milestones.get(milestone, float("nan")) for r in x.runs]
    return " / ".join(f"{v:.1f}" for v in values)


def table_rows(results: dict[int, SizeResult], args: Any) -> list[tuple[str, list[str]]]:
    """The table's rows (label, one cell per size) from the measurements."""
    r = list(results.values())
    rows = [
        ("training images (classes; largest - smallest class)",
         [f"{x.train} ({len(x.counts)}; {max(x.counts)} - {min(x.counts)})" for x in r]),
        ("other processes' load during the runs / the in-process part (cores)",
         [f"{x.others.get('runs', 0):.2f} / {x.others.get('in process', 0):.2f}" for x in r]),
        ("peak RSS, `ltcompress run` main process (MiB, wait4)", [_mib(x.peak("peak_rss_main")) for x in r]),
        ("peak PSS, its process tree incl. workers (MiB, /proc)", [_mib(x.peak("peak_tree_pss")) for x in r]),
        ("peak RSS summed over the tree (MiB, /proc)", [_mib(x.peak("peak_tree_rss")) for x in r]),
        ("launch -> data indexed, stats sampled (s), per run", [_runs(x, "data indexed + stats") for x in r]),
        ("launch -> teacher loaded (s), per run", [_runs(x, "teacher loaded") for x in r]),
        ("launch -> first step done (s), per run", [_runs(x, "first step") for x in r]),
        ("launch -> exit 130 after the step in flight (s), per run", [_runs(x, "exited") for x in r]),
        ("steps done at exit, exit code, per run",
         [" / ".join(f"{run.steps}, {run.exit_code}" for run in x.runs) for x in r]),
        ("data.load in this process (s)", [f"{x.load_s:.1f}" for x in r]),
        (f"pipeline alone, batch {args.pipeline_batch}: first batch (s) / images/s",
         [f"{x.pipeline[0]:.1f} / {x.pipeline[1]:.0f}" for x in r]),
    ]
    for name, _, _ in LOOPS:
        rows.append((f"KD loop, {name} (images/s)", [f"{x.rate(name, args.batch):.1f}" for x in r]))
    for kind in ("teacher forward", "precomputed logits"):
        rows.append((f"lazy / tensor-fed, {kind}", [f"{x.ratio(kind):.2f}" for x in r]))
    for i, label in enumerate(("filling the cache", "from the cache")):
        rows.append((f"distill.train, {args.steps * args.batch}-image epoch, {label} (images/s)",
                     [f"{x.toolkit[i]['images_per_s']:.1f} ({x.toolkit[i].get('teacher_logits')})" for x in r]))
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
    print(f"- peak RSS grows < 15 %: main process {grow_main:+.1%}, tree PSS {grow_tree:+.1%}: "
          f"{'met' if max(grow_main, grow_tree) < 0.15 else 'NOT met'}")
    print(f"- first step within 30 s at {sizes[-1]} (best run): {first:.1f} s: {'met' if first <= 30 else 'NOT met'}")
    for kind in ("teacher forward", "precomputed logits"):
        ratio = large.ratio(kind)
        print(f"- lazy loop >= 0.9x tensor-fed, {kind}, at {sizes[-1]}: {ratio:.2f}x: "
              f"{'met' if ratio >= 0.9 else 'NOT met'}")


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
    return (f"{TEACHER} -> {STUDENT}, KD, {SIZE} px, lazy JPEG path (data.in_memory=false, timm augmentation, "
            f"data.workers default = {workers}); {platform.machine()}, {cores} cores, {torch.get_num_threads()} "
            f"torch threads, torch {torch.__version__}, timm {timm.__version__}; `ltcompress run` batch "
            f"{args.run_batch}; KD loops batch {args.batch}, {args.steps} timed steps after 1 warm-up per round, "
            f"{args.teacher_repeats} rounds with the teacher, {args.repeats} on precomputed logits, images/s from "
            f"the best round's median step; `ltcompress run` x{args.run_repeats} per size\n")


def parse_args() -> argparse.Namespace:
    """Sizes and budgets; the defaults keep the whole benchmark near 10 minutes on 2 idle CPU cores."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
        phase(results[n], "in process", t0,
              functools.partial(measure_in_process, results[n], tree, teacher, args.work, args))
    from ltcompress.config import DataConfig
    from ltcompress.data.core import resolve_workers

    print(header(args, resolve_workers(DataConfig())))
    print_report(results, args)
    wall = time.perf_counter() - t0
    print(f"\ntotal wall time {wall:.0f} s (images already generated are reused); other processes kept "
          f"{others(cpu0, wall):.2f} of the {len(os.sched_getaffinity(0))} cores busy on average meanwhile")


if __name__ == "__main__":
    main()
