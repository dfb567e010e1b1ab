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
# Each dataset names its recipe (presets/<recipe>.yaml, every setting's default) and the dataset-specific data
# keys it reads; a key another dataset reads is an error with this one rather than silently ignored.
SUBSET_KEYS = ("n_max", "imbalance", "profile", "test_per_class", "resize")
FOLDER_KEYS = (
    "train_list",
    "test_list",
    "class_names_file",
    "val_list",
    "confine_paths",
    "unknown_test_classes",
    "geometry",
    "source_size",
)
DATASETS.register(
    "fmnist-lt",
    "ltcompress.data.fmnist:load_fmnist_lt",
    lazy=True,
    summary="Fashion-MNIST, long-tailed training subset, balanced official test split",
    recipe="fmnist-lt",
    reads=SUBSET_KEYS,
)
DATASETS.register(
    "cifar10-lt",
    "ltcompress.data.cifar:load_cifar10_lt",
    lazy=True,
    summary="CIFAR-10 python archive, long-tailed training subset, balanced test split",
    recipe="cifar10-lt",
    reads=SUBSET_KEYS,
)
DATASETS.register(
    "cifar100-lt",
    "ltcompress.data.cifar:load_cifar100_lt",
    lazy=True,
    summary="CIFAR-100 python archive, long-tailed training subset, balanced test split",
    recipe="cifar100-lt",
    reads=SUBSET_KEYS,
)
DATASETS.register(
    "imagefolder",
    "ltcompress.data.imagefolder:load_imagefolder",
    lazy=True,
    summary="your images: a folder per class, or ImageNet-LT-style list files",
    recipe="photos",
    reads=FOLDER_KEYS,
)


def recipe_of(dataset: str) -> str:
    """The recipe (preset name) a dataset runs with when no --preset is given; a dataset without one (a plugin
    that names none) is exit 2 asking for --preset, never another dataset's recipe."""
    recipe = DATASETS.entry(dataset).meta.get("recipe")
    if not recipe:
        raise UsageError(
            f"dataset {dataset!r} names no recipe; pass --preset FILE.yaml with its settings (see list-presets)"
        )
    return str(recipe)


def recipe_table() -> list[dict[str, Any]]:
    """Every built-in recipe: its name, the dataset it runs on, the datasets that run it by default
    (``recipe_of``) and its description (``ltcompress list-presets``)."""
    from ltcompress.config import list_presets, load_preset

    users: dict[str, list[str]] = {}
    for name in DATASETS.names():
        users.setdefault(str(DATASETS.entry(name).meta.get("recipe")), []).append(name)
    rows = []
    for name in list_presets():
        preset = load_preset(name)
        on = (preset.get("data") or {}).get("dataset")
        rows.append(
            {
                "name": name,
                "dataset": on,
                "recipe_of": users.get(name, []),
                "description": str(preset.get("description", "")),
            }
        )
    return rows


def dataset_keys() -> dict[str, tuple[str, ...]]:
    """Each dataset-specific data key -> the datasets that read it (datasets that declare what they read)."""
    readers: dict[str, list[str]] = {}
    for name in DATASETS.names():
        for key in DATASETS.entry(name).meta.get("reads", ()):
            readers.setdefault(key, []).append(name)
    return {k: tuple(v) for k, v in readers.items()}


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
    "dataset_keys",
    "recipe_of",
    "recipe_table",
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
