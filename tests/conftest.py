"""Shared fixtures. Tests never touch the network or the user's cache."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # hub downloads fail in 0.05 s instead of 47 s
# an empty Hugging Face cache of the tests' own: `auto` inits never depend on what this machine has cached
os.environ["HF_HUB_CACHE"] = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ltcompress-tests-hf-{os.getpid()}")
os.environ.setdefault("LTCOMPRESS_OFFLINE", "1")

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# A tiny but real configuration: real Fashion-MNIST images, 403 long-tailed training images, 300 test images,
# thresholds chosen so Many, Medium and Few all exist (counts 100, 77, 59, 46, 35, 27, 21, 16, 12, 10).
TINY = {
    "data.n_max": 100, "data.imbalance": 10, "data.test_per_class": 30,
    "data.many_threshold": 50, "data.few_threshold": 15,
    "teacher.train.epochs": 2, "student.train.epochs": 2,
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


def tiny_cli_args(**extra: str) -> list[str]:
    args = ["--teacher", TINY_MODELS["teacher"], "--student", TINY_MODELS["student"], "--no-progress"]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", value]
    return args


LTCOMPRESS = Path(sys.executable).parent / "ltcompress"
PASSING_GATES = ["few >= 0.0", "student.balanced >= 0.0", "int8.worst >= 0.0", "int8.class[Ankle boot] >= 0",
                 "drop(fp32, int8).few <= 1", "flip(fp32, int8) <= 1", "flip(student, int8).few <= 1",
                 "int8.agreement >= 0"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def passed_run(workdir):
    """One real run through the console script, with INT8 and gates of every kind that pass: exit 0."""
    env = {**os.environ, "LTCOMPRESS_CACHE": str(workdir / "cache")}
    args = [str(LTCOMPRESS), "run", *tiny_cli_args(method="bkd", name="ok", runs_dir=str(workdir / "runs")),
            "--int8", *[a for g in PASSING_GATES for a in ("--gate", g)], "--set", "export.speed_budget_s=0.05"]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    return workdir / "runs" / "ok", proc
