"""Scale one compression run out over several processes, GPUs or machines with torchrun (DDP).

    torchrun --standalone --nproc_per_node=2 examples/scale_out.py          # 2 processes on this machine
    torchrun --nproc_per_node=8 --nnodes=2 --node_rank=0 --rdzv_backend=c10d \\
             --rdzv_endpoint=HOST:29500 examples/scale_out.py                 # node 0 of 2 (node 1: --node_rank=1)

Every process calls compress() with the same settings. Each trains on its share of every batch
(`train.batch_size` is the global batch, split over the processes), gradients are averaged (gloo on CPU, NCCL
on CUDA), and only rank 0 writes the run directory and gets the result; the other ranks get None.
`ltcompress run` under `torchrun -m ltcompress` does the same from the command line.
"""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from ltcompress import LTCompressError, compress


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="mobilenetv3_small_100")
    parser.add_argument("--method", default="bkd")
    parser.add_argument("--name", default=None, help="run name (default: automatic)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value by dotted key, e.g. student.train.epochs=10; repeatable",
    )
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = compress(
            teacher=args.teacher,
            student=args.student,
            method=args.method,
            name=args.name,
            runs_dir=args.runs_dir,
            overrides=overrides,
            progress=rank == 0,
        )
    except LTCompressError as exc:
        print(f"rank {rank}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if result is None:  # a rank other than 0: it trained its share, rank 0 reports
        return 0
    world = os.environ.get("WORLD_SIZE", "1")
    fp32 = result.metrics["fp32"]
    print(f"{world} processes: balanced {fp32.balanced:.4f}, Few {fp32.few}; run: {result.run_dir}")
    return 0 if result.passed else 5


if __name__ == "__main__":
    sys.exit(main())
