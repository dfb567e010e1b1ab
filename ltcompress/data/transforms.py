"""The transforms for real photos: evaluation is the edge bundle's own preprocessing (`runtime.pixels`, which
repeats timm's evaluation transform without torch and is tested against it), so what a model is measured on is
what ships; training augmentation per image, and random erasing and Mixup/CutMix per batch, come from timm.

Augmentation randomness comes from timm, which draws from python's `random`, numpy's and torch's global
generators; `seeded` runs each draw under a key (seed, epoch, rank, position ...), so an augmented sample
depends only on its key (exact resume) and the caller's own random streams are left as they were.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image

from ltcompress.config import DataConfig
from ltcompress.data.core import InputSpec
from ltcompress.edge import runtime
from ltcompress.errors import UsageError

# the one TrivialAugment spelling timm 1.0 lacks: one op per image, always applied, magnitude uniform in [0, 10]
AUTO_AUGMENT_ALIASES = {"trivialaugment": "rand-n1-m10-mstd101-inc1-p1.0"}


def eval_transform(spec: InputSpec) -> Callable[[Image.Image], np.ndarray]:
    """PIL image (any mode) -> uint8 [channels, size, size]: the bundle runtime's own `pixels`, so what a model
    is evaluated on is what ships."""
    if spec.geometry not in ("pad", "crop"):
        raise UsageError(f"unknown input geometry {spec.geometry!r}: pad or crop")
    return _Eval(spec.preprocess())


def train_transform(spec: InputSpec, cfg: DataConfig) -> Callable[[Image.Image], np.ndarray]:
    """PIL image (any mode) -> uint8 [channels, size, size], randomly augmented by timm's ImageNet recipe:
    RandomResizedCrop (smallest area share cfg.crop_scale, else 0.08) + flip, then cfg.auto_augment (RandAugment,
    AugMix, AutoAugment, TrivialAugment) or
    colour jitter. Random erasing and Mixup/CutMix act on the normalised batch instead (`BatchAugment`).
    Not seeded here: run each call inside `seeded(...)`."""
    from timm.data.transforms_factory import create_transform

    aa = AUTO_AUGMENT_ALIASES.get(cfg.auto_augment or "", cfg.auto_augment) or None
    # the fill colour of geometric ops needs one value per band of the PIL image
    rgb = spec.source_mode == "RGB"
    mean = tuple(spec.mean) if rgb else (float(np.mean(spec.mean)),)
    std = tuple(spec.std) if rgb else (float(np.mean(spec.std)),)
    try:
        tf = create_transform(
            spec.size,
            is_training=True,
            use_prefetcher=True,
            auto_augment=aa,
            color_jitter=cfg.color_jitter,
            interpolation=spec.interpolation,
            mean=mean,
            std=std,
            scale=(cfg.crop_scale, 1.0) if cfg.crop_scale else None,
        )
    except (AssertionError, ValueError, KeyError) as exc:
        raise UsageError(
            f"data.auto_augment {cfg.auto_augment!r} is not a timm auto-augment string "
            f"(e.g. rand-m9-mstd0.5, trivialaugment, augmix-m5-w3, original): {exc}"
        ) from None
    return _Timm(tf, spec.source_mode, spec.channels)


class _Eval:
    """`runtime.pixels` bound to a run's preprocessing. A class, not a closure: DataLoader workers pickle it."""

    def __init__(self, pre: dict[str, Any]) -> None:
        self.pre = pre

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels: np.ndarray = runtime.pixels(image, self.pre)
        return pixels


class _Timm:
    """A timm prefetcher transform (PIL -> uint8 CHW tensor) after the shared colour rule, as numpy with a
    gray channel repeated to `channels`."""

    def __init__(self, tf: Callable[[Image.Image], torch.Tensor], mode: str, channels: int) -> None:
        self.tf, self.mode, self.channels = tf, mode, channels

    def __call__(self, image: Image.Image) -> np.ndarray:
        out = self.tf(runtime.to_mode(image, self.mode))
        arr = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        gray: np.ndarray = runtime.repeat_gray(arr.astype(np.uint8, copy=False), self.channels)
        return gray


def key_seed(*key: int) -> int:
    """A 64-bit seed from an integer key: neighbouring keys give unrelated streams."""
    digest = hashlib.sha256(",".join(str(int(k)) for k in key).encode()).digest()
    return int.from_bytes(digest[:8], "little")


@contextlib.contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Run the block with python `random`, numpy's global generator and torch's CPU generator (and every CUDA
    generator, when CUDA is initialised) seeded from `key`, and restore their states afterwards."""
    seed = key_seed(*key)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it queues a lazy CUDA seeding
        if cuda:
            torch.cuda.manual_seed_all(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class BatchAugment:
    """timm's random erasing then Mixup/CutMix on a normalised float batch, seeded per batch by a key.

    Mixing pairs sample i with sample n-1-i (timm's ``x.flip(0)``) and returns the paired labels: the losses
    take hard labels, so the loop computes ``lam * loss(y) + (1 - lam) * loss(y_b)``. An odd batch is mixed
    too (timm's `Mixup.__call__` asserts an even one; `_mix_batch` does not need it): its middle sample is
    paired with itself, so it stays unmixed and its loss is plain ``loss(y)``.
    """

    def __init__(self, cfg: DataConfig, num_classes: int, device: torch.device | str | None = None) -> None:
        from timm.data.mixup import Mixup
        from timm.data.random_erasing import RandomErasing

        self.erase = (
            RandomErasing(probability=cfg.re_prob, mode="pixel", device=str(device or "cpu"))
            if cfg.re_prob > 0
            else None
        )
        mixing = (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mix_prob > 0
        self.mix = (
            Mixup(
                mixup_alpha=cfg.mixup,
                cutmix_alpha=cfg.cutmix,
                prob=cfg.mix_prob,
                mode="batch",
                label_smoothing=0.0,
                num_classes=num_classes,
            )
            if mixing
            else None
        )

    @property
    def enabled(self) -> bool:
        return self.erase is not None or self.mix is not None

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, key: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """(x, y) -> (x augmented in place, y_b or None when the batch was not mixed, lam)."""
        if not self.enabled:
            return x, None, 1.0
        with seeded(*key), torch.no_grad():
            if self.erase is not None:
                self.erase.device = x.device
                self.erase(x)
            lam = float(self.mix._mix_batch(x)) if self.mix is not None else 1.0
        return x, (y.flip(0) if lam < 1.0 else None), lam
