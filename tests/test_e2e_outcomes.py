"""Every way a real run ends, end to end on real Fashion-MNIST images with tiny timm models: exit 0 through the
Python API and for every registered method, and exits 2 (name taken), 4 (export mismatch), 5 (failed gate) and
6 (divergence), each with what it leaves on disk."""

import html
import json

import onnx
import pytest
import torch

from conftest import TINY, TINY_MODELS, cli_exit, tiny_cli_args
from ltcompress import compress, verify
from ltcompress.methods import METHODS, method_info

pytestmark = pytest.mark.slow


def test_failed_gate_is_exit_5_report_written_no_bundle_and_teacher_reused(passed_run, workdir, monkeypatch, capsys):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    runs = workdir / "runs"
    code = cli_exit(
        [
            "run",
            *tiny_cli_args(method="kd", name="gated", runs_dir=str(runs)),
            "--gate",
            "worst >= 1.0",
            "--gate",
            "few >= 0.0",
            "--gate",
            "student.class[Bag] > 1",
        ]
    )
    assert code == 5
    err = capsys.readouterr().err
    assert "2 gate(s) failed: 'worst >= 1.0' (fp32.worst = 0." in err and "'student.class[Bag] > 1'" in err
    rep = json.loads((runs / "gated" / "report.json").read_text())
    assert rep["passed"] is False and not (runs / "gated" / "bundle").exists()
    failed = rep["failed_gates"]
    assert [f["gate"] for f in failed] == ["worst >= 1.0", "student.class[Bag] > 1"]
    assert failed[0]["threshold"] == 1.0 and failed[0]["value"] == rep["stages"]["fp32"]["worst"] < 1.0
    first = json.loads((runs / "ok" / "report.json").read_text())["teacher"]
    assert rep["teacher"]["source"] == "cache" and rep["teacher"]["weights_sha256"] == first["weights_sha256"]


def test_existing_run_name_is_exit_2_and_nothing_is_overwritten(passed_run, workdir, capsys):
    run, _ = passed_run
    before = (run / "report.json").read_bytes()
    code = cli_exit(["run", *tiny_cli_args(name="ok", runs_dir=str(workdir / "runs"))])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (run / "report.json").read_bytes() == before


def test_onnx_mismatch_is_exit_4_with_report(passed_run, workdir, monkeypatch, capsys):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    real = verify.ort_logits

    def corrupted(*args, **kwargs):  # what a broken exporter would produce
        return real(*args, **kwargs)[:, ::-1].copy()

    monkeypatch.setattr(verify, "ort_logits", corrupted)
    code = cli_exit(["run", *tiny_cli_args(method="ce", name="mismatch", runs_dir=str(workdir / "runs"))])
    assert code == 4 and "does not reproduce the torch student" in capsys.readouterr().err
    rep = json.loads((workdir / "runs" / "mismatch" / "report.json").read_text())
    assert rep["parity"]["fp32"]["ok"] is False and rep["passed"] is False
    assert not (workdir / "runs" / "mismatch" / "bundle").exists()


def test_divergence_is_exit_6(workdir, monkeypatch, capsys):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    code = cli_exit(
        [
            "run",
            *tiny_cli_args(method="ce", name="diverged", runs_dir=str(workdir / "runs")),
            "--set",
            "student.train.lr=1e30",
        ]
    )
    err = capsys.readouterr().err
    assert code == 6 and "student training diverged" in err and "student.train.lr=" in err
    # it diverged inside its first epoch: there is no checkpoint, and the message must not promise one
    assert "no checkpoint of this stage was written" in err and "is kept in" not in err
    assert not list((workdir / "runs" / "diverged" / "checkpoints").glob("student-*"))


def test_python_api(workdir, monkeypatch):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    result = compress(
        teacher=TINY_MODELS["teacher"],
        student=TINY_MODELS["student"],
        method="ce",
        overrides=TINY,
        runs_dir=str(workdir / "api"),
        gates=["drop(fp32, int8).balanced <= 1"],
        int8=True,
        progress=False,
    )
    assert result.passed and result.bundle_dir.is_dir() and "teacher" not in result.metrics  # ce needs none
    assert set(result.metrics) == {"student", "fp32", "int8"} and result.int8_path.is_file()
    assert list(result.flips) == ["student->fp32", "fp32->int8"]
    assert result.metrics["fp32"].per_class.keys() == set(result.report.data["class_names"])
    assert result.to_dict()["metrics"]["fp32"] == result.report.to_dict()["stages"]["fp32"]


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_the_real_pipeline(name, workdir, monkeypatch):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    cls = METHODS.get(name)
    result = compress(
        teacher=TINY_MODELS["teacher"],
        student=TINY_MODELS["student"],
        method=name,
        overrides=TINY,
        runs_dir=str(workdir / "methods"),
        progress=False,
    )
    rep = result.report.to_dict()
    assert rep["parity"]["fp32"]["ok"] and rep["method"]["name"] == name
    assert rep["method"]["status"] == method_info(name).status
    assert rep["method"]["reading"] == method_info(name).reading  # which reading of a name made this student
    if rep["method"]["reading"]:
        assert html.escape(rep["method"]["reading"]) in (result.run_dir / "report.html").read_text()
    if cls.uses_teacher:
        assert rep["teacher"]["loss"] == cls.teacher_method  # dive gets a Balanced Softmax teacher
    else:
        assert rep["teacher"] is None and "teacher" not in result.metrics
    # parameters a method owns (projectors) train with the student but never reach the ONNX file
    state = torch.load(result.run_dir / "checkpoints" / "student-last.pt", weights_only=True)
    shapes = {tuple(init.dims) for init in onnx.load(str(result.onnx_path)).graph.initializer}
    for key, tensor in state["method"].items():
        if key.endswith("weight"):
            assert tuple(tensor.shape) not in shapes and tuple(tensor.shape[::-1]) not in shapes, key


def test_dive_reports_the_virtual_example_distribution(workdir, monkeypatch):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    result = compress(
        teacher=TINY_MODELS["teacher"],
        student=TINY_MODELS["student"],
        method="dive",
        overrides=TINY,
        runs_dir=str(workdir / "dive"),
        method_args={"tau": 2.5},
        progress=False,
    )
    ved = result.report.method["diagnostics"]["virtual_example_distribution"]
    assert ved["method_tau"] == 2.5 and {"tau=2.5", "tau=1", "tau=6"} <= set(ved["mean_per_group"])
    n = result.report.data["train_size"]
    sizes = {g: len(names) for g, names in result.report.data["shot_groups"].items()}
    for per_group in ved["mean_per_group"].values():  # every image's target sums to 1: the V_c sum to N
        assert sum(per_group[g] * sizes[g] for g in sizes) == pytest.approx(n, rel=1e-5)
    assert ved["uniform_value"] == pytest.approx(n / 10)
