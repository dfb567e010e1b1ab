"""bench/scale.py, measurements 3 and 4, in process: the lazy data pipeline alone, a bounded KD loop fed by it
against the same batches preloaded, and ltcompress's own loop filling and reading its teacher-logit cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from scale_child import SIZE, STUDENT


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

    batches = train_batches(
        data, order, batch, torch.device("cpu"), key=(0, 0, 0), first_step=0, generator=torch.Generator().manual_seed(0)
    )
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


def kd_steps(
    feed: Iterator[tuple[Any, Any]], teacher: Any, student: Any, logits: list[Any] | None, steps: int
) -> tuple[list[float], list[Any]]:
    """Seconds per step of a bare KD loop (fp32 on the CPU, SGD, one host sync a step, as loop.Loop) for steps
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


LOOPS = (
    ("lazy, teacher forward", True, False),
    ("tensor-fed, teacher forward", False, False),
    ("lazy, precomputed logits", True, True),
    ("tensor-fed, precomputed logits", False, True),
)


def measure_loops(
    data: Any, teacher: Any, batch: int, steps: int, repeats: int, teacher_repeats: int
) -> dict[str, list[list[float]]]:
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
    """loop.train (ltcompress's loop, lazy pipeline) for one epoch over a subset of steps*batch training
    images, twice with one LogitCache: the first epoch runs the teacher and fills the cache, the second reads
    it. (The cache holds whole epochs: a full 25k-image epoch with a resnet50 at 224 px on 2 CPU cores would
    take half an hour.) Each record's images/s covers the whole epoch, worker start-up and first step included."""
    import dataclasses
    import tempfile

    import numpy as np
    import torch

    from ltcompress.config import TrainConfig
    from ltcompress.data.core import Split
    from ltcompress.loop import LoopOptions, train
    from ltcompress.logit_cache import LogitCache
    from ltcompress.methods import METHODS
    from ltcompress.methods.base import MethodContext
    from ltcompress import models

    idx = stream(data, steps * batch)
    labels = data.train.labels[idx]
    files = data.train.files
    sub = dataclasses.replace(
        data,
        train=Split(None, labels, tuple(files[i] for i in idx)),
        class_counts=np.bincount(labels, minlength=data.num_classes),
    )
    kd = METHODS.get("kd")
    records = []
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        cache = LogitCache.open(Path(tmp), {"bench": "scale.py"})
        for _ in range(2):
            torch.manual_seed(0)
            student = models.create(STUDENT, data.num_classes)
            method = kd(kd.make_params({}), MethodContext(torch.as_tensor(sub.class_counts, dtype=torch.float32), 1))
            result = train(
                student,
                method,
                sub,
                TrainConfig(epochs=1, batch_size=batch, lr=0.05),
                torch.device("cpu"),
                stage="student",
                seed=0,
                teacher=teacher,
                options=LoopOptions(teacher_cache=cache, progress=False),
            )
            records.append(result.history[0])
    return records
