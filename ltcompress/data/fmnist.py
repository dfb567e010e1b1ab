"""`fmnist-lt`: real Fashion-MNIST images (IDX files), a long-tailed training subset, the balanced test split."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ltcompress.config import DataConfig
from ltcompress.data.core import LTData, subset
from ltcompress.errors import DataError

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
GET_FMNIST = (
    "sudo apt-get install -y dataset-fashion-mnist (Debian/Ubuntu), or download the four "
    "*-ubyte.gz files of Fashion-MNIST into a folder and pass --data-dir FOLDER"
)


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
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
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
    if data_dir:
        files = _fmnist_files(Path(data_dir).expanduser())
        if files is None:
            raise DataError(
                f"data folder {data_dir} (--data-dir or $LTCOMPRESS_DATA) does not hold the "
                f"Fashion-MNIST files ({', '.join(s + '.gz' for s in FMNIST_FILES.values())}); "
                f"{GET_FMNIST}"
            )
        return files
    files = _fmnist_files(DEBIAN_FMNIST)
    if files is None and allow_download:
        files = _download_fmnist(cache_root / "data")
    if files is None:
        tried = "download failed" if allow_download else "downloads are off: LTCOMPRESS_OFFLINE or data.download"
        raise DataError(f"Fashion-MNIST not found (looked in {DEBIAN_FMNIST}, {tried}). Get it: {GET_FMNIST}")
    return files


def load_fmnist_lt(cfg: DataConfig, cache_root: Path) -> LTData:
    files = locate_fmnist(cfg.data_dir, cache_root, cfg.download)
    arrays = {key: _read_idx(path, key.split("_")[1]) for key, path in files.items()}
    if len(arrays["train_images"]) != len(arrays["train_labels"]) or len(arrays["test_images"]) != len(
        arrays["test_labels"]
    ):
        raise DataError(f"Fashion-MNIST images and labels differ in length in {files['train_images'].parent}")
    for key in ("train_labels", "test_labels"):
        if arrays[key].max(initial=0) >= len(FMNIST_CLASSES):
            raise DataError(f"{files[key]}: a label is out of range 0..{len(FMNIST_CLASSES) - 1}; re-download it")
    # 28x28 gray images are zero-padded to the input size (32 by default) unless data.resize says otherwise
    return subset(
        "fmnist-lt",
        cfg,
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
        FMNIST_CLASSES,
        native_size=28,
        resize=bool(cfg.resize),
    )
