"""Checkpoint and resume: a killed or interrupted run continues to the bit-identical student."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_MODELS, tiny_cli_args, tiny_distill
from ltcompress import checkpoint, models
from ltcompress.cli import main
from ltcompress.rundir import atomic_torch_save

EPOCHS = 3


def _train(stop_after_epoch=None, resume=None, saved=None):
    """Distill test_resnet -> test_efficientnet on generated data; with `stop_after_epoch`, Ctrl-C arrives then
    (the loop finishes the step it is in, checkpoints mid-epoch and raises KeyboardInterrupt)."""

    def on_epoch(record):
        if record["epoch"] == stop_after_epoch:
            os.kill(os.getpid(), signal.SIGINT)

    student, _, _ = tiny_distill(
        "bkd",
        epochs=EPOCHS,
        batch_size=8,
        on_epoch=on_epoch,
        resume=resume,
        checkpoint=None if saved is None else lambda state: saved.append(copy.deepcopy(state)),
    )
    return student


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_ctrl_c_checkpoints_mid_epoch_and_resume_is_bit_identical(tmp_path):
    reference = _train()
    saved = []
    with pytest.raises(KeyboardInterrupt):
        _train(stop_after_epoch=1, saved=saved)
    last = saved[-1]
    assert (last["epoch"], last["step"]) == (1, 1)  # one step into epoch 2, not at a boundary
    atomic_torch_save(tmp_path / "ckpt.pt", last)  # through the file: weights_only must be able to read it back
    resumed = _train(resume=checkpoint.load(tmp_path / "ckpt.pt"))
    assert _same(resumed, reference)


def test_resume_from_an_epoch_boundary_is_bit_identical():
    reference, saved = _train(), []
    _train(saved=saved)
    assert [(s["epoch"], s["step"]) for s in saved] == [(1, 0), (2, 0), (3, 0)]
    assert _same(_train(resume=saved[0]), reference)
    assert len(saved[0]["history"]) == 1


def test_config_differences_name_the_keys():
    assert checkpoint.differences({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 2, "c": (1, 2)}}) == ["a.b: 1 -> 2"]


def test_unreadable_checkpoint_is_refused_not_unpickled(tmp_path):
    bad = tmp_path / "student-last.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(Exception, match="cannot be read safely"):
        checkpoint.load(bad)
    assert checkpoint.load(tmp_path / "none.pt") is None


# ---------------------------------------------------------------- real runs through the CLI
def _cli(tmp_path, name, *extra):
    args = tiny_cli_args(method="bkd", name=name, runs_dir=str(tmp_path / "runs"), epochs="4")
    return [*args, "--set", "student.train.batch_size=8", "--set", "teacher.train.batch_size=8", *extra]


def _run(argv, capsys):
    try:
        main(["run", *argv])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    start = time.monotonic()
    while not path.is_file():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, sig", [("student", signal.SIGKILL), ("teacher", signal.SIGKILL), ("student", signal.SIGINT)]
)
def test_killed_real_run_resumes_to_the_same_student(stage, sig, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "cache"))
    assert _run(_cli(tmp_path, "whole"), capsys)[0] == 0
    if stage == "teacher":  # the teacher must train again in the killed run, not come from the cache
        monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "cache2"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ltcompress", "run", *_cli(tmp_path, "killed")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    ckpt = tmp_path / "runs" / "killed" / "checkpoints" / f"{stage}-last.pt"
    _wait_for(ckpt, proc)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "--resume" in err, err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "runs" / "killed" / "report.json").exists()
    code, err = _run([*_cli(tmp_path, "killed"), "--resume"], capsys)
    assert code == 0, err
    whole = load_file(str(tmp_path / "runs" / "whole" / "student.safetensors"))
    resumed = load_file(str(tmp_path / "runs" / "killed" / "student.safetensors"))
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.slow
def test_resume_refuses_other_settings_another_teacher_and_finished_runs(tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "teacher.safetensors"
    save_file(models.create(TINY_MODELS["teacher"], 10).state_dict(), str(weights))
    argv = _cli(tmp_path, "r", "--teacher-weights", str(weights))
    assert _run(argv, capsys)[0] == 0
    report = tmp_path / "runs" / "r" / "report.json"
    assert "finished" in _run([*argv, "--resume"], capsys)[1]
    report.unlink()  # as if killed after the last checkpoint
    code, err = _run([*argv, "--resume", "--set", "student.train.lr=0.1"], capsys)
    assert code == 2 and "student.train.lr: 0.05 -> 0.1" in err, err
    torch.manual_seed(1)
    save_file(models.create(TINY_MODELS["teacher"], 10).state_dict(), str(weights))  # same path, other weights
    code, err = _run([*argv, "--resume"], capsys)
    assert code == 2 and "teacher sha256" in err
    code, err = _run([*_cli(tmp_path, "absent"), "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err
    code, err = _run([*tiny_cli_args(method="bkd"), "--resume"], capsys)
    assert code == 2 and "--resume needs --name" in err
