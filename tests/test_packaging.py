"""What a user installs: `python -m build` makes an sdist and a wheel holding the package, its presets and the
edge runtime; the wheel, installed into a fresh virtual environment, runs from outside the source tree."""

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import tiny_cli_args

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """sdist and wheel of a copy of the source tree (no build isolation: nothing is downloaded)."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO,
        src,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "runs", "bench-runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"
        ),
    )
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    shutil.rmtree(src)  # nothing may still point at the source tree
    (sdist,), (wheel,) = (list((tmp_path / "dist").glob(pattern)) for pattern in ("*.tar.gz", "*.whl"))
    return sdist, wheel


def _venv(tmp_path: Path) -> Path:
    """A fresh venv that sees the test venv's packages (torch is not installed twice) after its own, without
    running the test venv's .pth files, so the editable ltcompress of the source tree stays out."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    own = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(own, "test_venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_built_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    sdist, wheel = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "ltcompress/cli.py",
        "ltcompress/presets/fmnist-lt.yaml",
        "ltcompress/edge/runtime.py",
        "ltcompress/edge/BUNDLE_README.md",
    ):
        assert needed in names, needed
    assert not any(n.startswith(("presets/", "export/", "tests/", "bench/")) for n in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Provides-Extra: report" in metadata and 'matplotlib>=3.7; extra == "report"' in metadata
    in_sdist = tarfile.open(sdist).getnames()
    assert any(n.endswith("presets/fmnist-lt.yaml") for n in in_sdist)
    assert any(n.endswith("export/runtime.py") for n in in_sdist)

    venv = _venv(tmp_path)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "LTCOMPRESS_CACHE": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "ltcompress"), *args], capture_output=True, text=True, env=env, cwd=work
        )

    assert cli("--help").returncode == 0
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import ltcompress, ltcompress.edge.runtime as r; print(ltcompress.__file__); print(r.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=work,
        env=env,
    ).stdout.splitlines()
    assert all(line.startswith(str(venv)) for line in where)  # the installed copy, not the source tree
    methods = cli("list-methods")
    assert methods.returncode == 0 and "krdistill" in methods.stdout and "bkd" in methods.stdout
    assert "fmnist-lt-bench" in cli("list-presets").stdout
    run = cli("run", *tiny_cli_args(method="bkd", name="w", runs_dir=str(work / "runs")), "--int8")
    assert run.returncode == 0, run.stderr
    bundle = work / "runs" / "w" / "bundle"
    assert (bundle / "export" / "runtime.py").is_file() and (bundle / "model.int8.onnx").is_file()
