"""Tracking where users look: a real run writes TensorBoard event files and an MLflow run with the real
libraries, and what they hold is read back with those libraries' own readers."""

from __future__ import annotations

import json

import pytest

from conftest import TINY, TINY_MODELS, run_cli
from ltcompress.api import compress

EPOCHS = {"teacher.train.epochs": 2, "student.train.epochs": 3}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One tiny run tracked by both sinks (MLflow's default: a file store beside the runs)."""
    runs = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "ltcompress-tests")
        mp.setenv("LTCOMPRESS_CACHE", str(runs / "cache"))  # the teacher trains here: its epochs are tracked
        result = compress(
            teacher=TINY_MODELS["teacher"],
            student=TINY_MODELS["student"],
            method="kd",
            gates=["few >= 0", "fp32.class[Bag] >= 0"],
            int8=True,
            track=["tensorboard", "mlflow"],
            runs_dir=str(runs),
            name="t",
            progress=False,
            overrides={**TINY, **EPOCHS},
        )
    return result, json.loads((result.run_dir / "report.json").read_text())


def test_tensorboard_holds_every_epoch_the_results_gates_and_artifacts(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result, rep = tracked
    events = EventAccumulator(str(result.run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("teacher/loss")] == [1, 2]
    assert [e.step for e in events.Scalars("student/train_acc")] == [1, 2, 3]
    few = events.Scalars("results/fp32/few")[0].value
    assert few == pytest.approx(rep["stages"]["fp32"]["few"])
    assert events.Scalars("results/int8/class/Bag")[0].value == pytest.approx(rep["stages"]["int8"]["per_class"]["Bag"])
    assert {"results/gate/0_few_0", "results/passed"} <= set(scalars)
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert "student.int8.onnx" in texts["artifacts/text_summary"] and "few >= 0" in texts["gates/text_summary"]


def test_mlflow_holds_params_epochs_results_gates_and_artifacts(tracked):
    from mlflow.tracking import MlflowClient

    result, rep = tracked
    store = (result.run_dir.parent / "mlruns").as_uri()
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("ltcompress-tests")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "t" and run.data.params["method.name"] == "kd"
    assert run.data.params["student.train.epochs"] == "3"
    history = client.get_metric_history(run.info.run_id, "student/loss")
    assert [m.step for m in history] == [1, 2, 3]
    metrics = run.data.metrics
    assert metrics["fp32/balanced"] == pytest.approx(rep["stages"]["fp32"]["balanced"])
    assert metrics["teacher/class/Sandal"] == pytest.approx(rep["stages"]["teacher"]["per_class"]["Sandal"])
    assert metrics["gate/1_fp32.class_Bag_0"] == 1.0 and metrics["passed"] == float(rep["passed"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.html", "student.onnx", "student.int8.onnx"} <= logged


def test_a_sink_that_is_not_installed_is_exit_2_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    code, _, err = run_cli(["run", "--track", "mlflow", "--runs-dir", str(tmp_path / "runs"), "--dry-run"], capsys)
    assert code == 2 and "pip install 'ltcompress[mlflow]'" in err and not (tmp_path / "runs").exists()
