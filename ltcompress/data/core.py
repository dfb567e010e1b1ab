"""What every dataset shares: the in-memory splits, long-tail profiles, shot groups, and the conversion of raw
images to the run's input (through the edge bundle's runtime: what is evaluated here is what runs on a device)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from PIL import Image

from ltcompress.config import DataConfig
from ltcompress.edge import runtime
from ltcompress.errors import DataError, UsageError


@dataclass(frozen=True)
class InputSpec:
    """One evaluation preprocessing for both models and the edge bundle. Convert to `source_mode`, then by
    `geometry`: ``pad`` resizes to `source_size` (bilinear) when the image differs and zero-pads to `size`
    (centred); ``crop`` is timm's evaluation transform: resize the shorter side to ``floor(size / crop_pct)``
    with `interpolation`, then centre-crop `size`. Finally a gray channel is repeated to `channels` and the
    image is normalised with mean/std."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_mode: str  # PIL mode: "L" or "RGB"
    source_size: int
    geometry: str = "pad"  # pad | crop
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def preprocess(self) -> dict[str, Any]:
        """The spec as the edge runtime reads it (`runtime.pixels`; the bundle's preprocess.json)."""
        return {
            "input_size": self.size,
            "channels": self.channels,
            "source_mode": self.source_mode,
            "source_size": self.source_size,
            "geometry": self.geometry,
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class Split:
    """A split's labels and its images: decoded in memory (uint8 [N, C, H, W] at the run's input size), or
    image files decoded one at a time when a batch needs them (`files`, the lazy path)."""

    images: np.ndarray | None  # uint8 [N, C, H, W] at the run's input size; None on the lazy path
    labels: np.ndarray  # int64 [N]
    files: tuple[str, ...] | None = None  # image paths, in label order with `labels`, when lazy

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def lazy(self) -> bool:
        return self.images is None

    @property
    def arrays(self) -> np.ndarray:
        """The decoded images of an in-memory split."""
        if self.images is None:
            raise RuntimeError("this split is lazy: its images are files (Split.paths)")
        return self.images

    @property
    def paths(self) -> tuple[str, ...]:
        """The image files of a lazy split."""
        if self.files is None:
            raise RuntimeError("this split is in memory: its images are arrays (Split.arrays)")
        return self.files


@dataclass(frozen=True)
class Pipeline:
    """How batches are made from the splits: the training augmentation (`crop_flip`, vectorised on uint8
    batches, or `timm`, per image in worker processes), the worker count, and the data options the timm
    transforms, random erasing and Mixup/CutMix read."""

    augment: str = "crop_flip"
    workers: int = 0
    prefetch: int = 2
    # arrays handed to LTData directly (no dataset read them): the augmentation options' own defaults
    options: DataConfig = field(default_factory=lambda: DataConfig(dataset="arrays", input_size=None))
    in_memory_reason: str = "array-backed dataset"


@dataclass(frozen=True)
class LTData:
    train: Split
    test: Split
    class_counts: np.ndarray  # training images per class; feeds methods, samplers and shot groups
    class_names: tuple[str, ...]
    spec: InputSpec
    fingerprint: str
    skipped: list[str] = field(default_factory=list)  # unreadable images skipped (only with data.skip_corrupt)
    pipeline: Pipeline = field(default_factory=Pipeline)
    manifest: tuple[str, ...] = field(default=())  # file-backed data: one "label size mtime path" line per file
    excluded_test_classes: tuple[str, ...] = ()  # test class folders left out (data.unknown_test_classes=exclude)
    val: Split | None = None  # held-out images the INT8 repair decides on (never trained on, never the test set)
    val_source: str = ""  # where `val` comes from, as the report states it
    held_out: tuple[float, int] | None = None  # (share, seed) when `val` was sliced from the training set

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_memory(self) -> bool:
        return not (self.train.lazy or self.test.lazy)


def take(split: Split, idx: np.ndarray) -> Split:
    """The images of `split` at `idx` (in memory or lazy), in that order."""
    images = None if split.images is None else split.images[idx]
    files = None if split.files is None else tuple(split.files[i] for i in idx)
    return Split(images, split.labels[idx], files)


def hold_out(data: LTData, share: float, seed: int) -> LTData:
    """`data` with a stratified slice of its training set set aside as `val`: round(share * n) images of each
    class of n images (at least one when n >= 2, none from a class of one image, which training needs). The
    class counts, shot groups and fingerprint then describe what is left for training."""
    rng = np.random.default_rng([seed, 11])
    labels = data.train.labels
    held = []
    for c in range(data.num_classes):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(share * len(idx))) if len(idx) >= 2 else 0
        held.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(len(labels)), val_idx)
    h = hashlib.sha256(data.fingerprint.encode())
    h.update(f"held out {share} seed {seed}".encode() + val_idx.tobytes())
    source = (
        f"stratified slice of the training set set aside before training: {share:g} of each class "
        f"(seed {seed}), {len(val_idx)} images"
    )
    return dataclasses.replace(
        data,
        train=take(data.train, keep),
        val=take(data.train, val_idx),
        class_counts=np.bincount(labels[keep], minlength=data.num_classes),
        fingerprint=h.hexdigest(),
        val_source=source,
        held_out=(share, seed),
    )


def counts_text(counts: np.ndarray) -> str:
    """Class counts for the log: all of them when few, else a summary (1,000 classes would flood it)."""
    if len(counts) <= 20:
        return str(counts.tolist())
    return f"{len(counts)} classes, {int(counts.max())} down to {int(counts.min())} images"


def longtail_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Images per class, class 0 largest (LDAM-DRW): exp ``int(n_max * IF**(-i/(C-1)))``; step: the first half
    of the classes n_max, the rest n_max / IF."""
    if profile == "exp":
        return [int(n_max * imbalance ** (-i / (num_classes - 1))) for i in range(num_classes)]
    if profile == "step":
        half = num_classes // 2
        return [n_max if i < half else int(n_max / imbalance) for i in range(num_classes)]
    raise ValueError(f"unknown profile {profile!r}")


def longtail_indices(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """The first counts[c] indices of each class after a seeded shuffle, in class order."""
    rng = np.random.default_rng(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        if len(idx) < n:
            raise DataError(
                f"class {c} has only {len(idx)} training images, the profile asks for {n}: lower data.n_max"
            )
        keep.append(idx[:n])
    return np.concatenate(keep)


def balanced_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        out.append(np.sort(idx[:per_class]))
    return np.concatenate(out)


def shot_groups(class_counts: np.ndarray, many: int = 100, few: int = 20) -> dict[str, list[int]]:
    """Many: > many images, Few: < few, Medium: the rest (classifier-balancing ``shot_acc``)."""
    counts = np.asarray(class_counts)
    return {
        "many": [int(c) for c in np.flatnonzero(counts > many)],
        "medium": [int(c) for c in np.flatnonzero((counts >= few) & (counts <= many))],
        "few": [int(c) for c in np.flatnonzero(counts < few)],
    }


def convert_image(image: Image.Image, mode: str, source_size: int, size: int, channels: int) -> np.ndarray:
    """One PIL image -> uint8 [channels, size, size] in the pad geometry: the bundle runtime's own `pixels`."""
    if size < source_size:
        raise DataError(f"data.input_size {size} is smaller than the {source_size}x{source_size} images")
    pre = {"source_mode": mode, "source_size": source_size, "input_size": size, "channels": channels}
    pixels: np.ndarray = runtime.pixels(image, pre)
    return pixels


def pad_and_repeat(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [N, c, h, w] -> [N, channels, size, size]: the runtime's pad geometry on a whole batch."""
    h, w = images.shape[-2:]
    if size < h or size < w:
        raise DataError(f"data.input_size {size} is smaller than the {h}x{w} images")
    padded: np.ndarray = runtime.repeat_gray(runtime.pad_centre(images, size), channels)
    return padded


def source_mode(native_channels: int, channels: int) -> str:
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 or 3, got {channels}")
    return "L" if native_channels == 1 or channels == 1 else "RGB"


def from_arrays(images: np.ndarray, mode: str, source_size: int, size: int, channels: int) -> np.ndarray:
    """Decoded images (uint8 [N, H, W] gray or [N, H, W, 3] RGB) -> the run's input, through PIL when a
    conversion or resize is needed so training sees what the bundle runtime computes."""
    native = "L" if images.ndim == 3 else "RGB"
    if native == mode and images.shape[1] == images.shape[2] == source_size:
        arr = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return pad_and_repeat(arr, size, channels)
    return np.stack([convert_image(Image.fromarray(img), mode, source_size, size, channels) for img in images])


EXACT_STATS_BYTES = 512 * 2**20  # in-memory splits up to this float64 size get exact statistics, as before


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 [N, C, H, W] images scaled to [0, 1] (exact; small splits only)."""
    pixels = images.astype(np.float64) / 255.0
    return (tuple(float(v) for v in pixels.mean(axis=(0, 2, 3))), tuple(float(v) for v in pixels.std(axis=(0, 2, 3))))


def streamed_stats(images: Iterable[np.ndarray]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std from uint8 [C, H, W] images one at a time: integer sums, no copy of the data."""
    total = squares = np.zeros(1, dtype=np.int64)  # broadcasts to the channel count at the first image
    count = 0
    for img in images:
        flat = img.reshape(img.shape[0], -1).astype(np.int64)
        s, q = flat.sum(axis=1), (flat * flat).sum(axis=1)
        total, squares = total + s, squares + q
        count += flat.shape[1]
    if not count:
        raise DataError("no readable image to compute the normalisation statistics from")
    mean = total / (255.0 * count)
    var = np.maximum(squares / (255.0**2 * count) - mean**2, 0.0)
    return tuple(float(v) for v in mean), tuple(float(v) for v in np.sqrt(var))


def sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    """A bounded, seeded sample of image indices for the statistics."""
    return np.sort(np.random.default_rng([seed, 7]).choice(n, size=min(n, size), replace=False))


def fingerprint(name: str, splits: Iterable[Split], manifest: Iterable[str] = ()) -> str:
    """In-memory splits: their pixels and labels; file-backed ones: the manifest (paths, sizes, mtimes, labels)."""
    h = hashlib.sha256(name.encode())
    for split in splits:
        if split.images is not None:
            h.update(split.images.tobytes())
            h.update(split.labels.tobytes())
    for line in manifest:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def check_splits(name: str, train: Split, test: Split, class_names: tuple[str, ...]) -> np.ndarray:
    """Checks that hold for every dataset (labels in range, every class trained, a test split); the class counts."""
    num_classes = len(class_names)
    for split_name, split in (("training", train), ("test", test)):
        if len(split) == 0:
            raise DataError(f"{name}: the {split_name} split is empty")
        if split.labels.min() < 0 or split.labels.max() >= num_classes:
            raise DataError(
                f"{name}: a {split_name} label is out of range 0..{num_classes - 1} "
                f"(found {int(split.labels.min())}..{int(split.labels.max())})"
            )
    counts = np.bincount(train.labels, minlength=num_classes)
    if (counts == 0).any():
        missing = [class_names[c] for c in np.flatnonzero(counts == 0)]
        raise DataError(f"{name}: no training image for class {', '.join(missing[:5])}")
    return counts


def assemble(
    name: str,
    cfg: DataConfig,
    train: Split,
    test: Split,
    class_names: tuple[str, ...],
    mode: str,
    source_size: int,
    skipped: list[str] | None = None,
) -> LTData:
    """An in-memory dataset (pad geometry, crop-flip augmentation unless data.augment says timm)."""
    counts = check_splits(name, train, test, class_names)
    mean, std = memory_stats(train.arrays, cfg)
    spec = InputSpec(cfg.size, train.arrays.shape[1], mean, std, mode, source_size)
    augment = "crop_flip" if cfg.augment == "auto" else cfg.augment
    pipeline = Pipeline(augment, resolve_workers(cfg), cfg.prefetch, cfg)
    return LTData(train, test, counts, class_names, spec, fingerprint(name, (train, test)), skipped or [], pipeline)


def memory_stats(images: np.ndarray, cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact statistics for a small in-memory split (as they always were), a seeded sample for a large one;
    none when the pretrained model's own mean/std will be used (data.load puts them in)."""
    if cfg.normalize == "pretrained":
        return (0.0,) * images.shape[1], (1.0,) * images.shape[1]
    if images.size * 8 <= EXACT_STATS_BYTES:
        return channel_stats(images)
    return streamed_stats(images[i] for i in sample_indices(len(images), cfg.stats_sample, cfg.seed))


def resolve_workers(cfg: DataConfig) -> int:
    """data.workers, else one fewer than the CPUs this process may use (at most 8): decoding overlaps training."""
    if cfg.workers is not None:
        return cfg.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def subset(
    name: str,
    cfg: DataConfig,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: tuple[str, ...],
    native_size: int,
    resize: bool,
) -> LTData:
    """A balanced source dataset made long-tailed by `cfg`'s profile (the test split stays balanced)."""
    if cfg.n_max is None or cfg.imbalance is None:
        raise UsageError(
            f"dataset {name} makes a long-tailed subset: its recipe must set data.n_max and data.imbalance "
            f"(see presets/{name}.yaml)"
        )
    counts = longtail_counts(cfg.n_max, len(class_names), cfg.imbalance, cfg.profile)
    if min(counts) < 1:
        raise DataError(
            f"the long-tail profile leaves a class with no image (counts {counts}): raise data.n_max "
            f"or lower data.imbalance"
        )
    train_idx = longtail_indices(train_labels, counts, cfg.seed)
    test_idx = (
        np.arange(len(test_labels))
        if cfg.test_per_class is None
        else balanced_indices(test_labels, cfg.test_per_class, cfg.seed)
    )
    mode = source_mode(1 if train_images.ndim == 3 else 3, cfg.channels)
    source_size = cfg.size if resize else native_size
    train = Split(
        from_arrays(train_images[train_idx], mode, source_size, cfg.size, cfg.channels),
        train_labels[train_idx].astype(np.int64),
    )
    test = Split(
        from_arrays(test_images[test_idx], mode, source_size, cfg.size, cfg.channels),
        test_labels[test_idx].astype(np.int64),
    )
    return assemble(name, cfg, train, test, class_names, mode, source_size)
