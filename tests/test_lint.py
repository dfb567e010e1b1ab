"""The code base is lint-clean (ruff, configured in pyproject.toml: pycodestyle, pyflakes, bugbear, 120 columns),
so the README's test command, which CI runs, checks it too."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
