"""The imagenet-lt, places-lt and inat2018 presets on tiny generated trees in each benchmark's on-disk layout
(the real datasets cannot be downloaded here): each layout read with its class names, the presets' values, and
one tiny end-to-end run per preset. The list formats alone: tests/test_lists.py."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import write_jpeg, write_lines
from ltcompress import config
from ltcompress.data.lists import class_names_from_json, names_from_folders, read_list

PRESETS = ("imagenet-lt", "places-lt", "inat2018")
TRAIN_COUNTS = (12, 6, 3, 2)  # long-tailed: head, two middle classes, a 2-image tail
TEST_PER_CLASS = 2


@dataclass
class Tree:
    root: Path
    train_list: str
    test_list: str
    class_names: tuple[str, ...]  # what the run should name the classes


def _list_splits(
    root: Path, rng: np.random.Generator, classes: tuple[str, ...], train_rel, test_rel, mode=lambda label, i: "RGB"
) -> tuple[list[str], list[str]]:
    """JPEGs for a list-file benchmark: TRAIN_COUNTS training and TEST_PER_CLASS test images per class at the
    paths `train_rel(class, i)` / `test_rel(class, serial)`; returns the 'path label' lines of both lists."""
    train, test, serial = [], [], 1
    for label, (name, count) in enumerate(zip(classes, TRAIN_COUNTS)):
        for i in range(count):
            rel = train_rel(name, i)
            write_jpeg(root / rel, rng, mode(label, i))
            train.append(f"{rel} {label}")
        for _ in range(TEST_PER_CLASS):
            rel = test_rel(name, serial)
            serial += 1
            write_jpeg(root / rel, rng)
            test.append(f"{rel} {label}")
    return train, test


WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361")


def imagenet_lt_tree(root: Path) -> Tree:
    """ImageNet-LT (OLTR): train/<wnid>/<wnid>_<n>.JPEG and val/<wnid>/ILSVRC2012_val_<n>.JPEG (the validation
    set sorted into class folders), ImageNet_LT_{train,val,test}.txt; labels in sorted-wnid order."""
    train, test = _list_splits(
        root,
        np.random.default_rng(0),
        WNIDS,
        lambda wnid, i: f"train/{wnid}/{wnid}_{1000 + 37 * i}.JPEG",
        lambda wnid, n: f"val/{wnid}/ILSVRC2012_val_{n:08d}.JPEG",
        lambda label, i: ("RGB", "L", "CMYK")[i % 3] if label == 0 else "RGB",
    )
    write_lines(root / "ImageNet_LT_train.txt", train)
    write_lines(root / "ImageNet_LT_val.txt", train[::3])  # ImageNet-LT's val split is drawn from train
    write_lines(root / "ImageNet_LT_test.txt", test)
    return Tree(root, "ImageNet_LT_train.txt", "ImageNet_LT_test.txt", WNIDS)


PLACES = ("a/airfield", "a/apartment_building/outdoor", "a/athletic_field/outdoor", "b/bakery/shop")


def places_lt_tree(root: Path) -> Tree:
    """Places-LT (OLTR): data_256/<letter>/<category>/<n>.jpg for training, the flat val_256/ folder
    (Places365_val_<n>.jpg) for testing, Places_LT_{train,val,test}.txt."""
    train, test = _list_splits(
        root,
        np.random.default_rng(1),
        PLACES,
        lambda category, i: f"data_256/{category}/{i + 1:08d}.jpg",
        lambda category, n: f"val_256/Places365_val_{n:08d}.jpg",
    )
    write_lines(root / "Places_LT_train.txt", train)
    write_lines(root / "Places_LT_val.txt", test[::2])
    write_lines(root / "Places_LT_test.txt", test)
    # the shortest folder suffix no other class shares: the leaf, unless two leaves are both 'outdoor'
    return Tree(
        root,
        "Places_LT_train.txt",
        "Places_LT_test.txt",
        ("airfield", "apartment_building/outdoor", "athletic_field/outdoor", "shop"),
    )


SPECIES = (
    ("Plantae", "Abies concolor"),
    ("Aves", "Turdus migratorius"),
    ("Insecta", "Apis mellifera"),
    ("Fungi", "Amanita muscaria"),
)


def inat2018_tree(root: Path) -> Tree:
    """iNaturalist 2018: train_val2018/<kingdom>/<category id>/<hash>.jpg for train and val, the official
    COCO-style train2018.json / val2018.json (category ids 0..C-1), and the classifier-balancing lists."""
    rng = np.random.default_rng(2)
    categories = [
        {"id": c, "name": name, "supercategory": kingdom, "kingdom": kingdom}
        for c, (kingdom, name) in enumerate(SPECIES)
    ]
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for label, ((kingdom, _), count) in enumerate(zip(SPECIES, TRAIN_COUNTS)):
        for split, n in (("train", count), ("val", TEST_PER_CLASS)):
            for _ in range(n):
                rel = f"train_val2018/{kingdom}/{label}/{rng.bytes(16).hex()}.jpg"
                write_jpeg(root / rel, rng)
                splits[split].append((rel, label))
    image_id = 100
    for split, rows in splits.items():
        images, annotations = [], []
        for rel, label in rows:
            images.append(
                {"id": image_id, "file_name": rel, "width": 64, "height": 64, "license": 1, "rights_holder": "someone"}
            )
            annotations.append({"id": image_id, "image_id": image_id, "category_id": label})
            image_id += 1
        doc = {
            "info": {"year": 2018},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (root / f"{split}2018.json").write_text(json.dumps(doc, indent=1))
        write_lines(root / f"iNaturalist18_{split}.txt", [f"{rel} {label}" for rel, label in rows])
    return Tree(root, "train2018.json", "val2018.json", tuple(name for _, name in SPECIES))


TREES = {"imagenet-lt": imagenet_lt_tree, "places-lt": places_lt_tree, "inat2018": inat2018_tree}


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Tree]:
    return {name: make(tmp_path_factory.mktemp(name)) for name, make in TREES.items()}


def _labels(entries) -> list[int]:
    return np.bincount([label for _, label in entries], minlength=len(TRAIN_COUNTS)).tolist()


# ---------------------------------------------------------------- the reader on each layout
@pytest.mark.parametrize("name", PRESETS)
def test_each_layout_reads_with_its_class_names(trees, name):
    tree = trees[name]
    train = read_list(tree.root, tree.root / tree.train_list)
    test = read_list(tree.root, tree.root / tree.test_list)
    assert _labels(train) == list(TRAIN_COUNTS) and _labels(test) == [TEST_PER_CLASS] * len(TRAIN_COUNTS)
    assert all(path.is_file() and tree.root in path.parents for path, _ in train + test)
    if name == "inat2018":
        assert class_names_from_json(tree.root / tree.train_list) == tree.class_names
        assert class_names_from_json(tree.root / tree.test_list) == tree.class_names
    else:  # no names file ships: the training folders name the classes
        assert names_from_folders(tree.root, train, len(TRAIN_COUNTS)) == tree.class_names


def test_places_test_images_sit_in_one_flat_folder(trees):
    """Why names come from the training list: every Places-LT test image is in val_256/."""
    tree = trees["places-lt"]
    test = read_list(tree.root, tree.root / tree.test_list)
    assert {path.parent.name for path, _ in test} == {"val_256"}
    assert names_from_folders(tree.root, test, 4) == ("0", "1", "2", "3")


def test_imagenet_lt_val_list_and_order(trees):
    tree = trees["imagenet-lt"]
    train = read_list(tree.root, tree.root / tree.train_list)
    lines = (tree.root / tree.train_list).read_text().splitlines()
    assert [f"{p.relative_to(tree.root).as_posix()} {label}" for p, label in train] == lines  # file order kept
    assert len(read_list(tree.root, tree.root / "ImageNet_LT_val.txt")) == len(lines[::3])


def test_inat_lists_and_json_name_the_same_images(trees):
    tree = trees["inat2018"]
    for split in ("train", "val"):
        from_json = read_list(tree.root, tree.root / f"{split}2018.json")
        from_txt = read_list(tree.root, tree.root / f"iNaturalist18_{split}.txt")
        assert from_json == from_txt
    # with the .txt lists the folders (category ids) name the classes
    assert names_from_folders(tree.root, from_txt, 4) == ("0", "1", "2", "3")


# ---------------------------------------------------------------- the presets
@pytest.mark.parametrize("name", PRESETS)
def test_preset_values(trees, name):
    cfg = config.resolve(name, {})
    tree = trees[name]
    assert name in config.list_presets() and "--data-dir" in cfg.description and "GPU" in cfg.description
    d = cfg.data
    assert (d.dataset, d.train_list, d.test_list) == ("imagefolder", tree.train_list, tree.test_list)
    assert (d.many_threshold, d.few_threshold, d.input_size) == (100, 20, 224)
    assert (d.in_memory, d.augment, d.normalize) == ("auto", "timm", "auto")
    assert (cfg.teacher.arch, cfg.teacher.init) == ("resnet50", "pretrained")
    finetune = cfg.teacher.finetune
    assert finetune.batch_size == 256 and 10 <= finetune.epochs <= 30 and 0.01 <= finetune.lr <= 0.05
    assert finetune.warmup == 0.1
    assert (cfg.student.arch, cfg.student.init) == ("mobilenetv3_small_100", "pretrained")
    s = cfg.student.train
    assert (s.batch_size, s.grad_clip) == (256, 5.0) and s.epochs >= 10
    assert cfg.method.name == "bkd" and cfg.gates == ()


# ---------------------------------------------------------------- through the pipeline (needs imagefolder to use
# read_list: JSON lists, names from the training folders)
TINY_RUN = {
    "data.input_size": 32,
    "data.workers": 0,
    "student.init": "scratch",
    "run.device": "cpu",
    "run.eval_batch_size": 16,
    "teacher.train.epochs": 1,
    "teacher.train.batch_size": 8,
    "teacher.finetune.epochs": 1,
    "teacher.finetune.batch_size": 8,
    "student.train.epochs": 1,
    "student.train.batch_size": 8,
}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_through_the_data_stage(trees, tmp_path, name):
    from ltcompress import data as data_stage

    tree = trees[name]
    cfg = config.resolve(name, {**TINY_RUN, "data.data_dir": str(tree.root)})
    data = data_stage.load(cfg.data, tmp_path)
    assert data.class_names == tree.class_names and data.class_counts.tolist() == list(TRAIN_COUNTS)
    assert len(data.test) == TEST_PER_CLASS * len(TRAIN_COUNTS)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_end_to_end(trees, tmp_path, name):
    from ltcompress import compress

    tree = trees[name]
    overrides = dict(TINY_RUN)
    if name == "inat2018":
        overrides["data.in_memory"] = False  # the path a 437k-image dataset takes
    result = compress(
        preset=name,
        data_dir=str(tree.root),
        teacher="test_resnet",
        student="test_efficientnet",
        teacher_init="scratch",
        runs_dir=str(tmp_path / "runs"),
        progress=False,
        overrides=overrides,
    )
    rep = result.report.to_dict()
    assert rep["config"]["preset"] == name and rep["method"]["name"] == "bkd"
    info = rep["data"]
    assert info["class_names"] == list(tree.class_names) and info["class_counts"] == list(TRAIN_COUNTS)
    assert info["test_size"] == TEST_PER_CLASS * len(TRAIN_COUNTS)
    assert info["shot_thresholds"] == {"many_above": 100, "few_below": 20}
    assert info["shot_groups"] == {"many": [], "medium": [], "few": list(tree.class_names)}  # all under 20
    assert info["pipeline"]["augment"] == "timm" and info["pipeline"]["in_memory"] is (name != "inat2018")
    assert {"teacher", "student", "fp32"} <= set(rep["stages"])
    assert rep["parity"]["fp32"]["ok"] and result.passed
    assert result.onnx_path.is_file() and (result.bundle_dir / "model.onnx").is_file()
    assert os.path.getsize(result.onnx_path) > 0
