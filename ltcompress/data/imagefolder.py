"""`imagefolder`: a user's own long-tailed images, in one of two layouts under --data-dir:

- a folder per class: ``train/<class>/*.png`` and ``test/<class>/*.png`` (class names: the folder names, sorted);
- list files in the ImageNet-LT / Places-LT / iNaturalist format: one ``relative/path.jpg label`` per line, for
  train and test (``data.train_list``, ``data.test_list``, relative to --data-dir), class names from
  ``data.class_names_file`` (one per line, in label order) or else the folder each class's images sit in.

The data is taken as it is (already long-tailed): no subsetting. Evaluation images go through timm's transform
(shorter side to size / crop_pct, centre crop), which the edge bundle's runtime repeats. Data that fits
``data.memory_budget_gb`` once decoded is decoded once into memory; larger data stays on disk and is decoded one
image at a time in worker processes (``data.in_memory``). Statistics come from a bounded sample, and the
fingerprint from the list of files, their sizes and modification times: nothing reads all pixels up front.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ltcompress.config import DataConfig
from ltcompress.data.core import (
    InputSpec,
    LTData,
    Pipeline,
    Split,
    check_splits,
    fingerprint,
    resolve_workers,
    sample_indices,
    source_mode,
    streamed_stats,
)
from ltcompress.data.lists import class_names_from_json, names_from_folders, read_list, setting_path
from ltcompress.edge.runtime import IMAGE_SUFFIXES
from ltcompress.errors import DataError
from ltcompress.values import read_text

log = logging.getLogger("ltcompress")
SUFFIXES = IMAGE_SUFFIXES  # the edge runtime's: what trains is what a device classifies
Entries = list[tuple[Path, int]]


def _folder_entries(root: Path, names: tuple[str, ...] | None) -> tuple[Entries, tuple[str, ...]]:
    classes = names or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{root} has no class folders")
    entries = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            entries += [(p, label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in SUFFIXES]
    return entries, classes


def _entries(cfg: DataConfig, root: Path, excluded: list[str]) -> tuple[Entries, Entries, tuple[str, ...]]:
    """Train and test entries and the class names; test classes that training lacks go to `excluded` (with
    data.unknown_test_classes=exclude) or stop the run."""
    names = _names_file(cfg, root)
    if cfg.train_list or cfg.test_list:
        if not (cfg.train_list and cfg.test_list):
            raise DataError("give both data.train_list and data.test_list")
        train_file = setting_path(root, cfg.train_list, "data.train_list", cfg.confine_paths)
        train_entries = read_list(root, train_file, cfg.confine_paths)
        test_entries = read_list(
            root, setting_path(root, cfg.test_list, "data.test_list", cfg.confine_paths), cfg.confine_paths
        )
        if names is None and cfg.train_list.lower().endswith(".json"):
            names = class_names_from_json(train_file)
        if names is None:  # from the training list only: Places-LT keeps every test image in one folder
            top = max(label for _, label in train_entries + test_entries)
            names = names_from_folders(root, train_entries, top + 1)
        for list_name, entries in ((cfg.train_list, train_entries), (cfg.test_list, test_entries)):
            for path, label in entries:
                if not 0 <= label < len(names):
                    raise DataError(
                        f"{root / list_name}: label {label} of {path} is out of range "
                        f"0..{len(names) - 1} ({len(names)} class names)"
                    )
        return train_entries, test_entries, names
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"{root} has no {split}/ folder (expected train/<class>/ and test/<class>/), and "
                f"no list files were given"
            )
    train_entries, names = _folder_entries(root / "train", names)
    test_entries, _ = _folder_entries(root / "test", names)
    _unknown_test_classes(cfg, root, names, excluded)
    return train_entries, test_entries, names


def _unknown_test_classes(cfg: DataConfig, root: Path, names: tuple[str, ...], excluded: list[str]) -> None:
    """A test/<class> folder that training does not have: its images cannot be scored against any output, and
    dropping them silently would flatter the report. Exit 3, or with data.unknown_test_classes=exclude, leave
    them out and say so (log and report.json's data.excluded_test_classes)."""
    known = set(names)
    extra = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in known)
    if not extra:
        return
    images = {c: sum(1 for p in (root / "test" / c).rglob("*") if p.suffix.lower() in SUFFIXES) for c in extra}
    shown = ", ".join(f"{c!r} ({images[c]} images)" for c in extra[:5]) + (" ..." if len(extra) > 5 else "")
    if cfg.unknown_test_classes != "exclude":
        raise DataError(
            f"{root / 'test'} has {len(extra)} class folder(s) that {root / 'train'} lacks: {shown}; "
            f"add their training images, or pass --set data.unknown_test_classes=exclude to leave "
            f"them out of the test split (reported)"
        )
    log.warning(
        "data: %d test class folder(s) with no training images left out of the test split: %s", len(extra), shown
    )
    excluded.extend(extra)


def _val_entries(cfg: DataConfig, root: Path, names: tuple[str, ...]) -> Entries:
    """data.val_list: held-out images with labels in the training classes (the INT8 repair decides on them)."""
    if not cfg.val_list:
        return []
    path = setting_path(root, cfg.val_list, "data.val_list", cfg.confine_paths)
    entries = read_list(root, path, cfg.confine_paths)
    for image, label in entries:
        if not 0 <= label < len(names):
            raise DataError(
                f"{path}: label {label} of {image} is out of range 0..{len(names) - 1} ({len(names)} "
                f"training classes); data.val_list must use the training labels"
            )
    return entries


def _names_file(cfg: DataConfig, root: Path) -> tuple[str, ...] | None:
    """data.class_names_file: one name per line in label order, or an iNaturalist categories JSON."""
    if not cfg.class_names_file:
        return None
    path = setting_path(root, cfg.class_names_file, "data.class_names_file", cfg.confine_paths)
    if not path.is_file():
        raise DataError(f"class names file {path} does not exist")
    if path.suffix.lower() == ".json":
        return class_names_from_json(path)
    text = read_text(path, DataError, "one class name per line, in label order")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def manifest(root: Path, splits: dict[str, Entries]) -> tuple[str, ...]:
    """One line per file, 'split label size mtime_ns path': what the fingerprint and a resume check compare."""
    lines = []
    for name, entries in splits.items():
        for path, label in entries:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise DataError(f"cannot read image {path}: {exc.strerror}") from None
            rel = os.path.relpath(path, root)
            lines.append(f"{name} {label} {st.st_size} {st.st_mtime_ns} {rel}")
    return tuple(lines)


def in_memory(cfg: DataConfig, images: int, channels: int) -> tuple[bool, str]:
    """data.in_memory, with auto deciding by the decoded size against data.memory_budget_gb."""
    need = images * channels * cfg.size**2 / 2**30
    if cfg.in_memory == "auto":
        fits = need <= cfg.memory_budget_gb
        return fits, f"auto: {need:.2f} GiB decoded {'fits' if fits else 'exceeds'} {cfg.memory_budget_gb:g} GiB"
    return bool(cfg.in_memory), f"data.in_memory={str(cfg.in_memory).lower()} ({need:.2f} GiB decoded)"


def _decode_all(split: Split, spec: InputSpec, pipeline: Pipeline, skipped: list[str]) -> Split:
    """A lazy split decoded once into memory (in worker processes), dropping skipped images."""
    import torch

    from ltcompress.data.loader import SampleSet, decoded
    from ltcompress.data.transforms import eval_transform

    from ltcompress import progress

    dataset = SampleSet(split, np.arange(len(split)), eval_transform(spec), None)
    parts, labels = [], []
    batches = decoded(pipeline, skipped, dataset, 256, False, torch.device("cpu"))
    for x, y in progress.bar(batches, "decoding images", total=progress.batches(len(split), 256)):
        parts.append(x.numpy())
        labels.append(y.numpy())
    gone = set(skipped)
    keep = [f for f in split.paths if f not in gone]
    shape = (0, spec.channels, spec.size, spec.size)
    images = np.concatenate(parts) if parts else np.zeros(shape, np.uint8)
    return Split(images, np.concatenate(labels) if labels else np.zeros(0, np.int64), tuple(keep))


def _root(cfg: DataConfig) -> Path:
    if not cfg.data_dir:
        raise DataError(
            "imagefolder needs --data-dir FOLDER (with train/<class>/ and test/<class>/ folders, or "
            "list files given by --set data.train_list=... --set data.test_list=...)"
        )
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder")
    return root


def training_files(cfg: DataConfig) -> list[Path]:
    """The training images' paths, with every check loading does on the layout (the recipe measures them)."""
    root = _root(cfg)
    return [path for path, _ in _entries(cfg, root, [])[0]]


def load_imagefolder(cfg: DataConfig, cache_root: Path) -> LTData:
    root = _root(cfg)
    excluded: list[str] = []
    train_entries, test_entries, names = _entries(cfg, root, excluded)
    val_entries = _val_entries(cfg, root, names)
    lines = manifest(root, {"train": train_entries, "test": test_entries, "val": val_entries})
    mode = source_mode(3, cfg.channels)
    # crop: timm's evaluation transform (photos); pad: small images resized to source_size and zero-padded
    geometry = "crop" if cfg.geometry == "auto" else cfg.geometry
    source = min(cfg.source_size or cfg.size, cfg.size) if geometry == "pad" else cfg.size
    spec = InputSpec(
        cfg.size,
        cfg.channels,
        (0.0,) * cfg.channels,
        (1.0,) * cfg.channels,
        mode,
        source,
        geometry,
        cfg.crop_pct or 0.875,
        cfg.interpolation or "bilinear",
    )
    keep, reason = in_memory(cfg, len(train_entries) + len(test_entries) + len(val_entries), cfg.channels)
    # small padded images: pad-crop + flip on whole uint8 batches (vectorised); photos: timm's per-image recipe
    augment = ("crop_flip" if geometry == "pad" else "timm") if cfg.augment == "auto" else cfg.augment
    pipeline = Pipeline(augment, resolve_workers(cfg), cfg.prefetch, cfg, reason)
    train, test, val = (
        Split(None, np.asarray([label for _, label in entries], dtype=np.int64), tuple(str(p) for p, _ in entries))
        for entries in (train_entries, test_entries, val_entries)
    )
    skipped: list[str] = []
    if keep:
        train, test, val = (
            _decode_all(split, spec, pipeline, skipped) if len(split) else split for split in (train, test, val)
        )
    name = f"imagefolder {root}"
    counts = check_splits(name, train, test, names)
    mean, std = _stats(cfg, train, spec, pipeline, skipped)
    spec = InputSpec(
        spec.size, spec.channels, mean, std, mode, spec.source_size, spec.geometry, spec.crop_pct, spec.interpolation
    )
    log.info("data: %s, %s", "in memory" if keep else "decoded lazily in %d worker(s)" % pipeline.workers, reason)
    held = f"data.val_list {cfg.val_list}, {len(val)} images" if len(val) else ""
    return LTData(
        train,
        test,
        counts,
        names,
        spec,
        fingerprint(name, (), lines),
        skipped,
        pipeline,
        lines,
        tuple(excluded),
        val if len(val) else None,
        held,
    )


def _stats(
    cfg: DataConfig, train: Split, spec: InputSpec, pipeline: Pipeline, skipped: list[str]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from a bounded, seeded sample of training images (decoded in workers when lazy)."""
    if cfg.normalize == "pretrained":  # data.load puts in the student's own
        return (0.0,) * spec.channels, (1.0,) * spec.channels
    idx = sample_indices(len(train), cfg.stats_sample, cfg.seed)
    if not train.lazy:  # the same sample and arithmetic as the lazy path: storage never changes the numbers
        return streamed_stats(train.arrays[i] for i in idx)
    import torch

    from ltcompress.data.loader import SampleSet, decoded
    from ltcompress.data.transforms import eval_transform

    dataset = SampleSet(train, idx, eval_transform(spec), None)
    batches = decoded(pipeline, skipped, dataset, 64, False, torch.device("cpu"))
    return streamed_stats(img for x, _ in batches for img in x.numpy())
