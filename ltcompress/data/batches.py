"""From in-memory uint8 splits to normalised training batches: iteration, augmentation, device transfer."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ltcompress.data.core import InputSpec, Split


def iterate(
    split: Split, order: np.ndarray, batch_size: int, drop_last: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield split.arrays[idx], split.labels[idx]


# what augment=True does, as recorded in the teacher-logit cache key: change it when the augmentation changes
AUGMENTATION = "random crop with zero padding size//8, then horizontal flip with p 0.5; one generator per run"


def to_batch(
    images: np.ndarray,
    labels: np.ndarray,
    spec: InputSpec,
    device: torch.device,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 numpy batch -> normalised float channels_last tensor on `device` (+ random crop/flip when training;
    the crop's shift scales with the input size: 4 px padding at 32 px, as in the CIFAR recipes).

    Augmentation is vectorised over the batch with an explicit generator, so a batch's augmentation depends
    only on the generator state: reproducible, and cheap next to the models.
    """
    x = torch.from_numpy(images)
    if augment:
        x = random_crop_flip(x, pad=max(1, spec.size // 8), generator=generator)  # 4 px at 32 px
    if device.type == "cuda":
        x = x.pin_memory()  # so the copy below overlaps with compute
    x = x.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    return x, torch.from_numpy(labels).to(device, non_blocking=True)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Random crop with `pad` zero padding plus horizontal flip, per image, on a uint8 [N, C, H, W] batch."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h)[None, :]  # [n, h]
    cols = dx[:, None] + torch.arange(w)[None, :]  # [n, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [n, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()
