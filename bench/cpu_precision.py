"""bf16 autocast against fp32 on this CPU, at the default preset's shapes: is bf16 the way to fit a longer student
schedule and the teacher into 10 minutes on 2 cores?

    python bench/cpu_precision.py [--repeats 15] [--batch 64] [--size 32]

Times (median over --repeats, after 3 warm-up calls; channels_last, as the loop runs them) the frozen resnet50
teacher's no-grad forward, which a distillation run does on every batch, and one SGD step of the resnet50 teacher
and of the mobilenetv3_small_100 student. Weights are random (timings do not depend on them); the CPU's bf16
flags are printed, because without avx512_bf16 or AMX bf16 is emulated.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch

from ltcompress.report import environment
from ltcompress.train_state import amp_dtype, autocast

CPU = torch.device("cpu")


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def forward(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], object]:
    def call() -> object:
        with torch.no_grad(), autocast(CPU, dtype):
            return model(x)

    return call


def train_step(model: torch.nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> Callable[[], object]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y = torch.arange(x.shape[0]) % 10

    def call() -> object:
        opt.zero_grad(set_to_none=True)
        with autocast(CPU, dtype):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        return loss

    return call


def bf16_flags() -> str:
    """The CPU's bf16 vector flags, as the report records them."""
    flags = [f for f in environment("cpu")["cpu_flags"] if "bf16" in f]
    return ", ".join(flags) or "no avx512_bf16 (bf16 emulated)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    teacher = timm.create_model("resnet50", num_classes=10).to(memory_format=torch.channels_last)
    student = timm.create_model("mobilenetv3_small_100", num_classes=10).to(memory_format=torch.channels_last)
    cases = [
        ("resnet50 teacher forward (no grad)", lambda dt: forward(teacher.eval(), x, dt)),
        ("resnet50 training step", lambda dt: train_step(teacher.train(), x, dt)),
        ("mobilenetv3_small_100 training step", lambda dt: train_step(student.train(), x, dt)),
    ]
    print(
        f"{platform.machine()}, {torch.get_num_threads()} threads, bf16 flags: {bf16_flags()};"
        f" torch {torch.__version__}; batch {args.batch} x {args.size} px, channels_last, median of {args.repeats}"
    )
    print("\n| call | fp32 ms | bf16 autocast ms | bf16 speed-up |\n|---|---:|---:|---:|")
    for label, make in cases:
        # the dtypes run.precision fp32 and bf16 select, through the loop's own autocast
        fp32, bf16 = (median_ms(make(amp_dtype(CPU, p)), args.repeats) for p in ("fp32", "bf16"))
        print(f"| {label} | {fp32:.1f} | {bf16:.1f} | {fp32 / bf16:.2f}x |")


if __name__ == "__main__":
    main()
