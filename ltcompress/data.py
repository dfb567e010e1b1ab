"""Stage 1: long-tailed datasets held in memory as uint8 tensors, batch augmentation, class counts, shot groups.

Images stay uint8 [N, C, H, W] at the run's input size; augmentation and normalisation run per batch, so the
data pipeline costs almost nothing next to the models and needs no worker processes on a 2-core machine.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ltcompress.config import DataConfig
from ltcompress.errors import DataError
from ltcompress.registry import Registry

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
GET_FMNIST = ("sudo apt-get install -y dataset-fashion-mnist (Debian/Ubuntu), or download the four "
              "*-ubyte.gz files of Fashion-MNIST into a folder and pass --data-dir FOLDER")


@dataclass(frozen=True)
class InputSpec:
    """What one preprocessing for both models and the edge bundle needs to know."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_mode: str  # PIL mode of the raw images ("L" for gray)
    source_size: int  # raw image side before padding to `size`


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [N, C, H, W] at the run's input size
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class LTData:
    train: Split
    test: Split
    class_counts: np.ndarray  # training images per class; feeds methods, samplers and shot groups
    class_names: tuple[str, ...]
    spec: InputSpec
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ---------------------------------------------------------------- long-tail profiles (LDAM-DRW)
def longtail_counts(n_max: int, num_classes: int, imbalance: float, profile: str = "exp") -> list[int]:
    """Images per class, class 0 largest: exp ``int(n_max * IF**(-i/(C-1)))``; step: half n_max, half n_max/IF."""
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
            raise DataError(f"class {c} has only {len(idx)} training images, the profile asks for {n}: "
                            f"lower data.n_max")
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


# ---------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path, kind: str) -> np.ndarray:
    """Parse an IDX file (gzip or raw); DataError naming the file when it is not what it claims."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}. Re-download it ({GET_FMNIST})") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    ndim = {"images": 3, "labels": 1}[kind]
    if magic != 0x0800 + ndim:
        raise DataError(f"{path} is not an IDX {kind} file (magic {magic:#x}); re-download it ({GET_FMNIST})")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) != offset + int(np.prod(dims)):
        raise DataError(f"{path} is truncated ({len(raw)} bytes for shape {dims}); re-download it ({GET_FMNIST})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _fmnist_files(folder: Path) -> dict[str, Path] | None:
    """The four files in `folder` (or torchvision's FashionMNIST/raw below it), gz or not; None if incomplete."""
    for base in (folder, folder / "FashionMNIST" / "raw", folder / "fashion-mnist"):
        found = {}
        for key, stem in FMNIST_FILES.items():
            for candidate in (base / f"{stem}.gz", base / stem):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FMNIST_FILES):
            return found
    return None


def _download_fmnist(root: Path) -> dict[str, Path] | None:
    """torchvision's download when the network allows; None (quietly) when it does not."""
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception:  # no network, blocked host, partial download: the caller says how to get the data
        return None
    return _fmnist_files(root)


def locate_fmnist(data_dir: str | None, cache_root: Path, allow_download: bool = True) -> dict[str, Path]:
    """DESIGN.md's search order; an explicit folder that lacks the files stops at once (exit 3)."""
    explicit = [("--data-dir", data_dir), ("$LTCOMPRESS_DATA", os.environ.get("LTCOMPRESS_DATA"))]
    for label, value in explicit:
        if value:
            files = _fmnist_files(Path(value).expanduser())
            if files is None:
                raise DataError(f"{label} {value} does not hold the Fashion-MNIST files "
                                f"({', '.join(s + '.gz' for s in FMNIST_FILES.values())}); {GET_FMNIST}")
            return files
    files = _fmnist_files(DEBIAN_FMNIST)
    if files is None and allow_download and os.environ.get("LTCOMPRESS_OFFLINE") != "1":
        files = _download_fmnist(cache_root / "data")
    if files is None:
        raise DataError(f"Fashion-MNIST not found (looked in {DEBIAN_FMNIST}, download failed). Get it: {GET_FMNIST}")
    return files


def _to_input(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """[N, H, W] gray uint8 -> [N, channels, size, size]: zero-pad to size (28 -> 32), repeat the channel."""
    n, h, w = images.shape
    if size < h or size < w:
        raise DataError(f"data.input_size {size} is smaller than the {h}x{w} images")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size), dtype=np.uint8)
    out[:, top:top + h, left:left + w] = images
    return np.ascontiguousarray(np.repeat(out[:, None], channels, axis=1))


def load_fmnist_lt(cfg: DataConfig, cache_root: Path) -> LTData:
    files = locate_fmnist(cfg.data_dir, cache_root)
    arrays = {key: _read_idx(path, key.split("_")[1]) for key, path in files.items()}
    train_y, test_y = arrays["train_labels"].astype(np.int64), arrays["test_labels"].astype(np.int64)
    if len(arrays["train_images"]) != len(train_y) or len(arrays["test_images"]) != len(test_y):
        raise DataError(f"Fashion-MNIST images and labels differ in length in {files['train_images'].parent}")
    num_classes = len(FMNIST_CLASSES)
    if train_y.max(initial=0) >= num_classes or test_y.max(initial=0) >= num_classes:
        raise DataError(f"Fashion-MNIST labels out of range 0..{num_classes - 1} in {files['train_labels']}")
    counts = longtail_counts(cfg.n_max, num_classes, cfg.imbalance, cfg.profile)
    if min(counts) < 1:
        raise DataError(f"the long-tail profile leaves a class with no image (counts {counts}): "
                        f"raise data.n_max or lower data.imbalance")
    train_idx = longtail_indices(train_y, counts, cfg.seed)
    test_idx = (np.arange(len(test_y)) if cfg.test_per_class is None
                else balanced_indices(test_y, cfg.test_per_class, cfg.seed))
    channels = 3
    train = Split(_to_input(arrays["train_images"][train_idx], cfg.input_size, channels), train_y[train_idx])
    test = Split(_to_input(arrays["test_images"][test_idx], cfg.input_size, channels), test_y[test_idx])
    # Fashion-MNIST pixel statistics, measured on the padded long-tailed training images of this split
    pixels = train.images[:, 0].astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    spec = InputSpec(cfg.input_size, channels, (mean,) * channels, (std,) * channels, "L", 28)
    return LTData(train, test, np.bincount(train.labels, minlength=num_classes), FMNIST_CLASSES, spec,
                  _fingerprint("fmnist-lt", train, test))


def _fingerprint(name: str, *splits: Split) -> str:
    h = hashlib.sha256(name.encode())
    for split in splits:
        h.update(split.images.tobytes())
        h.update(split.labels.tobytes())
    return h.hexdigest()


DATASETS: Registry[Callable[[DataConfig, Path], LTData]] = Registry("dataset")
DATASETS.register("fmnist-lt", load_fmnist_lt,
                  summary="Fashion-MNIST, long-tailed training subset, balanced official test split")


def load(cfg: DataConfig, cache_root: Path) -> LTData:
    return DATASETS.get(cfg.dataset)(cfg, cache_root)


# ---------------------------------------------------------------- batches
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Instance-balanced sampling: a fresh permutation per epoch, reproducible from (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def iterate(split: Split, order: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield split.images[idx], split.labels[idx]


def to_batch(images: np.ndarray, labels: np.ndarray, spec: InputSpec, device: torch.device,
             augment: bool = False, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 numpy batch -> normalised float channels_last tensor on `device` (+ random crop/flip when training).

    Augmentation is vectorised over the batch with an explicit generator, so a batch's augmentation depends
    only on the generator state: reproducible, and cheap next to the models.
    """
    x = torch.from_numpy(images)
    if augment:
        x = random_crop_flip(x, pad=4, generator=generator)
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
    rows = (dy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = dx[:, None] + torch.arange(w)[None, :]  # [n, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [n, h, w, c]
    return out.permute(0, 3, 1, 2).contiguous()
