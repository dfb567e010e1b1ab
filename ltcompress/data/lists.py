"""List files of the standard long-tailed benchmarks, as users keep them next to the images:

- ``relative/path.jpg label`` per line: ImageNet-LT (``ImageNet_LT_train.txt`` ...), Places-LT
  (``Places_LT_train.txt`` ...), iNaturalist 2018 as the classifier-balancing repository ships it
  (``iNaturalist18_train.txt`` ...). The label is the last field, so paths may contain spaces;
- iNaturalist 2018's COCO-style JSON (``train2018.json``, ``val2018.json``, any ``*.json``): ``images``
  ``[{id, file_name}]``, ``annotations`` ``[{image_id, category_id}]``, ``categories`` ``[{id, name}]``.

Paths are relative to the data folder and stay inside it (checked on the normalised path, so ``a/../../x`` is
refused; symbolic links inside the folder are followed on purpose: ImageNet setups often link ``train/`` to
another disk). Every named file must exist; the first few missing ones are reported together.
"""

from __future__ import annotations

import json
import ntpath
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ltcompress.errors import DataError
from ltcompress.values import read_text

MISSING_SHOWN = 5  # missing files named in the error; the rest are counted
CONFINE_HINT = "pass --set data.confine_paths=false to allow paths outside --data-dir"


def read_list(root: Path, list_file: Path, confine: bool = True) -> list[tuple[Path, int]]:
    """``(root / relative path, label)`` for every image a list file names, in file order.

    ``*.json`` is read as COCO-style JSON (iNaturalist 2018), anything else as ``path label`` lines. A
    malformed line, a path outside `root` (unless ``confine=False``) or a missing image is DataError."""
    root, list_file = Path(root), Path(list_file)
    if not list_file.is_file():
        raise DataError(
            f"list file {list_file} does not exist (check --data-dir and data.train_list / "
            f"data.test_list, which are relative to it)"
        )
    if list_file.suffix.lower() == ".json":
        rows = _json_rows(list_file)
    else:
        rows = _text_rows(list_file)
    if not rows:
        raise DataError(f"list file {list_file} names no images")
    base = os.path.join(os.fspath(root), "")
    joined = []
    for where, rel, label in rows:
        if confine and _plain(rel):
            joined.append((base + rel, label))  # the common case, without normpath: nothing to escape with
        else:
            joined.append((_checked_path(base, rel, list_file, where, confine), label))
    missing = [path for path, _ in joined if not os.path.isfile(path)]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN])
        more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        raise DataError(
            f"{list_file} names {len(missing)} image(s) that do not exist under {root}: {shown}{more}. "
            f"Check that --data-dir is the folder the list's paths are relative to"
        )
    return [(Path(path), label) for path, label in joined]


def class_names_from_json(list_file: Path) -> tuple[str, ...] | None:
    """Category names in label order from a COCO-style JSON (``{"categories": [...]}``) or a bare list of
    categories (iNaturalist 2018's ``categories.json``); None when there are none. Names that repeat get
    their category id appended, so every class keeps its own name."""
    list_file = Path(list_file)
    data = _load_json(list_file)
    cats = data.get("categories") if isinstance(data, dict) else data
    if not cats:
        return None
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise DataError(f"{list_file}: 'categories' must be a list of {{id, name}} objects")
    if not all(isinstance(c.get("name"), str) and c["name"].strip() for c in cats):
        return None
    order = _category_order(cats, list_file)
    by_id = {c["id"]: c["name"].strip() for c in cats}
    names = [by_id[cid] for cid in order]
    seen: dict[str, int] = {}
    for name in names:
        seen[name] = seen.get(name, 0) + 1
    return tuple(name if seen[name] == 1 else f"{name} ({cid})" for name, cid in zip(names, order))


def names_from_folders(root: Path, entries: Iterable[tuple[Path, int]], num_classes: int) -> tuple[str, ...]:
    """Each class named after the folder its images sit in, by the shortest trailing part of the folder path
    that no other class shares: ``n01440764`` (ImageNet-LT), ``airfield`` but ``apartment_building/outdoor``
    (Places-LT, where many leaves are ``indoor`` / ``outdoor``). A class whose images sit in several folders,
    share a folder with another class, or has no image here is named by its label. Pass the training entries
    only when the test images sit in one flat folder (Places-LT's ``val_256/``)."""
    base = os.fspath(root)
    folders: dict[int, set[tuple[str, ...]]] = {}
    for path, label in entries:
        rel = os.path.relpath(os.path.dirname(os.fspath(path)), base)
        parts = tuple(p for p in rel.replace(os.sep, "/").split("/") if p not in ("", "."))
        folders.setdefault(label, set()).add(parts)
    single = {c: next(iter(f)) for c, f in folders.items() if len(f) == 1 and next(iter(f))}
    depth = max((len(p) for p in single.values()), default=0)
    counts: dict[tuple[str, ...], int] = {}
    for k in range(1, depth + 1):
        for parts in single.values():
            counts[parts[-k:]] = counts.get(parts[-k:], 0) + 1
    names = []
    for c in range(num_classes):
        parts = single.get(c, ())
        name = str(c)
        if parts:
            for k in range(1, len(parts) + 1):
                if counts[parts[-k:]] == 1:
                    name = "/".join(parts[-k:])
                    break
        names.append(name)
    return tuple(names) if len(set(names)) == num_classes else tuple(str(c) for c in range(num_classes))


# ---------------------------------------------------------------- parsing
Row = tuple[int | str, str, int]  # where (line number or image id), relative path, label


def _text_rows(list_file: Path) -> list[Row]:
    what = "one 'relative/path.jpg label' per line (or a .json file in the COCO layout)"
    text = read_text(list_file, DataError, what)
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.rsplit(None, 1)
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError
            label = int(fields[1])
        except ValueError:
            raise DataError(
                f"{list_file}:{number}: expected 'relative/path.jpg label' (an integer label as the "
                f"last field), got {line.strip()!r}"
            ) from None
        if label < 0:
            raise DataError(f"{list_file}:{number}: label {label} is negative; labels run from 0 to C-1")
        rows.append((number, fields[0].strip(), label))
    return rows


def _load_json(list_file: Path) -> Any:
    if not list_file.is_file():
        raise DataError(f"JSON file {list_file} does not exist")
    try:
        with open(list_file, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{list_file}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{list_file} is not UTF-8 JSON ({exc.reason} at byte {exc.start})") from None


def _category_order(cats: list[dict[str, Any]], list_file: Path) -> list[Any]:
    """Category ids in label order: a category's label is its id's rank, which is the id itself when the ids
    are 0..C-1 (iNaturalist 2018) and remaps other ids (e.g. COCO's 1-based ones)."""
    ids = [c["id"] for c in cats]
    if len(set(ids)) != len(ids):
        raise DataError(f"{list_file}: 'categories' repeats a category id")
    try:
        return sorted(ids)
    except TypeError:
        raise DataError(f"{list_file}: category ids must all be integers (or all strings)") from None


def _json_rows(list_file: Path) -> list[Row]:
    data = _load_json(list_file)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(
            f"{list_file}: expected a COCO-style object with 'images' [{{id, file_name}}] and "
            f"'annotations' [{{image_id, category_id}}] (iNaturalist's train2018.json / val2018.json)"
        )
    annotations = data.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        raise DataError(
            f"{list_file} has no 'annotations' (no labels): the iNaturalist test set is unlabelled, "
            f"use val2018.json as data.test_list"
        )
    remap = None
    cats = data.get("categories")
    if isinstance(cats, list) and cats and all(isinstance(c, dict) and "id" in c for c in cats):
        order = _category_order(cats, list_file)
        if order != list(range(len(order))):  # e.g. 1-based COCO ids: label = the id's rank
            remap = {cid: i for i, cid in enumerate(order)}
    labels: dict[Any, int] = {}
    for i, ann in enumerate(annotations):
        try:
            image_id, category = ann["image_id"], ann["category_id"]
        except (TypeError, KeyError) as exc:
            raise DataError(f"{list_file}: annotation {i} has no {exc} (need image_id and category_id)") from None
        if remap is not None:
            if category not in remap:
                raise DataError(
                    f"{list_file}: annotation {i} names category {category!r}, which is not in 'categories'"
                )
            category = remap[category]
        elif not (isinstance(category, int) and not isinstance(category, bool) and category >= 0):
            raise DataError(f"{list_file}: annotation {i} has category_id {category!r}; expected an integer 0..C-1")
        if labels.setdefault(image_id, category) != category:
            raise DataError(
                f"{list_file}: image {image_id!r} has two annotations with different categories "
                f"({labels[image_id]} and {category}); one label per image is needed"
            )
    rows: list[Row] = []
    unlabelled = []
    for i, image in enumerate(data["images"]):
        try:
            image_id, file_name = image["id"], image["file_name"]
        except (TypeError, KeyError) as exc:
            raise DataError(f"{list_file}: image {i} has no {exc} (need id and file_name)") from None
        if image_id not in labels:
            unlabelled.append(image_id)
            continue
        rows.append((f"image {image_id!r}", str(file_name), labels[image_id]))
    if unlabelled:
        shown = ", ".join(repr(u) for u in unlabelled[:MISSING_SHOWN])
        raise DataError(
            f"{list_file}: {len(unlabelled)} image(s) have no annotation (first: {shown}); every image "
            f"needs a category_id"
        )
    return rows


def setting_path(root: Path, rel: str, key: str, confine: bool) -> Path:
    """A file named by a data setting (a list file, the class-names file), confined to `root` like the paths
    inside the list files, so a preset cannot make a run read files anywhere on the machine."""
    return Path(_checked_path(os.fspath(root), rel, Path(key), "", confine))


def _checked_path(base: str, rel: str, list_file: Path, where: Any, confine: bool) -> str:
    at = f"{list_file}:{where}" if isinstance(where, int) else f"{list_file} ({where})" if where else str(list_file)
    if not rel:
        raise DataError(f"{at}: empty image path")
    if not confine:
        return os.path.join(base, os.path.expanduser(rel.replace("\\", "/")))
    if ntpath.splitdrive(rel)[0] or rel.startswith(("/", "\\")):
        raise DataError(f"{at}: absolute path {rel!r}; paths must be relative to --data-dir ({CONFINE_HINT})")
    parts, depth = [p for p in re.split(r"[\\/]", rel) if p not in ("", ".")], 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise DataError(f"{at}: path {rel!r} leads outside --data-dir ({CONFINE_HINT})")
    return os.path.normpath(os.path.join(base, *parts))


def _plain(rel: str) -> bool:
    """A path that can only name something below the root, on every OS: relative, with no '..', no backslash
    and no drive (list files are often written on another OS than the one reading them)."""
    return bool(rel) and rel[0] != "/" and ".." not in rel and "\\" not in rel and ":" not in rel
