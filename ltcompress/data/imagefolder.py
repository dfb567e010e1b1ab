"""`imagefolder`: a user's own long-tailed images, in one of two layouts under --data-dir:

- a folder per class: ``train/<class>/*.png`` and ``test/<class>/*.png`` (class names: the folder names, sorted);
- list files in the ImageNet-LT / Places-LT / iNaturalist format: one ``relative/path.jpg label`` per line, for
  train and test (``data.train_list``, ``data.test_list``, relative to --data-dir), class names from
  ``data.class_names_file`` (one per line, in label order) or else the folder each class's images sit in.

Images of any size and mode are converted to the run's channels and resized to its input size, as the edge
bundle's runtime does. The data is taken as it is (already long-tailed): no subsetting.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ltcompress.config import DataConfig
from ltcompress.data.core import LTData, Split, assemble, convert_image, source_mode
from ltcompress.errors import DataError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _folder_entries(root: Path, names: tuple[str, ...] | None) -> tuple[list[tuple[Path, int]], tuple[str, ...]]:
    classes = names or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{root} has no class folders")
    entries = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            entries += [(p, label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in SUFFIXES]
    return entries, classes


def _list_entries(root: Path, list_file: Path) -> list[tuple[Path, int]]:
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist")
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        path, _, label = line.strip().rpartition(" ")
        try:
            entries.append((root / path.strip(), int(label)))
        except ValueError:
            raise DataError(f"{list_file}:{number}: expected 'relative/path.jpg label', got {line.strip()!r}") from None
    for path, _ in entries:
        if not path.is_file():
            raise DataError(f"{list_file} names {path}, which does not exist")
    return entries


def _names_from_lists(entries: list[tuple[Path, int]]) -> tuple[str, ...]:
    """Each class is named after the folder its images sit in when that is unambiguous, else by its label."""
    num = max(label for _, label in entries) + 1
    folders: dict[int, set[str]] = {}
    for path, label in entries:
        folders.setdefault(label, set()).add(path.parent.name)
    names = tuple(next(iter(folders[c])) if len(folders.get(c, ())) == 1 else str(c) for c in range(num))
    return names if len(set(names)) == num else tuple(str(c) for c in range(num))


def _read(entries: list[tuple[Path, int]], cfg: DataConfig, mode: str, skipped: list[str]) -> Split:
    images, labels = [], []
    for path, label in entries:
        try:
            with Image.open(path) as img:
                images.append(convert_image(img, mode, cfg.input_size, cfg.input_size, cfg.channels))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            if not cfg.skip_corrupt:
                raise DataError(f"cannot read image {path}: {exc}. Fix or remove it, or pass "
                                f"--set data.skip_corrupt=true to skip (and count) unreadable images") from None
            skipped.append(str(path))
            continue
        labels.append(label)
    shape = (0, cfg.channels, cfg.input_size, cfg.input_size)
    return Split(np.stack(images) if images else np.zeros(shape, np.uint8), np.asarray(labels, dtype=np.int64))


def load_imagefolder(cfg: DataConfig, cache_root: Path) -> LTData:
    if not cfg.data_dir:
        raise DataError("imagefolder needs --data-dir FOLDER (with train/<class>/ and test/<class>/ folders, or "
                        "list files given by --set data.train_list=... --set data.test_list=...)")
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder")
    names = None
    if cfg.class_names_file:
        names_path = root / cfg.class_names_file
        if not names_path.is_file():
            raise DataError(f"class names file {names_path} does not exist")
        names = tuple(line.strip() for line in names_path.read_text().splitlines() if line.strip())
    if cfg.train_list or cfg.test_list:
        if not (cfg.train_list and cfg.test_list):
            raise DataError("give both data.train_list and data.test_list")
        train_entries = _list_entries(root, root / cfg.train_list)
        test_entries = _list_entries(root, root / cfg.test_list)
        names = names or _names_from_lists(train_entries + test_entries)
        for list_name, entries in ((cfg.train_list, train_entries), (cfg.test_list, test_entries)):
            for path, label in entries:
                if not 0 <= label < len(names):
                    raise DataError(f"{root / list_name}: label {label} of {path} is out of range "
                                    f"0..{len(names) - 1} ({len(names)} class names)")
    else:
        for split in ("train", "test"):
            if not (root / split).is_dir():
                raise DataError(f"{root} has no {split}/ folder (expected train/<class>/ and test/<class>/), and "
                                f"no list files were given")
        train_entries, names = _folder_entries(root / "train", names)
        test_entries, _ = _folder_entries(root / "test", names)
    mode = source_mode(3, cfg.channels)
    skipped: list[str] = []
    train, test = _read(train_entries, cfg, mode, skipped), _read(test_entries, cfg, mode, skipped)
    return assemble(f"imagefolder {root}", cfg, train, test, names, mode, cfg.input_size, tuple(skipped))
