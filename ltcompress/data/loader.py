"""Batches for the loop, the teacher's pass, calibration and verification, whatever holds the images.

In-memory uint8 splits with crop-flip augmentation are sliced and augmented per batch in the main process (the
small-data path: no workers needed). Image files (the lazy path), and timm's per-image augmentation, go through
DataLoader worker processes with pinned memory and prefetch, so decoding overlaps the models. A training image's
randomness derives from (seed, epoch, rank, position in the epoch's stream) alone, so a resumed run and a run
fed by the teacher-logit cache see the identical batches.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from ltcompress.data.batches import iterate, random_crop_flip, to_batch
from ltcompress.data.core import LTData, Pipeline, Split
from ltcompress.errors import DataError

WORKER_TIMEOUT_S = 300  # a worker silent this long is reported, never waited on forever
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass
class TrainBatch:
    x: torch.Tensor  # normalised float, channels_last, on the device (mixed when Mixup/CutMix is on)
    y: torch.Tensor
    y_mix: torch.Tensor | None = None  # the paired labels of a mixed batch
    lam: float = 1.0  # the share of `y` in a mixed batch


class SampleSet(torch.utils.data.Dataset[tuple["np.ndarray | None", int, "tuple[str, str] | None"]]):
    """One image at a time: decoded from its file (or taken from memory), transformed, as uint8 [C, H, W].
    `key` makes training transforms reproducible per position; an unreadable file comes back as an error."""

    def __init__(
        self,
        split: Split,
        order: np.ndarray,
        transform: Callable[[Image.Image], np.ndarray],
        key: tuple[int, ...] | None,
        offset: int = 0,
    ) -> None:
        self.split, self.order, self.transform, self.key, self.offset = split, order, transform, key, offset

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[np.ndarray | None, int, tuple[str, str] | None]:
        from ltcompress.data.transforms import seeded

        index = int(self.order[position])
        label = int(self.split.labels[index])
        try:
            with self._open(index) as image:
                if self.key is None:
                    return self.transform(image), label, None
                with seeded(*self.key, self.offset + position):
                    return self.transform(image), label, None
        except UNREADABLE as exc:
            where = self.split.files[index] if self.split.files else f"image {index}"
            return None, label, (where, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def _open(self, index: int) -> Image.Image:
        if self.split.images is None:
            image = Image.open(self.split.paths[index])
            try:
                image.load()  # decode now, so a truncated file fails here, inside the error handling
            except BaseException:
                image.close()
                raise
            return image
        arr = self.split.arrays[index]
        return Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))


Item = tuple[np.ndarray | None, int, tuple[str, str] | None]


def _collate(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    good = [(a, label) for a, label, _ in items if a is not None]  # an image is None exactly when it failed
    errors = [err for _, _, err in items if err is not None]
    x = torch.from_numpy(np.stack([a for a, _ in good])) if good else torch.empty(0, dtype=torch.uint8)
    return x, torch.tensor([label for _, label in good], dtype=torch.int64), errors


def _worker_init(_: int) -> None:
    """Workers leave Ctrl-C to the main process (which checkpoints) and die with it, even on SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def decoded(
    pipeline: Pipeline, skipped: list[str], dataset: SampleSet, batch: int, drop_last: bool, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """uint8 batches from worker processes; an unreadable image stops the run naming the file, or is skipped
    and counted in `skipped` with data.skip_corrupt."""
    workers = pipeline.workers
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=False,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=pipeline.prefetch if workers else None,
        timeout=WORKER_TIMEOUT_S if workers else 0,
    )
    iterator = iter(loader)
    try:
        while True:
            try:
                x, y, errors = next(iterator)
            except StopIteration:
                return
            except RuntimeError as exc:
                if "DataLoader" not in str(exc):
                    raise
                raise DataError(
                    f"a data-loading worker failed ({str(exc).splitlines()[0]}); it may have run out "
                    f"of memory: lower data.workers or data.prefetch"
                ) from None
            for where, reason in errors:
                if not pipeline.options.skip_corrupt:
                    raise DataError(
                        f"cannot read image {where}: {reason}. Fix or remove it, or pass --set "
                        f"data.skip_corrupt=true to skip (and count) unreadable images"
                    )
                if where not in skipped:
                    skipped.append(where)
            if len(y):
                yield x, y
    finally:
        del iterator  # shuts the workers down, on errors and Ctrl-C too


def eval_batches(
    data: LTData, split: Split, batch: int, device: torch.device, indices: np.ndarray | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Un-augmented, normalised batches of `split` (all of it, or `indices`) in order."""
    order = np.arange(len(split)) if indices is None else np.asarray(indices)
    if not split.lazy:
        for xb, yb in iterate(split, order, batch, drop_last=False):
            yield to_batch(xb, yb, data.spec, device)
        return
    from ltcompress.data.transforms import eval_transform

    dataset = SampleSet(split, order, eval_transform(data.spec), None)
    for x, y in decoded(data.pipeline, data.skipped, dataset, batch, False, device):
        yield normalise(x, y, data, device)


def train_batches(
    data: LTData,
    order: np.ndarray,
    batch: int,
    device: torch.device,
    *,
    key: tuple[int, ...],
    first_step: int,
    generator: torch.Generator,
    mixer: Any = None,
) -> Iterator[TrainBatch]:
    """The epoch's augmented training batches from step `first_step` on; `order` is this rank's stream
    (a whole number of batches), `key` (seed, epoch, rank) seeds per-image and per-batch randomness."""
    split, pipeline = data.train, data.pipeline
    if not split.lazy and pipeline.augment == "crop_flip":
        for step, (xb, yb) in enumerate(iterate(split, order[first_step * batch :], batch, True), first_step):
            x, y = to_batch(xb, yb, data.spec, device, augment=True, generator=generator)
            yield _mixed(x, y, mixer, (*key, step))
        return
    from ltcompress.data.transforms import eval_transform, train_transform

    timm = pipeline.augment == "timm"
    transform = train_transform(data.spec, pipeline.options) if timm else eval_transform(data.spec)
    dataset = SampleSet(split, order[first_step * batch :], transform, key if timm else None, first_step * batch)
    for step, (x, y) in enumerate(decoded(pipeline, data.skipped, dataset, batch, True, device), first_step):
        if not timm:
            x = random_crop_flip(x, pad=max(1, data.spec.size // 8), generator=generator)
        if len(y) > 1:  # a batch emptied by skipped images down to one would break BatchNorm
            yield _mixed(*normalise(x, y, data, device), mixer, (*key, step))


def _mixed(x: torch.Tensor, y: torch.Tensor, mixer: Any, key: tuple[int, ...]) -> TrainBatch:
    if mixer is None or not mixer.enabled:
        return TrainBatch(x, y)
    x, y_mix, lam = mixer(x, y, key)
    return TrainBatch(x, y, y_mix, lam)


def normalise(
    x: torch.Tensor, y: torch.Tensor, data: LTData, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N, C, H, W] -> normalised float channels_last on `device` (non-blocking from pinned memory)."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    mean = torch.tensor(data.spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.spec.std, device=device).view(1, -1, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last), y.to(device, non_blocking=True)
