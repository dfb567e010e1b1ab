"""Loop overhead and the teacher-logit cache: resnet50 -> mobilenetv3_small_100 distillation (KD) on the real
fmnist-lt training set, in one run:

- ltcompress's loop (loop.train) against a bare PyTorch loop doing the same work (same batches from the same
  sampler stream and pipeline, same models, batch, channels_last, fp32 loss, SGD + one-cycle, one host sync);
- epoch time without the cache, while filling it, and reading it (`--teacher-cache`).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/loop.py [--epochs 4] [--batch 64] [--device auto]

Each configuration trains `--epochs` epochs from the same initial weights; the figure is the median over
epochs after the first (warm-up). Compare ratios, not absolute figures: the machine is noisy.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ltcompress import models
from ltcompress.config import TrainConfig, recipe_data
from ltcompress.data import LTData, iterate, load, to_batch
from ltcompress.data.samplers import epoch_stream
from ltcompress.dist import pick_device
from ltcompress.loop import LoopOptions, freeze, train
from ltcompress.train_state import amp_dtype, autocast
from ltcompress.logit_cache import LogitCache
from ltcompress.methods import METHODS
from ltcompress.methods.base import MethodContext
from ltcompress.methods.kd import kd_loss

TEACHER, STUDENT = "resnet50", "mobilenetv3_small_100"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fresh(num_classes: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return models.create(TEACHER, num_classes), models.create(STUDENT, num_classes)


def bare_loop(
    teacher: torch.nn.Module, student: torch.nn.Module, data: LTData, batch: int, device: torch.device, epochs: int
) -> list[float]:
    """Seconds per epoch of a hand-written loop doing the toolkit's work, nothing more."""
    student.to(device, memory_format=torch.channels_last).train()
    freeze(teacher.to(device, memory_format=torch.channels_last))
    steps = len(data.train) // batch
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * steps, cycle_momentum=False)
    generator, times = torch.Generator().manual_seed(0), []
    for epoch in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        order = epoch_stream("instance", data.train.labels, 0, epoch)
        for xb, yb in iterate(data.train, order, batch, drop_last=True):
            x, y = to_batch(xb, yb, data.spec, device, augment=True, generator=generator)
            with autocast(device, amp_dtype(device)):
                with torch.no_grad():
                    zt = teacher(x)
                loss = kd_loss(student(x), zt, y, 4.0, 0.1, 0.9)
            loss.item()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def toolkit_loop(
    data: LTData, batch: int, device: torch.device, epochs: int, cache: LogitCache | None = None
) -> list[float]:
    teacher, student = fresh(data.num_classes)
    ctx = MethodContext(torch.as_tensor(data.class_counts, dtype=torch.float32), epochs)
    method = METHODS.get("kd")(METHODS.get("kd").make_params({}), ctx)
    result = train(
        student,
        method,
        data,
        TrainConfig(epochs=epochs, batch_size=batch, lr=0.05),
        device,
        stage="student",
        seed=0,
        teacher=teacher,
        options=LoopOptions(teacher_cache=cache, progress=False),
    )
    return [r["seconds"] for r in result.history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    data = load(recipe_data(), Path(tempfile.gettempdir()))
    n = len(data.train) // args.batch * args.batch
    print(
        f"{TEACHER} -> {STUDENT}, KD, fmnist-lt ({len(data.train)} images, 32 px), batch {args.batch}, "
        f"{args.epochs} epochs per configuration, device {device}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; seconds per epoch (median of epochs 2..) and images/s\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = LogitCache.open(Path(tmp), {"bench": "loop.py"})
        rows = {
            "ltcompress loop": toolkit_loop(data, args.batch, device, args.epochs),
            "bare PyTorch loop": bare_loop(*fresh(data.num_classes), data, args.batch, device, args.epochs),
            "ltcompress loop, filling the cache": toolkit_loop(data, args.batch, device, args.epochs, cache),
            "ltcompress loop, from the cache": toolkit_loop(data, args.batch, device, args.epochs, cache),
        }
    median = {k: statistics.median(v[1:]) for k, v in rows.items()}
    print("| configuration | s per epoch | images/s | epochs (s) |")
    print("|---|---|---|---|")
    for label, times in rows.items():
        print(f"| {label} | {median[label]:.2f} | {n / median[label]:.0f} | {' '.join(f'{t:.2f}' for t in times)} |")
    print(f"\nloop / bare (throughput): {median['bare PyTorch loop'] / median['ltcompress loop']:.2f}x")
    print(f"cached epoch speed-up: {median['ltcompress loop'] / median['ltcompress loop, from the cache']:.2f}x")


if __name__ == "__main__":
    main()
