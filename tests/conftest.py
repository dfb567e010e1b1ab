"""Shared fixtures. Tests never touch the network or the user's cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # hub downloads fail in 0.05 s instead of 47 s
os.environ.setdefault("LTCOMPRESS_OFFLINE", "1")

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# A tiny but real configuration: real Fashion-MNIST images, 403 long-tailed training images, 300 test images,
# thresholds chosen so Many, Medium and Few all exist (counts 100, 77, 59, 46, 35, 27, 21, 16, 12, 10).
TINY = {
    "data.n_max": 100, "data.imbalance": 10, "data.test_per_class": 30,
    "data.many_threshold": 50, "data.few_threshold": 15,
    "teacher.train.epochs": 2, "student.train.epochs": 2,
}
TINY_MODELS = {"teacher": "test_resnet", "student": "test_efficientnet"}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def fmnist() -> Path:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (.ci/run does this)")
    return FMNIST_DIR


def tiny_cli_args(**extra: str) -> list[str]:
    args = ["--teacher", TINY_MODELS["teacher"], "--student", TINY_MODELS["student"], "--no-progress"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args
