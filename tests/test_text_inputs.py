"""Text a user hands over (class-name files, list files, preset files) read the way Windows tools write it: a
UTF-8 byte-order mark or UTF-16 never becomes part of a class name or a key, CRLF line ends split like LF, and
bytes in another encoding are refused by name (exit 3 for data, 2 for a preset)."""

from __future__ import annotations

import codecs

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODELS
from ltcompress import build_config, compress
from ltcompress.errors import DataError, UsageError

NAMES = ("tench", "goldfish")


def _listed_folder(root, names_bytes: bytes, list_end: str = "\n"):
    """Two classes of 32 px images under images/, ImageNet-LT list files and a class-names file."""
    rng = np.random.default_rng(0)
    lines = {"train": [], "test": []}
    for label, count in enumerate((6, 3)):
        for i in range(count + 2):
            rel = f"images/c{label}/{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(root / rel)
            lines["test" if i >= count else "train"].append(f"{rel} {label}")
    for split, rows in lines.items():
        (root / f"{split}.txt").write_bytes(list_end.join(rows).encode() + list_end.encode())
    (root / "names.txt").write_bytes(names_bytes)
    return {"data.train_list": "train.txt", "data.test_list": "test.txt", "data.class_names_file": "names.txt"}


@pytest.mark.parametrize(
    "names_bytes",
    [
        codecs.BOM_UTF8 + b"tench\r\ngoldfish\r\n",  # Notepad's "UTF-8 with BOM", Windows line ends
        "tench\r\ngoldfish\r\n".encode("utf-16"),  # Notepad's "Unicode" (UTF-16 with its BOM)
        b"tench\ngoldfish",
    ],
    ids=["utf8-bom-crlf", "utf16", "plain"],
)
def test_class_names_file_written_on_windows_gives_clean_names_a_gate_can_name(tmp_path, names_bytes):
    overrides = _listed_folder(tmp_path, names_bytes, list_end="\r\n")
    dry = compress(
        dataset="imagefolder",
        data_dir=str(tmp_path),
        teacher=TINY_MODELS["teacher"],
        student="test_resnet",
        method="kd",
        gates=["fp32.class[tench] >= 0"],  # a gate on the first class: no byte-order mark in its name
        overrides=overrides,
        progress=False,
        dry_run=True,
    )
    assert tuple(dry.data["class_names"]) == NAMES and dry.data["class_counts"] == [6, 3]


def test_a_class_names_file_in_another_encoding_is_refused_by_name(tmp_path):
    overrides = _listed_folder(tmp_path, "tanche\nbr\xe8me\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"names\.txt is not UTF-8 or UTF-16 text .*save it as UTF-8") as err:
        compress(dataset="imagefolder", data_dir=str(tmp_path), overrides=overrides, progress=False, dry_run=True)
    assert err.value.exit_code == 3


def test_a_preset_file_with_a_byte_order_mark_and_crlf_reads_like_any_other(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_bytes(codecs.BOM_UTF8 + b"data:\r\n  n_max: 123\r\nstudent:\r\n  train: {epochs: 7}\r\n")
    cfg = build_config(preset=str(preset))
    assert cfg.data.n_max == 123 and cfg.student.train.epochs == 7
    preset.write_bytes(b"data:\n  dataset: fmnist-lt\n  n_max: \xff\n")
    with pytest.raises(UsageError, match=r"mine\.yaml is not UTF-8 or UTF-16 text") as err:
        build_config(preset=str(preset))
    assert err.value.exit_code == 2
