"""List files (ltcompress.data.lists): ImageNet-LT-style text lists and COCO/iNaturalist JSON, class names from
JSON, odd paths and long lists; and what is refused (paths leaving --data-dir, bad labels, missing images, bad
JSON, a missing list), each with the file and the line it names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_jpeg, write_lines
from ltcompress.data.lists import class_names_from_json, read_list
from ltcompress.errors import DataError


def test_bare_categories_json_names_in_id_order(tmp_path):
    """iNaturalist 2018's categories.json is a bare list; order by id, whatever the file order."""
    path = tmp_path / "categories.json"
    path.write_text(json.dumps([{"id": 1, "name": "b"}, {"id": 0, "name": "a"}, {"id": 2, "name": "a"}]))
    assert class_names_from_json(path) == ("a (0)", "b", "a (2)")  # repeated names keep their classes apart
    path.write_text(json.dumps({"images": [], "annotations": []}))
    assert class_names_from_json(path) is None


def test_coco_ids_that_are_not_0_to_c_minus_1_are_ranked(tmp_path):
    write_jpeg(tmp_path / "x.jpg", np.random.default_rng(0))
    doc = {
        "images": [{"id": 7, "file_name": "x.jpg"}, {"id": 8, "file_name": "x.jpg"}],
        "annotations": [{"image_id": 7, "category_id": 20}, {"image_id": 8, "category_id": 10}],
        "categories": [{"id": 20, "name": "twenty"}, {"id": 10, "name": "ten"}],
    }
    (tmp_path / "l.json").write_text(json.dumps(doc))
    assert [label for _, label in read_list(tmp_path, tmp_path / "l.json")] == [1, 0]
    assert class_names_from_json(tmp_path / "l.json") == ("ten", "twenty")


def test_paths_with_spaces_and_crlf(tmp_path):
    rng = np.random.default_rng(0)
    write_jpeg(tmp_path / "a b" / "c d.jpg", rng)
    (tmp_path / "l.txt").write_bytes(b"a b/c d.jpg 3\r\n\r\n  a b/c d.jpg\t1  \r\n")
    assert read_list(tmp_path, tmp_path / "l.txt") == [
        (tmp_path / "a b" / "c d.jpg", 3),
        (tmp_path / "a b" / "c d.jpg", 1),
    ]


def test_a_long_list_parses(tmp_path):
    """200k lines (ImageNet-LT has 116k, iNaturalist 437k) over a few real files."""
    rng = np.random.default_rng(0)
    for c in range(4):
        write_jpeg(tmp_path / "train" / f"c{c}" / "0.jpg", rng)
    lines = [f"train/c{i % 4}/0.jpg {i % 4}" for i in range(200_000)]
    write_lines(tmp_path / "big.txt", lines)
    entries = read_list(tmp_path, tmp_path / "big.txt")
    assert len(entries) == 200_000 and entries[-1] == (tmp_path / "train" / "c3" / "0.jpg", 3)


# ---------------------------------------------------------------- what is refused, and how it is said
@pytest.fixture
def one_image(tmp_path) -> Path:
    write_jpeg(tmp_path / "data" / "train" / "c" / "0.jpg", np.random.default_rng(0))
    write_jpeg(tmp_path / "outside.jpg", np.random.default_rng(1))
    return tmp_path / "data"


@pytest.mark.parametrize(
    "line, message",
    [
        ("../outside.jpg 0", r"leads outside --data-dir"),
        ("train/../../outside.jpg 0", r"leads outside --data-dir"),
        ("{outside} 0", r"absolute path"),
    ],
)
def test_paths_are_confined_to_the_data_dir(one_image, line, message):
    root = one_image
    line = line.format(outside=root.parent / "outside.jpg")
    (root / "l.txt").write_text(f"train/c/0.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=rf"l\.txt:2: .*{message}.*--set data\.confine_paths=false") as info:
        read_list(root, root / "l.txt")
    assert info.value.exit_code == 3
    entries = read_list(root, root / "l.txt", confine=False)  # the opt-out reads it
    assert entries[1][0].resolve() == (root.parent / "outside.jpg").resolve()


@pytest.mark.parametrize(
    "line, message",
    [
        ("..\\outside.jpg 0", r"leads outside --data-dir"),
        ("train\\c\\..\\..\\..\\outside.jpg 0", r"leads outside --data-dir"),
        ("C:\\outside.jpg 0", r"absolute path"),
        ("C:..\\outside.jpg 0", r"absolute path"),  # drive-relative: on Windows, join() would drop the root
        ("\\\\server\\share\\outside.jpg 0", r"absolute path"),
    ],
)
def test_paths_written_on_windows_are_confined_the_same_way_on_every_os(one_image, line, message):
    (one_image / "l.txt").write_text(f"train/c/0.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=rf"l\.txt:2: .*{message}.*--set data\.confine_paths=false") as info:
        read_list(one_image, one_image / "l.txt")
    assert info.value.exit_code == 3


def test_windows_separators_name_the_same_files_on_every_os(one_image):
    """A list written on Windows reads here: a backslash separates folders (and '.' and '..' inside the data
    directory are resolved), so the same file is found as with forward slashes."""
    (one_image / "l.txt").write_text("train\\c\\0.jpg 0\ntrain/c/./0.jpg 1\ntrain\\x\\..\\c/0.jpg 2\n")
    entries = read_list(one_image, one_image / "l.txt")
    assert [label for _, label in entries] == [0, 1, 2]
    assert {path.resolve() for path, _ in entries} == {(one_image / "train" / "c" / "0.jpg").resolve()}


def test_json_paths_are_confined_too(one_image):
    doc = {"images": [{"id": 1, "file_name": "../outside.jpg"}], "annotations": [{"image_id": 1, "category_id": 0}]}
    (one_image / "train2018.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"train2018\.json \(image 1\): path '\.\./outside\.jpg' leads outside"):
        read_list(one_image, one_image / "train2018.json")


@pytest.mark.parametrize(
    "bad, where",
    [
        ("train/c/0.jpg", "2"),  # no label
        ("train/c/0.jpg zero", "2"),
        ("train/c/0.jpg 1.5", "2"),
        ("train/c/0.jpg -1", "2: label -1 is negative"),
    ],
)
def test_bad_label_lines_name_file_and_line(one_image, bad, where):
    (one_image / "ImageNet_LT_train.txt").write_text(f"train/c/0.jpg 0\n{bad}\n")
    with pytest.raises(DataError, match=rf"ImageNet_LT_train\.txt:{where}"):
        read_list(one_image, one_image / "ImageNet_LT_train.txt")


def test_missing_images_are_reported_together(one_image):
    lines = ["train/c/0.jpg 0"] + [f"train/c/gone{i}.jpg 0" for i in range(7)]
    write_lines(one_image / "l.txt", lines)
    with pytest.raises(DataError) as info:
        read_list(one_image, one_image / "l.txt")
    message = str(info.value)
    assert "names 7 image(s) that do not exist" in message and "and 2 more" in message
    assert "gone4.jpg" in message and "gone5.jpg" not in message and "\n" not in message


@pytest.mark.parametrize(
    "doc, message",
    [
        ('{"images": [', r"train2018\.json:1: not valid JSON"),
        ({"images": [{"id": 1, "file_name": "train/c/0.jpg"}]}, r"no 'annotations' .*use val2018\.json"),
        (
            {
                "images": [{"id": 1, "file_name": "train/c/0.jpg"}, {"id": 2, "file_name": "train/c/0.jpg"}],
                "annotations": [{"image_id": 1, "category_id": 0}],
            },
            r"1 image\(s\) have no annotation \(first: 2\)",
        ),
        (
            {"images": [{"id": 1, "file_name": "train/c/0.jpg"}], "annotations": [{"image_id": 1}]},
            r"annotation 0 has no 'category_id'",
        ),
        ([1, 2], r"expected a COCO-style object"),
    ],
)
def test_bad_json_is_data_error(one_image, doc, message):
    path = one_image / "train2018.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(DataError, match=message):
        read_list(one_image, path)


def test_missing_list_file(tmp_path):
    with pytest.raises(DataError, match=r"list file .*Places_LT_train\.txt does not exist"):
        read_list(tmp_path, tmp_path / "Places_LT_train.txt")
