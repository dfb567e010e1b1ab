"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"  # hub downloads fail in 0.05 s instead of 47 s
# an empty Hugging Face cache of the tests' own: `auto` inits never depend on what this machine has cached
os.environ["HF_HUB_CACHE"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ltcompress-tests-hf-{os.getpid()}")
os.environ.setdefault("LTCOMPRESS_OFFLINE", "1")

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# A tiny but real configuration: real Fashion-MNIST images, 403 long-tailed training images, 300 test images,
# thresholds chosen so Many, Medium and Few all exist (counts 100, 77, 59, 46, 35, 27, 21, 16, 12, 10).
TINY = {
    "data.n_max": 100,
    "data.imbalance": 10,
    "data.test_per_class": 30,
    "data.many_threshold": 50,
    "data.few_threshold": 15,
    "teacher.train.epochs": 2,
    "student.train.epochs": 2,
    "export.speed_budget_s": 0,  # no latency measurement (passed_run measures it, briefly)
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


def cli_exit(args: list[str]) -> int:
    """Run the CLI in this process; its exit code (0 when it returns normally)."""
    from ltcompress.cli import main

    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli_exit(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_COUNTS = [40, 20, 10, 6]  # the generated long-tailed tensors of the in-process training tests


def tiny_data(seed: int = 0):
    """Generated long-tailed images (a learnable corner mark per class) as an in-memory LTData."""
    import numpy as np

    from ltcompress.data import InputSpec, LTData, Split

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(TINY_COUNTS)), TINY_COUNTS)
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    images[:, 0, :4, :4] = (labels * 60)[:, None, None]  # something learnable
    spec = InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3, "RGB", 32)
    test = Split(images[::3].copy(), labels[::3].copy())
    return LTData(Split(images, labels), test, np.array(TINY_COUNTS), ("a", "b", "c", "d"), spec, "synthetic")


def tiny_method(name: str, epochs: int, **params):
    """A registered method built the way the pipeline builds it, for TINY_COUNTS."""
    import torch

    from ltcompress.methods import METHODS
    from ltcompress.methods.base import MethodContext

    cls = METHODS.get(name)
    return cls(cls.make_params(params), MethodContext(torch.tensor(TINY_COUNTS, dtype=torch.float32), epochs))


def tiny_distill(
    method_name: str = "bkd",
    teacher="test_resnet",
    *,
    seed: int = 0,
    epochs: int = 2,
    batch_size: int = 16,
    params=None,
    recipe=None,
    options=None,
    **train_kwargs,
):
    """The one tiny in-process training the loop tests share: seed, a new `teacher` architecture (or the module
    given, or None), test_efficientnet on tiny_data(), the method prepared, trained on the CPU. Returns
    (student, method, result)."""
    import torch

    from ltcompress import models
    from ltcompress.config import TrainConfig
    from ltcompress.loop import LoopOptions, prepare_method, train

    torch.manual_seed(seed)
    if isinstance(teacher, str):
        teacher = models.create(teacher, len(TINY_COUNTS))
    method, data, cpu = tiny_method(method_name, epochs, **(params or {})), tiny_data(), torch.device("cpu")
    student, _ = prepare_method(method, models.create("test_efficientnet", len(TINY_COUNTS)), teacher, data, cpu, 32)
    result = train(
        student,
        method,
        data,
        TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.05, **(recipe or {})),
        cpu,
        stage="student",
        seed=seed,
        teacher=teacher,
        options=options or LoopOptions(progress=False),
        **train_kwargs,
    )
    return student, method, result


def tiny_cli_args(**extra: str) -> list[str]:
    args = ["--teacher", TINY_MODELS["teacher"], "--student", TINY_MODELS["student"], "--no-progress"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


LTCOMPRESS = Path(sys.executable).parent / "ltcompress"
PASSING_GATES = [
    "few >= 0.0",
    "student.balanced >= 0.0",
    "int8.worst >= 0.0",
    "int8.class[Ankle boot] >= 0",
    "drop(fp32, int8).few <= 1",
    "flip(fp32, int8) <= 1",
    "flip(student, int8).few <= 1",
    "int8.agreement >= 0",
]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def passed_run(workdir):
    """One real run through the console script, with INT8 and gates of every kind that pass: exit 0."""
    env = {**os.environ, "LTCOMPRESS_CACHE": str(workdir / "cache")}
    args = [
        str(LTCOMPRESS),
        "run",
        *tiny_cli_args(method="bkd", name="ok", runs_dir=str(workdir / "runs")),
        "--int8",
        *[a for g in PASSING_GATES for a in ("--gate", g)],
        "--set",
        "export.speed_budget_s=0.05",
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    return workdir / "runs" / "ok", proc


def write_jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    """A small JPEG of a random size (40-80 px a side) in `mode`: RGB, L (gray) or CMYK (ImageNet has both)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = (int(v) for v in rng.integers(40, 81, 2))
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
    img.save(path, "JPEG", quality=80)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


PHOTO_COUNTS = [24, 12, 6, 4]


def photo_tree(root: Path, counts=PHOTO_COUNTS, test_per_class: int = 4, seed: int = 0) -> Path:
    """JPEG and PNG files of odd sizes and both modes, in train/<class>/ and test/<class>/."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", counts), ("test", [test_per_class] * len(counts))):
        for c, n in enumerate(per_class):
            folder = root / split / f"class {c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(40, 90, 2))
                arr = np.clip(rng.normal(60 * c + 30, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                img = Image.fromarray(arr).convert("L" if i % 3 == 0 else "RGB")
                img.save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root


def lazy_cli_args(root: Path, runs: Path, name: str, *extra: str) -> list[str]:
    """`ltcompress run` on a photo_tree folder, lazily, with the tiny models and a short schedule."""
    return [
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(root),
        "--teacher",
        TINY_MODELS["teacher"],
        "--student",
        TINY_MODELS["student"],
        "--method",
        "kd",
        "--no-progress",
        "--runs-dir",
        str(runs),
        "--name",
        name,
        "--teacher-init",
        "scratch",
        "--set",
        "data.input_size=32",
        "--set",
        "data.in_memory=false",
        "--set",
        "teacher.train.epochs=1",
        "--set",
        "student.train.epochs=2",
        "--set",
        "teacher.train.batch_size=8",
        "--set",
        "student.train.batch_size=8",
        *extra,
    ]


def flat_keys(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as dotted keys (argument mappings stay one value)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not key.endswith("args"):  # method.args, teacher.rebalance_args
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
