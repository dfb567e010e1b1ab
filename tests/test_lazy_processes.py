"""The lazy path's processes: Ctrl-C with DataLoader workers running stops them cleanly (and a folder changed
before --resume is refused), and a SIGKILLed main process leaves no orphan worker behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import lazy_cli_args, photo_tree, run_cli


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return photo_tree(tmp_path_factory.mktemp("photos"))


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(root: Path, runs: Path, name: str, *extra: str) -> tuple[subprocess.Popen, list[int]]:
    """A real run with 2 workers, stopped while they are up (after its first student step)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ltcompress",
            "run",
            *lazy_cli_args(root, runs, name, "--set", "data.workers=2", "--set", "student.train.epochs=30", *extra),
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    deadline = time.time() + 240
    for line in proc.stderr:
        if "student: first training step done" in line or time.time() > deadline:
            break
    workers = [pid for pid in _children(proc.pid) if _alive(pid)]
    return proc, workers


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_workers_cleanly_and_a_changed_folder_is_refused_on_resume(tree, tmp_path, capsys):
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(tree, root)
    proc, workers = _start(root, tmp_path / "runs", "stopped")
    assert workers, "the run should have decoding workers while it trains"
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    time.sleep(1)
    assert not any(_alive(pid) for pid in workers)
    (root / "train" / "class 3" / "new.png").write_bytes((root / "train" / "class 3" / "000.png").read_bytes())
    code, _, err = run_cli(
        [
            "run",
            *lazy_cli_args(
                root,
                tmp_path / "runs",
                "stopped",
                "--set",
                "data.workers=2",
                "--set",
                "student.train.epochs=30",
                "--resume",
            ),
        ],
        capsys,
    )
    assert code == 3 and "data changed" in err and "1 added" in err and "new.png" in err


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_the_main_process_leaves_no_orphan_workers(tree, tmp_path):
    proc, workers = _start(tree, tmp_path / "runs", "killed")
    assert workers
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 15
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers)
