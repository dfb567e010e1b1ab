"""Stage 1: long-tailed datasets held in memory as uint8 tensors, batches, samplers, class counts, shot groups.

Images stay uint8 [N, C, H, W] at the run's input size; augmentation and normalisation run per batch, so the
data pipeline costs almost nothing next to the models and needs no worker processes on a 2-core machine.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ltcompress.config import DataConfig
from ltcompress.data.batches import iterate, random_crop_flip, to_batch
from ltcompress.data.core import InputSpec, LTData, Split, longtail_counts, longtail_indices, shot_groups
from ltcompress.registry import Registry

DATASETS: Registry[Callable[[DataConfig, Path], LTData]] = Registry("dataset")
DATASETS.register("fmnist-lt", "ltcompress.data.fmnist:load_fmnist_lt", lazy=True,
                  summary="Fashion-MNIST, long-tailed training subset, balanced official test split")
DATASETS.register("cifar10-lt", "ltcompress.data.cifar:load_cifar10_lt", lazy=True,
                  summary="CIFAR-10 python archive, long-tailed training subset, balanced test split")
DATASETS.register("cifar100-lt", "ltcompress.data.cifar:load_cifar100_lt", lazy=True,
                  summary="CIFAR-100 python archive, long-tailed training subset, balanced test split")
DATASETS.register("imagefolder", "ltcompress.data.imagefolder:load_imagefolder", lazy=True,
                  summary="your images: a folder per class, or ImageNet-LT-style list files")


def load(cfg: DataConfig, cache_root: Path) -> LTData:
    return DATASETS.get(cfg.dataset)(cfg, cache_root)


__all__ = ["DATASETS", "InputSpec", "LTData", "Split", "iterate", "load", "longtail_counts", "longtail_indices",
           "random_crop_flip", "shot_groups", "to_batch"]
