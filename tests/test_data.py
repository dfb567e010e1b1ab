import dataclasses
import gzip

import numpy as np
import pytest
import torch

from ltcompress.config import recipe_data
from ltcompress.data import longtail_counts, longtail_indices, random_crop_flip, shot_groups, to_batch
from ltcompress.data.fmnist import load_fmnist_lt, locate_fmnist
from ltcompress.errors import DataError


def test_exponential_profile_matches_ldam_formula():
    counts = longtail_counts(1000, 10, 100.0, "exp")
    # 1000, 599, 359, 215, 129, 77, 46, 27, 16, 10: 2478 images (the benchmark issue's "248 per class")
    assert counts == [int(1000 * 100 ** (-i / 9)) for i in range(10)]


def test_step_profile():
    assert longtail_counts(500, 10, 10.0, "step") == [500] * 5 + [50] * 5


def test_longtail_indices_are_seeded_and_exact():
    labels = np.repeat(np.arange(4), 50)
    counts = [40, 20, 10, 5]
    a, b = longtail_indices(labels, counts, seed=3), longtail_indices(labels, counts, seed=3)
    assert np.array_equal(a, b)
    assert np.bincount(labels[a]).tolist() == counts
    assert not np.array_equal(a, longtail_indices(labels, counts, seed=4))


def test_shot_groups_report_absent_group_as_empty():
    groups = shot_groups(np.array([500, 150, 101, 100, 20, 19]), many=100, few=20)
    assert groups == {"many": [0, 1, 2], "medium": [3, 4], "few": [5]}
    assert shot_groups(np.array([50, 30, 25]))["many"] == []


def test_fmnist_lt_real_data(fmnist):
    data = load_fmnist_lt(recipe_data(), cache_root=None)
    assert data.class_counts.tolist() == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert len(data.test) == 10000 and np.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.train.images.shape[1:] == (3, 32, 32) and data.train.images.dtype == np.uint8
    assert (data.train.images[:, :, :2, :] == 0).all()  # 28 -> 32 zero padding
    assert np.array_equal(data.train.images[:, 0], data.train.images[:, 2])  # gray repeated
    groups = shot_groups(data.class_counts)
    assert all(groups[g] for g in ("many", "medium", "few"))
    again = load_fmnist_lt(recipe_data(), cache_root=None)
    assert again.fingerprint == data.fingerprint
    assert load_fmnist_lt(recipe_data(seed=1), cache_root=None).fingerprint != data.fingerprint


def test_fmnist_resize_upsamples_instead_of_padding(fmnist):
    cfg = recipe_data(n_max=50, imbalance=5, test_per_class=5, input_size=64)
    padded, resized = load_fmnist_lt(cfg, None), load_fmnist_lt(dataclasses.replace(cfg, resize=True), None)
    assert padded.spec.source_size == 28 and resized.spec.source_size == 64  # what the bundle runtime does
    assert (padded.train.images[:, :, :18, :] == 0).all()  # 28 px centred in 64 px
    assert resized.train.images.shape == padded.train.images.shape == (len(padded.train), 3, 64, 64)
    assert resized.train.images[:, :, :18, :].any()  # the garment fills the frame
    assert resized.fingerprint != padded.fingerprint  # so teachers are cached apart


def test_explicit_data_dir_without_files_is_exit_3(tmp_path, monkeypatch):
    from ltcompress.config import resolve

    with pytest.raises(DataError, match="does not hold the Fashion-MNIST files") as info:
        locate_fmnist(str(tmp_path), tmp_path)
    assert info.value.exit_code == 3
    monkeypatch.setenv("LTCOMPRESS_DATA", str(tmp_path / "nowhere"))
    cfg = resolve(None, {})
    assert cfg.data.data_dir == str(tmp_path / "nowhere")  # read when the config resolves, recorded in it
    with pytest.raises(DataError, match=r"\$LTCOMPRESS_DATA"):
        load_fmnist_lt(cfg.data, tmp_path)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not gzip at all", "cannot read"),
        (gzip.compress(b"\x00\x00\x08\x07" + b"\x00" * 8), "not an IDX"),
        (gzip.compress(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3), "truncated"),
    ],
)
def test_corrupt_files_are_exit_3_naming_the_file(tmp_path, payload, reason):
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / f"{stem}.gz").write_bytes(payload)
    with pytest.raises(DataError, match=reason) as info:
        load_fmnist_lt(recipe_data(data_dir=str(tmp_path)), tmp_path)
    assert "ubyte.gz" in str(info.value)


def test_random_crop_flip_is_reproducible_and_content_preserving():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = random_crop_flip(x, 2, g1), random_crop_flip(x, 2, g2)
    assert torch.equal(a, b) and a.shape == x.shape
    same = random_crop_flip(x, 0, torch.Generator().manual_seed(1))  # no padding: identity or mirror only
    for i in range(2):
        assert torch.equal(same[i], x[i]) or torch.equal(same[i], x[i].flip(-1))


def test_to_batch_normalises_with_the_spec(fmnist):
    data = load_fmnist_lt(recipe_data(n_max=50, imbalance=5), cache_root=None)
    x, y = to_batch(data.train.images, data.train.labels, data.spec, torch.device("cpu"))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(x[:, 0].mean())) < 1e-3 and abs(float(x[:, 0].std()) - 1) < 1e-2
