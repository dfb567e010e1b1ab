"""Stage 1: long-tailed datasets, batches, samplers, class counts, shot groups.

Small data is held in memory as uint8 [N, C, H, W] at the run's input size, augmented and normalised per batch
(no worker processes needed); image folders too large for memory are decoded one image at a time in DataLoader
workers (data/loader.py). Normalisation is the student's pretrained weights' own, or estimated from the data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from ltcompress.config import DataConfig
from ltcompress.data.batches import iterate, random_crop_flip, to_batch
from ltcompress.data.core import (
    InputSpec,
    LTData,
    Split,
    counts_text,
    hold_out,
    longtail_counts,
    longtail_indices,
    shot_groups,
)
from ltcompress.data.loader import eval_batches, train_batches
from ltcompress.errors import UsageError
from ltcompress.registry import Registry

DATASETS: Registry[Callable[[DataConfig, Path], LTData]] = Registry("dataset", plugins="ltcompress.datasets")
DATASETS.register(
    "fmnist-lt",
    "ltcompress.data.fmnist:load_fmnist_lt",
    lazy=True,
    summary="Fashion-MNIST, long-tailed training subset, balanced official test split",
)
DATASETS.register(
    "cifar10-lt",
    "ltcompress.data.cifar:load_cifar10_lt",
    lazy=True,
    summary="CIFAR-10 python archive, long-tailed training subset, balanced test split",
)
DATASETS.register(
    "cifar100-lt",
    "ltcompress.data.cifar:load_cifar100_lt",
    lazy=True,
    summary="CIFAR-100 python archive, long-tailed training subset, balanced test split",
)
DATASETS.register(
    "imagefolder",
    "ltcompress.data.imagefolder:load_imagefolder",
    lazy=True,
    summary="your images: a folder per class, or ImageNet-LT-style list files",
)


def load(cfg: DataConfig, cache_root: Path, pretrained: Mapping[str, Any] | None = None) -> LTData:
    """The dataset, preprocessed the way the student's weights expect when it starts from pretrained ones
    (`pretrained`: their mean, std, crop_pct and interpolation), else with statistics of the data itself."""
    pre = dict(pretrained or {})
    normalize = cfg.normalize if cfg.normalize != "auto" else ("pretrained" if pre else "sample")
    if normalize == "pretrained" and not pre:
        raise UsageError(
            "data.normalize=pretrained needs a student that starts from pretrained weights "
            "(student.init pretrained, or weights timm knows); use data.normalize=sample"
        )
    cfg = dataclasses.replace(
        cfg,
        normalize=normalize,
        crop_pct=cfg.crop_pct or pre.get("crop_pct"),
        interpolation=cfg.interpolation or pre.get("interpolation"),
    )
    data = DATASETS.get(cfg.dataset)(cfg, cache_root)
    if normalize == "pretrained":
        mean, std = tuple(pre["mean"]), tuple(pre["std"])
        if data.spec.channels == 1:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        data = dataclasses.replace(data, spec=dataclasses.replace(data.spec, mean=mean, std=std))
    return data


__all__ = [
    "DATASETS",
    "InputSpec",
    "LTData",
    "Split",
    "counts_text",
    "eval_batches",
    "hold_out",
    "iterate",
    "load",
    "longtail_counts",
    "longtail_indices",
    "random_crop_flip",
    "shot_groups",
    "to_batch",
    "train_batches",
]
