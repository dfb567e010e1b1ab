"""torchrun support. `torchrun --nproc_per_node=N -m ltcompress run ...` sets WORLD_SIZE, RANK and LOCAL_RANK;
one process without torchrun is rank 0 of 1 and never touches torch.distributed.

Every collective here is called by all ranks at the same point of the program: rank 0 decides (teacher from
the cache or trained, where to resume) and broadcasts, so ranks never need the same files on disk.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ltcompress.errors import UsageError


def pick_device(name: str) -> torch.device:
    """The device a run asks for. auto: CUDA when present, else CPU (Apple's mps when asked for: its operator
    coverage varies). A device that is not here is exit 2, not a crash later."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    cuda_missing = not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    if (device.type == "cuda" and cuda_missing) or (device.type == "mps" and not torch.backends.mps.is_available()):
        raise UsageError(
            f"--device {name}: no such device here ({torch.cuda.device_count()} CUDA device(s) "
            f"visible, mps {'available' if torch.backends.mps.is_available() else 'not available'}); "
            f"use --device auto or cpu"
        )
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (nccl on CUDA, gloo on CPU) and return this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or active():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    if active():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_values(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (identity on one process)."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def step_flags(loss: torch.Tensor, stop: bool) -> tuple[float, bool]:
    """The step's loss (mean over ranks) and whether any rank asked to stop, in one host sync."""
    if not active():
        return loss.item(), stop
    t = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(stop), device=loss.device)])
    t = t.to(_comm_device())
    dist.all_reduce(t)
    values = t.tolist()
    return values[0] / world(), values[1] > 0


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_comm_device())
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(module: nn.Module) -> None:
    """Overwrite every rank's parameters and buffers with rank 0's."""
    if not active():
        return
    for tensor in module.state_dict().values():
        moved = tensor.to(_comm_device())
        dist.broadcast(moved, src=0)
        tensor.copy_(moved)


def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks, as timm's distribute_bn does:
    each rank's statistics saw only its own batches, and the ranks must end the epoch identical."""
    if not active():
        return
    for buf in module.buffers():
        if buf.is_floating_point():
            moved = buf.to(_comm_device())
            dist.all_reduce(moved)
            buf.copy_(moved / world())
