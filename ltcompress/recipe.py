"""Fitting a recipe to the data, before anything is loaded at size: what the recipe leaves to the images
(``data.input_size: auto``, ``data.geometry: auto``, ``data.crop_scale``) is decided from the file headers of a
seeded sample of the training images and the student's pretrained configuration. Each choice is logged and
recorded with the measurement behind it (config.yaml's ``fitted``, report.json, ``--dry-run``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltcompress.config import CompressConfig
from ltcompress.errors import DataError

HEADER_SAMPLE = 512  # image headers read to measure a folder (seconds even on a network disk)
STRIDE = 32  # the students' total downsampling: input sizes are multiples of it
SMALLEST_INPUT = 32
# RandomResizedCrop's smallest area share by input size: timm's 0.08 is tuned for 224 px photos; a small input
# cropped to 8 % of its area keeps a few pixels of the object, so smaller inputs get gentler crops
CROP_SCALES = ((192, 0.08), (96, 0.25), (0, 0.5))


@dataclass(frozen=True)
class ImageSizes:
    """Shorter sides (px) of a seeded sample of training images, read from their headers."""

    median: int
    smallest: int
    largest: int
    sampled: int
    total: int
    unreadable: int

    def text(self) -> str:
        spread = f"{self.smallest}-{self.largest} px" if self.smallest != self.largest else f"all {self.median} px"
        unread = f", {self.unreadable} unreadable" if self.unreadable else ""
        return (
            f"median shorter side {self.median} px over {self.sampled} of {self.total} training images' headers "
            f"({spread}{unread})"
        )


def measure(files: list[Path], seed: int, sample: int = HEADER_SAMPLE) -> ImageSizes:
    """Image sizes from file headers only (PIL reads no pixels until asked): a bounded, seeded sample."""
    from PIL import Image

    rng = np.random.default_rng([seed, 23])
    picked = sorted(rng.choice(len(files), size=min(sample, len(files)), replace=False)) if files else []
    sides, unreadable = [], 0
    for i in picked:
        try:
            with Image.open(files[i]) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, SyntaxError):
            unreadable += 1
    if not sides:
        raise DataError(f"none of the {len(picked)} sampled training images could be read (e.g. {files[picked[0]]})")
    arr = np.asarray(sides)
    return ImageSizes(int(np.median(arr)), int(arr.min()), int(arr.max()), len(sides), len(files), unreadable)


def pretrained_size(arch: str) -> tuple[int, str]:
    """The input size the student's pretrained weights were trained at (timm's pretrained_cfg), and where from."""
    from ltcompress import models

    size = models.pretrained_input_size(arch)
    if size is None:
        return 224, f"{arch} has no pretrained configuration; 224 px, timm's usual"
    return size, f"{arch}'s pretrained input size {size} px"


def fit_size(sizes: ImageSizes, cap: int, cap_why: str) -> tuple[int, str]:
    """The student's pretrained size, never more than the images carry: the median shorter side rounded down to
    a multiple of the stride, and at least the smallest input (small images are padded up to it)."""
    if sizes.median >= cap:
        return cap, f"{cap_why}; the images are larger ({sizes.text()})"
    size = max(SMALLEST_INPUT, sizes.median // STRIDE * STRIDE)
    return size, (
        f"the images carry less than {cap_why}: {sizes.text()}, "
        f"{'padded up' if size > sizes.median else 'rounded down'} to a multiple of {STRIDE}"
    )


def crop_scale_for(size: int) -> float:
    """RandomResizedCrop's smallest area share for an input of `size` px (CROP_SCALES)."""
    return next(scale for floor, scale in CROP_SCALES if size >= floor)


def fits_folders(dataset: str) -> bool:
    """Whether the dataset reads image files whose headers a recipe can be fitted to (it reads data.geometry)."""
    from ltcompress.data import DATASETS

    return "geometry" in DATASETS.entry(dataset).meta.get("reads", ())


def fit(cfg: CompressConfig, student_arch: str) -> CompressConfig:
    """`cfg` with its `auto` data settings decided and each decision in `cfg.fitted`; unchanged when the recipe
    leaves nothing to the data."""
    d = cfg.data
    needs = d.input_size is None or d.geometry == "auto" or (d.crop_scale is None and d.augment in ("auto", "timm"))
    if not (needs and fits_folders(d.dataset)):
        _ = d.size  # a dataset whose images are not files needs a number: exit 2 here, before any work
        return cfg
    from ltcompress.data.imagefolder import training_files

    sizes = measure(training_files(d), d.seed)
    choices: list[str] = []
    size = d.input_size
    if size is None:
        size, why = fit_size(sizes, *pretrained_size(student_arch))
        choices.append(f"data.input_size={size}: {why}")
    geometry, source = d.geometry, d.source_size
    if geometry == "auto":
        geometry = "pad" if sizes.median < size else "crop"
        if geometry == "pad":
            source = source or sizes.median
            why = f"the median image ({sizes.median} px) is smaller than the input: resized to {source} px, zero-padded"
        else:
            why = "timm's evaluation transform: shorter side to size / crop_pct, centre crop"
        choices.append(f"data.geometry={geometry}: {why}")
    scale = d.crop_scale
    timm_augment = d.augment == "timm" or (d.augment == "auto" and geometry == "crop")
    if scale is None and timm_augment:
        scale = crop_scale_for(size)
        choices.append(f"data.crop_scale={scale}: RandomResizedCrop's smallest area share at {size} px")
    if d.augment == "auto":
        aug = "crop_flip: pad-crop + flip on uint8 batches" if geometry == "pad" else "timm: RandomResizedCrop + flip"
        choices.append(f"data.augment={aug} (by geometry)")
    data = dataclasses.replace(d, input_size=size, geometry=geometry, source_size=source, crop_scale=scale)
    return dataclasses.replace(cfg, data=data, fitted=cfg.fitted + tuple(choices))


def fit_device(cfg: CompressConfig, device: torch.device) -> CompressConfig:
    """On a GPU, recipes that name a `gpu_batch_size` train with it, their learning rate scaled linearly; on a
    CPU they keep the batch they state (a CPU gains nothing from larger batches)."""
    if device.type != "cuda":
        return cfg
    choices, sections = [], {}
    for model in ("teacher", "student"):
        section = getattr(cfg, model)
        for name in ("train", "finetune"):
            t = getattr(section, name)
            if t.gpu_batch_size and t.gpu_batch_size != t.batch_size:
                lr = t.lr * t.gpu_batch_size / t.batch_size
                choices.append(
                    f"{model}.{name}.batch_size={t.gpu_batch_size}, lr={lr:g}: on {device}, the recipe's "
                    f"gpu_batch_size, the learning rate scaled linearly from {t.lr:g} at {t.batch_size}"
                )
                section = dataclasses.replace(
                    section, **{name: dataclasses.replace(t, batch_size=t.gpu_batch_size, lr=lr)}
                )
        sections[model] = section
    return dataclasses.replace(cfg, **sections, fitted=cfg.fitted + tuple(choices))


def describe(cfg: CompressConfig) -> str:
    """One line: which recipe runs and why, as the log, report.json and --dry-run say it."""
    return f"recipe {cfg.preset} ({cfg.recipe_reason})" if cfg.recipe_reason else f"recipe {cfg.preset}"
