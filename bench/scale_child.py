"""bench/scale.py, measurements 1 and 2: an `ltcompress run` child process on a synthetic tree, its peak memory
(and its process tree's, workers included) and the seconds to its milestones, up to its first training step."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from synthetic_tree import TEACHER

STUDENT = "mobilenetv3_small_100"
SIZE = 224
FIRST_STEP = "student: first training step done"


# ---------------------------------------------------------------- 1 + 2: an `ltcompress run` child
def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over `pid` and all its descendants (the DataLoader workers). PSS splits pages
    shared after fork between the processes, so the PSS sum is the tree's real footprint; the RSS sum counts
    shared pages once per process."""
    pids, rss, pss = [pid], 0, 0
    while pids:
        p = pids.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                pids += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kb = int(line.split()[1]) * 1024
                    rss, pss = (rss + kb, pss) if line.startswith("Rss:") else (rss, pss + kb)
        except (OSError, ValueError):
            continue  # the process ended between the listing and the read
    return rss, pss


@dataclass
class RunResult:
    milestones: dict[str, float] = field(default_factory=dict)  # seconds since launch
    peak_rss_main: int = 0  # bytes, wait4's ru_maxrss: the largest single process (the main one)
    peak_tree_rss: int = 0
    peak_tree_pss: int = 0
    exit_code: int | None = None
    steps: int | None = None
    tail: list[str] = field(default_factory=list)


def _poll_memory(pid: int, result: RunResult, done: threading.Event) -> None:
    """Samples the process tree's memory every 0.2 s until `done`, keeping the peaks."""
    while not done.wait(0.2):
        rss, pss = tree_memory(pid)
        result.peak_tree_rss = max(result.peak_tree_rss, rss)
        result.peak_tree_pss = max(result.peak_tree_pss, pss)


MILESTONES = {
    "data: decoded lazily": "data indexed + stats",
    "run directory:": "run folder written",
    "teacher:": "teacher loaded",
    FIRST_STEP: "first step",
}


def run_child(cmd: list[str], env: dict[str, str], limit_s: float) -> RunResult:
    """Launches `cmd`, timestamps its log lines live, sends SIGINT at the first training step (the run
    checkpoints after the step in flight and exits 130) and reaps it with wait4 for its own peak RSS."""
    result, done = RunResult(), threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    poller = threading.Thread(target=_poll_memory, args=(proc.pid, result, done), daemon=True)
    poller.start()
    watchdog = threading.Timer(limit_s, proc.send_signal, args=(signal.SIGINT,))
    watchdog.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        now = time.perf_counter() - t0
        result.tail = (result.tail + [line.rstrip()])[-15:]
        for needle, name in MILESTONES.items():
            if needle in line and name not in result.milestones:
                result.milestones[name] = now
                if needle == FIRST_STEP:
                    proc.send_signal(signal.SIGINT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = result.exit_code = os.waitstatus_to_exitcode(status)
    result.milestones["exited"] = time.perf_counter() - t0
    watchdog.cancel()
    done.set()
    poller.join()
    result.peak_rss_main = usage.ru_maxrss * 1024  # kB on Linux
    return result


def measure_run(tree: Path, teacher: Path, work: Path, batch: int, limit_s: float) -> RunResult:
    """One `ltcompress run` on the lazy path at 224 px with timm augmentation (what a user with a folder of
    JPEGs too large for memory runs), stopped at its first step; its run folder is removed afterwards."""
    name = f"scale-{tree.name}-{os.getpid()}-{int(time.time())}"
    runs = work / "runs"
    cmd = [
        sys.executable,
        "-m",
        "ltcompress",
        "run",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(tree),
        "--teacher",
        TEACHER,
        "--student",
        STUDENT,
        "--method",
        "kd",
        "--teacher-weights",
        str(teacher),
        "--student-init",
        "scratch",
        "--device",
        "cpu",
        "--no-progress",
        "--runs-dir",
        str(runs),
        "--name",
        name,
        "--set",
        f"data.input_size={SIZE}",
        "--set",
        "data.in_memory=false",
        "--set",
        "data.augment=timm",
        "--set",
        f"student.train.batch_size={batch}",
        "--set",
        f"run.cache_dir={work / 'cache'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = run_child(cmd, env, limit_s)
    ckpt = runs / name / "checkpoints" / "student-last.pt"
    if ckpt.is_file():
        import torch

        result.steps = int(torch.load(ckpt, map_location="cpu", weights_only=True)["step"])
    if result.exit_code != 130 or result.steps is None:
        print("\n".join(result.tail), file=sys.stderr)
    shutil.rmtree(runs / name, ignore_errors=True)
    return result
