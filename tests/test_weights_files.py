"""Every weights file a run starts from is judged in the plan step, before a run folder exists and before any
model trains: a damaged file, an unsafe pickle or weights of another architecture are exit 2 naming the option
and the file, and the run leaves nothing behind (not even a trained teacher in the cache)."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_MODELS, run_cli, tiny_cli_args
from ltcompress import models

FASHION = 10  # Fashion-MNIST's classes


class Payload:
    def __reduce__(self):
        return (print, ("payload ran",))


def _files(tmp_path):
    """Weights files as users hand them over by mistake, each with what the error must say."""
    good_other_arch = models.create(TINY_MODELS["teacher"], FASHION).state_dict()
    truncated = tmp_path / "truncated.safetensors"
    save_file(models.create(TINY_MODELS["student"], FASHION).state_dict(), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:200])
    other = tmp_path / "other-arch.safetensors"
    save_file(good_other_arch, str(other))
    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps({"w": Payload()}))
    return {
        "truncated": (truncated, "is not a readable safetensors file"),
        "other-arch": (other, "does not fit"),
        "unsafe": (unsafe, "cannot be loaded safely (weights_only=True)"),
    }


@pytest.mark.parametrize("option", ["--student-weights", "--student-init", "--teacher-init"])
@pytest.mark.parametrize("kind", ["truncated", "other-arch", "unsafe"])
def test_a_bad_weights_file_is_refused_before_any_folder_or_training(tmp_path, monkeypatch, capsys, option, kind):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "cache"))
    path, said = _files(tmp_path)[kind]
    if option == "--teacher-init" and kind == "other-arch":  # a teacher's file, for the student's arch
        path = tmp_path / "student-arch.safetensors"
        save_file(models.create(TINY_MODELS["student"], FASHION).state_dict(), str(path))
    runs = tmp_path / "runs"
    args = ["run", *tiny_cli_args(method="kd", name="bad", runs_dir=str(runs)), option, str(path)]
    code, out, err = run_cli(args, capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]  # the one error line (after the plan's own log lines)
    assert line.startswith("ltcompress: error: ") and option in line and str(path) in line and said in line
    assert "payload ran" not in out + err
    assert not (runs / "bad").exists()  # no run folder
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").iterdir())


def test_checking_a_good_start_leaves_the_random_state_as_it_was(tmp_path):
    """The plan step builds a file start once and drops it: torch's random state afterwards is the one a run
    without the file sees, so the check changes no model a run trains."""
    from conftest import TINY
    from ltcompress import build_config
    from ltcompress.prepare import prepare

    path = tmp_path / "student.safetensors"
    save_file(models.create(TINY_MODELS["student"], FASHION).state_dict(), str(path))
    draws = []
    for weights in (None, str(path)):
        cfg = build_config(
            teacher=TINY_MODELS["teacher"], student=TINY_MODELS["student"], method="ce", student_weights=weights,
            overrides=dict(TINY, **{"run.runs_dir": str(tmp_path / "runs")}),
        )  # fmt: skip
        torch.manual_seed(123)
        plan, _ = prepare(cfg, progress=False)
        draws.append(torch.rand(4))
    assert plan.student_init[0] == "file" and torch.equal(draws[0], draws[1])
