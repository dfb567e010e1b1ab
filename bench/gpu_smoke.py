"""GPU smoke benchmark: resnet50 -> mobilenetv3_small_100 distillation (KD) at 224 px on synthetic data, images/s of
ltcompress's loop (loop.train) and of a bare PyTorch loop doing the same work: same batches from the same
pipeline (to_batch: crop/flip, pinned copy, normalise, channels_last), bf16 autocast, teacher under no_grad,
fp32 loss, SGD nesterov + one-cycle, one loss.item() per step (loop.bare_loop). Also the pipeline alone, to show
the ceiling.

    PYTHONPATH=. python bench/gpu_smoke.py [--steps 300] [--batch 64] [--size 224]

Runs from the source tree with no network (no pretrained weights). Medians over epochs after the first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ltcompress.data import InputSpec, LTData, Split, iterate, to_batch
from ltcompress.dist import pick_device
from loop import bare_loop, fresh, sync, toolkit_loop  # bench/ is on sys.path when this script runs

CLASSES = 10


def synthetic(n: int, size: int) -> LTData:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, n)
    images = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    spec = InputSpec(size, 3, (0.5,) * 3, (0.25,) * 3, "RGB", size)
    split = Split(images, labels)
    return LTData(split, split, np.bincount(labels, minlength=CLASSES), tuple(map(str, range(CLASSES))), spec, "x")


def pipeline_only(data: LTData, batch: int, device: torch.device, epochs: int) -> list[float]:
    rates, generator = [], torch.Generator().manual_seed(0)
    for _ in range(epochs):
        sync(device)
        t0, seen = time.perf_counter(), 0
        for xb, yb in iterate(data.train, np.arange(len(data.train)), batch, drop_last=True):
            x, _ = to_batch(xb, yb, data.spec, device, augment=True, generator=generator)
            seen += len(x)
        sync(device)
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per loop (split into epochs)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    data = synthetic(args.steps // args.epochs * args.batch, args.size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {name}; torch {torch.__version__}; {args.size} px, batch {args.batch}, "
        f"{args.epochs} epochs x {len(data.train) // args.batch} steps per loop; images/s, median of epochs 2.."
    )

    n = len(data.train) // args.batch * args.batch
    toolkit = [n / t for t in toolkit_loop(data, args.batch, device, args.epochs)]
    bare = [n / t for t in bare_loop(*fresh(CLASSES), data, args.batch, device, args.epochs)]
    pipe = pipeline_only(data, args.batch, device, args.epochs)
    rows = {"ltcompress loop (loop.train)": toolkit, "bare PyTorch loop": bare, "data pipeline alone": pipe}
    for label, rates in rows.items():
        print(
            f"{label:34s} {statistics.median(rates[1:]):8.0f} img/s   (epochs: {' '.join(f'{r:.0f}' for r in rates)})"
        )
    print(f"loop / bare: {statistics.median(toolkit[1:]) / statistics.median(bare[1:]):.2f}x")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
