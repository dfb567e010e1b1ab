"""`cifar10-lt` and `cifar100-lt` from the CIFAR python archives (the ``.tar.gz`` or its extracted folder).

The batches are pickles. They are read with a restricted unpickler that allows only what those files hold
(dicts, lists, bytes and numpy arrays), so a tampered archive cannot run code; torchvision's own class would
also refuse archives whose checksum it does not know.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ltcompress.config import DataConfig
from ltcompress.data.core import LTData, subset
from ltcompress.errors import DataError


@dataclass(frozen=True)
class CifarFormat:
    name: str
    archive: str  # the official archive's file name
    folder: str  # the folder inside it
    md5: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: bytes
    names_key: bytes


CIFAR10 = CifarFormat(
    "cifar10-lt",
    "cifar-10-python.tar.gz",
    "cifar-10-batches-py",
    "c58f30108f718f92721af3b95e74349a",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
    b"labels",
    b"label_names",
)
CIFAR100 = CifarFormat(
    "cifar100-lt",
    "cifar-100-python.tar.gz",
    "cifar-100-python",
    "eb9058c3a382ffc7106e4002c42a8d85",
    ("train",),
    "test",
    "meta",
    b"fine_labels",
    b"fine_label_names",
)
URL = "https://www.cs.toronto.edu/~kriz/"

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core"):  # pickled by numpy 1.x; numpy 2 keeps these under numpy._core
            module = module.replace("numpy.core", "numpy._core", 1)
        return super().find_class(module, name)


def load_batch(raw: bytes, where: str) -> dict[bytes, Any]:
    """One pickled batch, decoded safely; DataError naming the file for anything else."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # UnpicklingError, EOFError, truncated data, ...
        raise DataError(f"{where} is not a readable CIFAR batch ({exc}); re-download the archive") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} is not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    return obj


def _reader(source: Path, fmt: CifarFormat) -> Callable[[str], bytes]:
    """Read member files from the archive or the extracted folder."""
    if source.is_file():
        try:
            tar = tarfile.open(source, "r:*")
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{source} is not a readable tar archive ({exc}); re-download {fmt.archive}") from None

        def read(member: str) -> bytes:
            try:
                handle = tar.extractfile(f"{fmt.folder}/{member}")
            except KeyError:
                handle = None
            if handle is None:
                raise DataError(f"{source} has no {fmt.folder}/{member}; is it {fmt.archive}?")
            return handle.read()

        return read

    def read_file(member: str) -> bytes:
        path = source / member
        if not path.is_file():
            raise DataError(f"{path} is missing; the folder must hold the extracted {fmt.folder}/")
        return path.read_bytes()

    return read_file


def _find(folder: Path, fmt: CifarFormat) -> Path | None:
    for candidate in (folder / fmt.archive, folder / fmt.folder, folder):
        if candidate.is_file() or (candidate / fmt.test).is_file():
            return candidate
    return None


def _download(root: Path, fmt: CifarFormat) -> Path | None:
    """The official archive through torchvision's checksum-checked download, when the network allows."""
    try:
        from torchvision.datasets.utils import download_url

        download_url(URL + fmt.archive, str(root), fmt.archive, fmt.md5)
    except Exception:  # no network: the caller says how to get the data
        return None
    return _find(root, fmt)


def locate(fmt: CifarFormat, data_dir: str | None, cache_root: Path, download: bool = True) -> Path:
    how = f"download {URL}{fmt.archive} and pass --data-dir FOLDER (the .tar.gz or its extracted folder)"
    if data_dir:
        found = _find(Path(data_dir).expanduser(), fmt)
        if found is None:
            raise DataError(
                f"data folder {data_dir} (--data-dir or $LTCOMPRESS_DATA) holds neither {fmt.archive} "
                f"nor {fmt.folder}/; {how}"
            )
        return found
    found = _find(cache_root / "data", fmt)
    if found is None and download:
        found = _download(cache_root / "data", fmt)
    if found is None:
        raise DataError(f"{fmt.name}: CIFAR archive not found and the download failed; {how}")
    return found


def _split(
    read: Callable[[str], bytes], members: tuple[str, ...], fmt: CifarFormat, source: Path
) -> tuple[np.ndarray, np.ndarray]:
    """The named batches as images [N, 32, 32, 3] and labels; DataError naming the batch that is malformed."""
    images, labels = [], []
    for member in members:
        where = f"{source}:{member}"
        batch = load_batch(read(member), where)
        try:
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            y = np.asarray(batch[fmt.label_key], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{where}: no usable {exc} entry; re-download {fmt.archive}") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(y):
            raise DataError(f"{where}: expected [N, 3072] images and N labels, got {data.shape} and {y.shape}")
        images.append(data)
        labels.append(y)
    return np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.concatenate(labels)


def load(fmt: CifarFormat, cfg: DataConfig, cache_root: Path) -> LTData:
    source = locate(fmt, cfg.data_dir, cache_root, cfg.download)
    read = _reader(source, fmt)
    meta = load_batch(read(fmt.meta), f"{source}:{fmt.meta}")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(fmt.names_key, []))
    train_x, train_y = _split(read, fmt.train, fmt, source)
    test_x, test_y = _split(read, (fmt.test,), fmt, source)
    if not names or max(train_y.max(), test_y.max()) >= len(names) or min(train_y.min(), test_y.min()) < 0:
        raise DataError(f"{source}: labels do not match the {len(names)} class names of {fmt.meta}")
    return subset(
        fmt.name,
        cfg,
        train_x,
        train_y,
        test_x,
        test_y,
        names,
        native_size=32,
        resize=cfg.size != 32 if cfg.resize is None else cfg.resize,
    )


def load_cifar10_lt(cfg: DataConfig, cache_root: Path) -> LTData:
    return load(CIFAR10, cfg, cache_root)


def load_cifar100_lt(cfg: DataConfig, cache_root: Path) -> LTData:
    return load(CIFAR100, cfg, cache_root)
