"""The code base is lint-clean, formatted and type-checked (ruff and mypy, configured in pyproject.toml), so the
README's test command, which CI runs, checks all three."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)


def test_ruff_finds_nothing():
    proc = _run("ruff", "check", "--no-cache", str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_would_change_nothing():
    proc = _run("ruff", "format", "--check", "--no-cache", str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_nothing_in_the_package():
    proc = _run("mypy")  # files and options: [tool.mypy]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues found" in proc.stdout
