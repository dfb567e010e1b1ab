"""The real loaders on small archives and folders written here in the real formats: pickled CIFAR batches
(.tar.gz and extracted), PNG/JPEG class folders, ImageNet-LT-style list files; bad data; samplers."""

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltcompress.config import DataConfig
from ltcompress.data import load
from ltcompress.data.cifar import CIFAR10, CIFAR100
from ltcompress.data.samplers import class_distribution, epoch_stream, rank_share
from ltcompress.errors import DataError, UsageError

PER_CLASS = 50


# ---------------------------------------------------------------- CIFAR archives in the real layout
def write_cifar(root: Path, fmt, num_classes: int, seed: int = 0, as_tar: bool = True) -> Path:
    """The official layout: <folder>/{train batches, test batch, meta}, pickled dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    folder = root / fmt.folder
    folder.mkdir(parents=True)

    def batch(n_per_class):
        labels = np.repeat(np.arange(num_classes), n_per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        return {
            b"batch_label": b"x",
            fmt.label_key: labels.tolist(),
            b"data": data,
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
        }

    per_batch = PER_CLASS // len(fmt.train)
    for name in fmt.train:
        (folder / name).write_bytes(pickle.dumps(batch(per_batch), protocol=2))
    (folder / fmt.test).write_bytes(pickle.dumps(batch(10), protocol=2))
    names = [f"class{c}".encode() for c in range(num_classes)]  # python-2 pickles give bytes
    (folder / fmt.meta).write_bytes(pickle.dumps({fmt.names_key: names}, protocol=2))
    if not as_tar:
        return folder
    archive = root / fmt.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=fmt.folder)
    return archive


def cifar_cfg(path, dataset="cifar10-lt", **kw):
    return DataConfig(
        **{"dataset": dataset, "data_dir": str(path), "n_max": PER_CLASS, "imbalance": 10, "input_size": 32, **kw}
    )


@pytest.mark.parametrize("fmt, classes, dataset", [(CIFAR10, 10, "cifar10-lt"), (CIFAR100, 100, "cifar100-lt")])
def test_cifar_archive_and_extracted_folder_load_the_same(tmp_path, fmt, classes, dataset):
    archive = write_cifar(tmp_path / "a", fmt, classes)
    from_tar = load(cifar_cfg(archive.parent, dataset), tmp_path)
    from_folder = load(cifar_cfg(write_cifar(tmp_path / "b", fmt, classes, as_tar=False), dataset), tmp_path)
    assert from_tar.fingerprint == from_folder.fingerprint
    assert from_tar.class_counts.tolist() == [int(PER_CLASS * 10 ** (-i / (classes - 1))) for i in range(classes)]
    assert from_tar.class_names[:2] == ("class0", "class1") and len(from_tar.class_names) == classes
    assert from_tar.train.images.shape[1:] == (3, 32, 32) and len(from_tar.test) == 10 * classes
    assert from_tar.spec.source_mode == "RGB" and from_tar.spec.source_size == 32


def test_cifar_images_keep_their_pixels(tmp_path):
    folder = write_cifar(tmp_path, CIFAR10, 10, as_tar=False)
    raw = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    data = load(cifar_cfg(folder, imbalance=1), tmp_path)
    want = raw[b"data"][0].reshape(3, 32, 32)
    assert any(np.array_equal(img, want) for img in data.test.images)


def test_cifar_step_profile_and_gray(tmp_path):
    archive = write_cifar(tmp_path, CIFAR10, 10)
    data = load(cifar_cfg(archive.parent, profile="step", channels=1), tmp_path)
    assert data.class_counts.tolist() == [50] * 5 + [5] * 5
    assert data.train.images.shape[1] == 1 and data.spec.source_mode == "L"


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ltcompress-pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    folder = write_cifar(tmp_path, CIFAR10, 10, as_tar=False)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3.*posix.system is not allowed|data_batch_3.*not allowed"):
        load(cifar_cfg(folder), tmp_path)
    assert not Path("/tmp/ltcompress-pwned").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "test_batch").write_bytes(b"\x80\x02}q\x00"), "test_batch is not a readable CIFAR batch"),
        (lambda f: (f / "batches.meta").unlink(), "batches.meta is missing"),
        (
            lambda f: (f / "data_batch_1").write_bytes(
                pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})
            ),
            "expected \\[N, 3072\\]",
        ),
    ],
)
def test_corrupt_cifar_is_exit_3_naming_the_file(tmp_path, damage, message):
    folder = write_cifar(tmp_path, CIFAR10, 10, as_tar=False)
    damage(folder)
    with pytest.raises(DataError, match=message) as info:
        load(cifar_cfg(folder), tmp_path)
    assert info.value.exit_code == 3


def test_missing_cifar_names_the_download(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load(cifar_cfg(tmp_path), tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="not a readable tar archive"):
        load(cifar_cfg(tmp_path), tmp_path)


# ---------------------------------------------------------------- image folders and list files
MODES = ("RGB", "L", "RGBA", "P")


def write_images(root: Path, counts: dict[str, int], seed: int = 0, suffix_cycle=(".png", ".jpg")) -> None:
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            mode = MODES[i % len(MODES)]
            suffix = suffix_cycle[i % len(suffix_cycle)]
            img = img.convert(mode)
            if suffix == ".jpg" and mode in ("RGBA", "P"):
                img = img.convert("RGB")
            img.save(root / name / f"{i:03d}{suffix}")


def folder_dataset(tmp_path, train=None, test=None):
    write_images(tmp_path / "train", train or {"cat": 12, "dog": 6, "eel": 2})
    write_images(tmp_path / "test", test or {"cat": 3, "dog": 3, "eel": 3}, seed=1)
    return tmp_path


def folder_cfg(root, **kw):
    return DataConfig(dataset="imagefolder", data_dir=str(root), input_size=32, **kw)


def test_imagefolder_any_size_and_mode(tmp_path):
    data = load(folder_cfg(folder_dataset(tmp_path)), tmp_path)
    assert data.class_names == ("cat", "dog", "eel") and data.class_counts.tolist() == [12, 6, 2]
    assert data.train.images.shape == (20, 3, 32, 32) and len(data.test) == 9
    assert data.spec.source_mode == "RGB" and data.spec.source_size == 32
    gray = load(folder_cfg(tmp_path, channels=1), tmp_path)
    assert gray.train.images.shape == (20, 1, 32, 32)


@pytest.mark.parametrize("in_memory", [True, False])
def test_imagefolder_pixels_match_the_bundle_preprocessing(tmp_path, in_memory):
    """What the run feeds its models (decoded in memory, or lazily in a worker) is what the bundle computes."""
    import torch

    from ltcompress.metadata import preprocess
    from ltcompress.data import eval_batches
    from ltcompress.edge.runtime import Bundle

    data = load(folder_cfg(folder_dataset(tmp_path), in_memory=in_memory, workers=1), tmp_path)
    assert data.in_memory is in_memory and data.spec.geometry == "crop"
    bundle = Bundle.__new__(Bundle)  # preprocessing only: no model needed
    bundle.pre = preprocess(data)
    x, _ = next(eval_batches(data, data.test, 4, torch.device("cpu")))
    for i, path in enumerate(data.test.files[:4]):
        with Image.open(path) as img:
            np.testing.assert_allclose(bundle.preprocess(img), x[i].numpy(), rtol=1e-6, atol=1e-6)


def test_list_files_in_imagenet_lt_format(tmp_path):
    write_images(tmp_path / "images" / "n01", {"": 5})
    write_images(tmp_path / "images" / "n02", {"": 3})
    lines = [f"images/n01/{i:03d}.{'png' if i % 2 == 0 else 'jpg'} 0" for i in range(5)]
    lines += [f"images/n02/{i:03d}.{'png' if i % 2 == 0 else 'jpg'} 1" for i in range(3)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:4] + lines[5:7]) + "\n")
    (tmp_path / "test.txt").write_text("\n".join([lines[4], lines[7]]) + "\n")
    cfg = folder_cfg(tmp_path, train_list="train.txt", test_list="test.txt")
    data = load(cfg, tmp_path)
    assert data.class_names == ("n01", "n02") and data.class_counts.tolist() == [4, 2] and len(data.test) == 2
    (tmp_path / "names.txt").write_text("tench\ngoldfish\n")
    named = load(
        folder_cfg(tmp_path, train_list="train.txt", test_list="test.txt", class_names_file="names.txt"), tmp_path
    )
    assert named.class_names == ("tench", "goldfish")


def lists(train: str, test: str):
    def write(root):
        (root / "train.txt").write_text(train)
        (root / "test.txt").write_text(test)

    return write


LISTS = {"train_list": "train.txt", "test_list": "test.txt"}


def _corrupt(root):
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


@pytest.mark.parametrize(
    "setup, cfg_kw, message",
    [
        (_corrupt, {}, r"cannot read image .*broken\.png"),
        (
            lambda r: lists("train/cat/000.png 7\n", "test/cat/000.png 0\n")(r) or (r / "n.txt").write_text("a\nb\n"),
            {**LISTS, "class_names_file": "n.txt"},
            r"train\.txt: label 7 of .*000\.png is out of range 0\.\.1",
        ),
        (
            lists("train/cat/000.png 0\ntrain/eel/000.png 2\n", "test/dog/000.png 1\n"),
            LISTS,
            "no training image for class",
        ),
        (lambda r: [p.unlink() for p in (r / "test").rglob("*.*")], {}, "the test split is empty"),
        (lists("train/cat/nope.png 0\n", "test/cat/000.png 0\n"), LISTS, r"names .*nope\.png"),
        (lists("train/cat/000.png\n", ""), LISTS, r"train\.txt:1: expected"),
    ],
)
def test_bad_data_is_exit_3_naming_file_and_reason(tmp_path, setup, cfg_kw, message):
    root = folder_dataset(tmp_path)
    setup(root)
    with pytest.raises(DataError, match=message) as info:
        load(folder_cfg(root, **cfg_kw), tmp_path)
    assert info.value.exit_code == 3


def test_a_test_class_unknown_to_training_is_exit_3_or_excluded_and_reported(tmp_path):
    root = folder_dataset(tmp_path, test={"cat": 3, "dog": 3, "eel": 3, "fox": 4})
    with pytest.raises(DataError, match=r"has 1 class folder\(s\) that .*train lacks: 'fox' \(4 images\)") as info:
        load(folder_cfg(root), tmp_path)
    assert info.value.exit_code == 3 and "data.unknown_test_classes=exclude" in str(info.value)
    data = load(folder_cfg(root, unknown_test_classes="exclude"), tmp_path)
    assert data.class_names == ("cat", "dog", "eel") and len(data.test) == 9
    assert data.excluded_test_classes == ("fox",)
    from ltcompress.api import build_config
    from ltcompress.report import data_info
    from ltcompress.data import shot_groups

    info_dict = data_info(data, shot_groups(data.class_counts, 100, 20), build_config())
    assert info_dict["excluded_test_classes"] == ["fox"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("train_list", "/etc/passwd"),
        ("test_list", "../outside.txt"),
        ("class_names_file", "../names.txt"),
        ("class_names_file", "/etc/hostname"),
    ],
)
def test_list_and_names_files_stay_inside_the_data_dir(tmp_path, key, value):
    root = folder_dataset(tmp_path / "data")
    lists("train/cat/000.png 0\ntrain/dog/000.png 1\n", "test/cat/000.png 0\ntest/dog/000.png 1\n")(root)
    (tmp_path / "outside.txt").write_text("test/cat/000.png 0\n")
    (tmp_path / "names.txt").write_text("a\nb\n")
    settings = {**LISTS, key: value}
    with pytest.raises(DataError, match=f"data.{key}.*(absolute path|leads outside --data-dir)") as info:
        load(folder_cfg(root, **settings), tmp_path)
    assert info.value.exit_code == 3 and "data.confine_paths=false" in str(info.value)
    if value.startswith(".."):  # the opt-out reads it
        load(folder_cfg(root, **settings, confine_paths=False), tmp_path)


def test_skip_corrupt_is_opt_in_and_counted(tmp_path):
    root = folder_dataset(tmp_path)
    _corrupt(root)
    data = load(folder_cfg(root, skip_corrupt=True), tmp_path)
    assert len(data.skipped) == 1 and data.skipped[0].endswith("broken.png")
    assert data.class_counts.tolist() == [12, 6, 2]


# ---------------------------------------------------------------- samplers
LABELS = np.repeat(np.arange(3), [1000, 100, 10])


@pytest.mark.parametrize("kind", ["instance", "class_balanced", "sqrt"])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_share_one_global_stream(kind, world):
    stream = epoch_stream(kind, LABELS, seed=5, epoch=2)
    shares = [rank_share(stream, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1
    usable = len(stream) - len(stream) % world
    rebuilt = np.empty(usable, dtype=stream.dtype)
    for r, share in enumerate(shares):  # disjoint positions whose union is the single-process stream
        rebuilt[r::world] = share
    assert np.array_equal(rebuilt, stream[:usable])


@pytest.mark.parametrize(
    "kind, target",
    [
        ("instance", [1000 / 1110, 100 / 1110, 10 / 1110]),
        ("class_balanced", [1 / 3] * 3),
        ("sqrt", list(np.sqrt([1000, 100, 10]) / np.sqrt([1000, 100, 10]).sum())),
    ],
)
def test_empirical_class_distribution_matches_target(kind, target):
    np.testing.assert_allclose(class_distribution(kind, np.bincount(LABELS)), target)
    draws = np.concatenate([LABELS[epoch_stream(kind, LABELS, seed=0, epoch=e)] for e in range(20)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / len(draws), target, atol=0.01)


def test_streams_are_reproducible_per_seed_and_epoch():
    a, b = epoch_stream("class_balanced", LABELS, 1, 3), epoch_stream("class_balanced", LABELS, 1, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, epoch_stream("class_balanced", LABELS, 1, 4))
    assert sorted(epoch_stream("instance", LABELS, 1, 3)) == list(range(len(LABELS)))


def test_unknown_sampler_is_usage_error():
    with pytest.raises(UsageError, match="unknown sampler 'balanced'. Did you mean: class_balanced"):
        epoch_stream("balanced", LABELS, 0, 0)


# ---------------------------------------------------------------- one short real run per dataset kind
TINY_RUN = {
    "teacher.train.epochs": 1,
    "student.train.epochs": 1,
    "teacher.train.batch_size": 8,
    "student.train.batch_size": 8,
    "data.many_threshold": 10,
    "data.few_threshold": 4,
}


@pytest.mark.slow
def test_cifar10_lt_end_to_end(tmp_path):
    from ltcompress import compress

    archive = write_cifar(tmp_path / "data", CIFAR10, 10)
    result = compress(
        teacher="test_resnet",
        student="test_efficientnet",
        method="bkd",
        dataset="cifar10-lt",
        data_dir=str(archive.parent),
        runs_dir=str(tmp_path / "runs"),
        progress=False,
        overrides={**TINY_RUN, "data.n_max": PER_CLASS, "data.imbalance": 10},
    )
    rep = result.report.to_dict()
    assert rep["config"]["preset"] == "cifar10-lt"  # --dataset brings its preset
    assert rep["data"]["class_counts"] == [int(50 * 10 ** (-i / 9)) for i in range(10)]
    assert rep["parity"]["fp32"]["ok"] and rep["data"]["input"]["source_mode"] == "RGB"


@pytest.mark.slow
def test_imagefolder_end_to_end_with_samplers_and_skipped_image(tmp_path):
    from ltcompress import compress

    root = folder_dataset(tmp_path / "data", train={"cat": 24, "dog": 8, "eel": 3})
    _corrupt(root)
    overrides = {
        **TINY_RUN,
        "data.skip_corrupt": True,
        "teacher.train.sampler": "class_balanced",
        "student.train.sampler": "sqrt",
    }
    result = compress(
        teacher="test_resnet",
        student="test_efficientnet",
        method="kd",
        dataset="imagefolder",
        data_dir=str(root),
        runs_dir=str(tmp_path / "runs"),
        progress=False,
        overrides=overrides,
        gates=["few >= 0.0"],
    )
    rep = result.report.to_dict()
    assert rep["data"]["samplers"] == {"teacher": "class_balanced", "student": "sqrt"}
    assert rep["data"]["skipped_images"] == 1 and rep["data"]["skipped"][0].endswith("broken.png")
    assert rep["data"]["class_names"] == ["cat", "dog", "eel"] and rep["data"]["shot_groups"]["few"] == ["eel"]
    assert rep["teacher"]["recipe"]["sampler"] == "class_balanced"  # part of the teacher's cache key
    assert result.passed and (result.bundle_dir / "model.onnx").is_file()
