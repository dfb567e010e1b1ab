"""Locks through their public API only (filelock underneath, so the same code path runs on Windows and macOS):
a run directory held by one process is exit 2 for another, and free again once released or once its holder
died; cache entries lock and unlock."""

import subprocess
import sys

import pytest

from ltcompress import rundir
from ltcompress.errors import UsageError

REOPEN = """import sys
from ltcompress import rundir
from ltcompress.errors import UsageError
try:
    rundir.reopen(sys.argv[1], "r").close()
    print("reopened")
except UsageError as exc:
    print("refused:", exc)
"""


def _reopen_elsewhere(runs) -> str:
    return subprocess.run(
        [sys.executable, "-c", REOPEN, str(runs)], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_held_run_directory_is_refused_to_another_process_then_free(tmp_path):
    run = rundir.create(tmp_path, "r", "unused")
    (run.path / "config.yaml").write_text("seed: 0\n")
    assert _reopen_elsewhere(tmp_path) == f"refused: run directory {run.path} is locked by another process"
    run.close()
    assert _reopen_elsewhere(tmp_path) == "reopened"
    with pytest.raises(UsageError, match="already exists"):
        rundir.create(tmp_path, "r", "unused")


def test_a_lock_dies_with_its_process(tmp_path):
    run = rundir.create(tmp_path, "r", "unused")
    (run.path / "config.yaml").write_text("seed: 0\n")
    run.close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom ltcompress import rundir\n"
            "run = rundir.reopen(sys.argv[1], 'r')\nprint('held', flush=True)\ntime.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert _reopen_elsewhere(tmp_path).startswith("refused")
    holder.kill()
    holder.wait()
    assert _reopen_elsewhere(tmp_path) == "reopened"  # no stale lock after a crash


def test_cache_entry_lock_is_taken_and_released(tmp_path):
    folder = tmp_path / "entry"
    for shared in (True, False, True):
        with rundir.entry_lock(folder, shared=shared):
            assert (folder / ".lock").exists()
