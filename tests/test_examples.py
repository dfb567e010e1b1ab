"""Every script in examples/ runs here, on real images with tiny timm models, so the examples cannot rot."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, TINY_MODELS
from ltcompress.methods.kd import kd_loss

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY_SETS = [f"{k}={v}" for k, v in TINY.items()]


def _run(args, tmp_path, env_extra=None, timeout=600):
    env = {**os.environ, "LTCOMPRESS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=timeout)


def _example_module(name, monkeypatch):
    """Import an example in this process without letting it register anything in the shared registries."""
    import ltcompress

    monkeypatch.setattr(ltcompress, "register_method", lambda *args, **kwargs: None)
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A long-tailed ImageFolder of real Fashion-MNIST images: 4 classes with 80/40/20/8 training images."""
    from ltcompress.config import recipe_data
    from ltcompress.data.fmnist import load_fmnist_lt

    root = tmp_path_factory.mktemp("folder")
    test = load_fmnist_lt(recipe_data(n_max=10, imbalance=1, test_per_class=120), root / "cache").test
    names = ("Trouser", "Bag", "Sneaker", "Ankle boot")
    classes = (1, 8, 7, 9)
    for split, counts in (("train", (80, 40, 20, 8)), ("test", (30, 30, 30, 30))):
        for name, label, count in zip(names, classes, counts):
            folder = root / split / name
            folder.mkdir(parents=True)
            idx = (
                np.flatnonzero(test.labels == label)[:count]
                if split == "train"
                else np.flatnonzero(test.labels == label)[-count:]
            )
            for i in idx:
                Image.fromarray(test.images[i, 0, 2:30, 2:30]).save(folder / f"{i:05d}.png")
    return root


@pytest.mark.slow
def test_compress_imagefolder_acts_on_failed_and_passed_gates(image_folder, tmp_path):
    base = [
        sys.executable,
        str(EXAMPLES / "compress_imagefolder.py"),
        str(image_folder),
        "--teacher",
        TINY_MODELS["teacher"],
        "--student",
        TINY_MODELS["student"],
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
    ]
    failed = _run([*base, "--gate", "int8.balanced > 0.99", "--gate", "int8.few >= 0"], tmp_path)
    assert failed.returncode == 5, failed.stderr[-2000:]
    assert "FAILED int8.balanced > 0.99: int8.balanced = " in failed.stdout
    assert "classes to look at first" in failed.stdout and "training images" in failed.stdout
    passed = _run([*base, "--gate", "int8.few >= 0", "--gate", "drop(fp32, int8).balanced <= 1"], tmp_path)
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert "all 2 gates passed; copy" in passed.stdout
    bundles = sorted((tmp_path / "runs").glob("*/bundle"))
    assert len(bundles) == 1 and (bundles[0] / "model.int8.onnx").is_file()
    bad = _run([*base[:2], str(tmp_path / "nowhere")], tmp_path)
    assert bad.returncode == 3 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1


@pytest.mark.slow
def test_custom_method_registers_from_outside_and_runs(tmp_path):
    args = [
        sys.executable,
        str(EXAMPLES / "custom_method.py"),
        "--teacher",
        TINY_MODELS["teacher"],
        "--student",
        TINY_MODELS["student"],
        "--gate",
        "few >= 0",
    ]
    proc = _run([*args, *[a for s in TINY_SETS for a in ("--set", s)]], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "method recorded as 'tailkd' (examples/custom_method.py (illustration))" in proc.stdout
    [report] = (tmp_path / "runs").glob("*/report.json")
    assert json.loads(report.read_text())["method"]["params"] == {"T": 4.0, "power": 0.5}


def test_custom_method_loss_at_power_0_is_plain_kd(monkeypatch):
    example = _example_module("custom_method", monkeypatch)
    torch.manual_seed(0)
    zs, zt, y = torch.randn(16, 5), torch.randn(16, 5), torch.randint(0, 5, (16,))
    got = example.tail_weighted_kd_loss(zs, zt, y, torch.ones(5), T=4.0)
    assert torch.allclose(got, kd_loss(zs, zt, y, T=4.0, a_ce=1.0, a_kd=1.0), atol=1e-6)
    rare_heavy = example.tail_weighted_kd_loss(zs, zt, y, torch.tensor([0.0, 0, 0, 0, 5]), T=4.0)
    assert not torch.allclose(got, rare_heavy)


@pytest.mark.slow
def test_edge_inference_runs_without_torch_or_ltcompress(passed_run, tmp_path):
    run, _ = passed_run
    from ltcompress.config import recipe_data
    from ltcompress.data.fmnist import load_fmnist_lt

    test = load_fmnist_lt(
        recipe_data(
            n_max=TINY["data.n_max"], imbalance=TINY["data.imbalance"], test_per_class=TINY["data.test_per_class"]
        ),
        tmp_path,
    ).test
    images = tmp_path / "images"
    images.mkdir()
    for i in range(30):
        Image.fromarray(test.images[i, 0, 2:30, 2:30]).save(images / f"{i:03d}.png")
    blocker = tmp_path / "blocked"
    for package in ("torch", "ltcompress"):
        (blocker / package).mkdir(parents=True)
        (blocker / package / "__init__.py").write_text(f"raise ImportError('{package} is not on this device')\n")
    out = tmp_path / "pred.json"
    proc = _run(
        [
            sys.executable,
            str(EXAMPLES / "edge_inference.py"),
            str(run / "bundle"),
            str(images),
            "--int8",
            "--json",
            str(out),
        ],
        tmp_path,
        {"PYTHONPATH": str(blocker)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("30 images with model.int8.onnx")
    got = [r["class_index"] for r in json.loads(out.read_text())]
    assert got == np.load(run / "predictions.npz")["int8"][:30].tolist()


@pytest.mark.slow
def test_scale_out_with_torchrun(tmp_path):
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(EXAMPLES / "scale_out.py"),
        "--teacher",
        TINY_MODELS["teacher"],
        "--student",
        TINY_MODELS["student"],
        "--name",
        "ddp",
        *[a for s in TINY_SETS for a in ("--set", s)],
        "--set",
        "teacher.train.batch_size=16",
        "--set",
        "student.train.batch_size=16",
    ]
    proc = _run(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("2 processes: balanced") == 1  # rank 0 alone reports
    assert (tmp_path / "runs" / "ddp" / "report.json").is_file()
