"""The real pipeline end to end on real Fashion-MNIST images with tiny timm models (test_resnet teacher,
test_efficientnet student), through the installed console script and the Python API."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from PIL import Image

from conftest import PASSING_GATES, TINY, TINY_MODELS
from ltcompress.config import resolve
from ltcompress.data import shot_groups
from ltcompress.metrics import SUMMARY_KEYS
from ltcompress.rundir import sha256_file

pytestmark = pytest.mark.slow
REPORT_KEYS = {
    "schema",
    "recipe",
    "estimate",
    "run",
    "passed",
    "gates",
    "failed_gates",
    "stages",
    "parity",
    "data",
    "teacher",
    "student",
    "method",
    "artifacts",
    "config",
    "environment",
    "command",
    "flips",
    "tail_losses",
    "int8_repair",
}
COUNTS = [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]


def test_exit_0_writes_the_run_directory(passed_run):
    run, proc = passed_run
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "student.safetensors",
        "student.onnx",
        "report.json",
        "teacher.safetensors",
        "teacher.json",
        "predictions.npz",
        "run.log",
        "bundle/model.onnx",
        "student.int8.onnx",
        "report.html",
        "bundle/model.int8.onnx",
        "bundle/report.html",
        "bundle/README.md",
        "bundle/test_data_set_0/input_0.pb",
        "bundle/test_data_set_0/output_0.pb",
    ):
        assert (run / name).is_file(), name
    assert "fp32" in proc.stdout and "gate PASS" in proc.stdout


def test_bundle_carries_a_model_card_and_test_vectors(passed_run):
    """README.md's front matter is report.json's results in a form a machine reads; test_data_set_0 holds
    preprocessed test images and the verified model's logits for them (ONNX model zoo layout)."""
    from onnx import TensorProto, numpy_helper

    run, _ = passed_run
    bundle = run / "bundle"
    rep = json.loads((bundle / "report.json").read_text())
    text = (bundle / "README.md").read_text()
    assert text.startswith("---\n") and "# ltcompress edge bundle" in text
    card = yaml.safe_load(text.split("---\n")[1])
    assert card["passed"] is True and card["model"] == "model.onnx" and card["int8_model"] == "model.int8.onnx"
    assert card["method"]["name"] == rep["method"]["name"] and card["data"]["class_names"] == rep["data"]["class_names"]
    assert card["teacher"]["sha256"] == rep["teacher"]["weights_sha256"]
    for stage, m in rep["stages"].items():
        assert card["results"][stage]["per_class"] == m["per_class"] and card["results"][stage]["few"] == m["few"]
    assert [g["gate"] for g in card["gates"]] == PASSING_GATES
    tensors = {}
    for name in ("input_0", "output_0"):
        proto = TensorProto()
        proto.ParseFromString((bundle / "test_data_set_0" / f"{name}.pb").read_bytes())
        tensors[name] = (proto.name, numpy_helper.to_array(proto))
    (in_name, x), (out_name, y) = tensors["input_0"], tensors["output_0"]
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    assert in_name == session.get_inputs()[0].name and out_name == session.get_outputs()[0].name
    assert x.shape[0] == 4 and y.shape == (4, len(rep["data"]["class_names"]))
    np.testing.assert_allclose(session.run(None, {in_name: x})[0], y, rtol=1e-5, atol=1e-5)
    labels = np.load(run / "predictions.npz")
    assert y.argmax(1).tolist() == labels["fp32"][:4].tolist()  # the first test images, as verify saw them


def test_onnx_file_is_single_checked_and_has_a_dynamic_batch(passed_run):
    run, _ = passed_run
    model = onnx.load(str(run / "student.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert not [p for p in os.listdir(run) if p.endswith(".data")]  # no external data file
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    session = ort.InferenceSession(str(run / "student.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        assert session.run(None, {"input": np.zeros((n, 3, 32, 32), np.float32)})[0].shape == (n, 10)


def test_report_keys_and_values(passed_run):
    run, _ = passed_run
    rep = json.loads((run / "report.json").read_text())
    assert set(rep) == REPORT_KEYS and rep["schema"] == 1 and rep["passed"] is True
    assert rep["recipe"] == {"name": "fmnist-lt", "why": "the default dataset fmnist-lt (no --dataset)", "fitted": []}
    assert [s["stage"] for s in rep["estimate"]["stages"]] == ["teacher", "student", "export", "verify"]
    assert rep["data"]["class_counts"] == COUNTS and rep["data"]["test_size"] == 300
    names = rep["data"]["class_names"]
    groups = shot_groups(np.array(COUNTS), TINY["data.many_threshold"], TINY["data.few_threshold"])
    assert {k: [names[c] for c in v] for k, v in groups.items()} == rep["data"]["shot_groups"]
    assert all(rep["data"]["shot_groups"].values())  # Many, Medium and Few all present
    pred = np.load(run / "predictions.npz")
    labels = pred["labels"]
    for stage in ("teacher", "student", "fp32", "int8"):
        m = rep["stages"][stage]
        assert set(SUMMARY_KEYS) <= set(m) and all(0.0 <= m[k] <= 1.0 for k in SUMMARY_KEYS)
        per_class = [m["per_class"][n] for n in names]
        assert m["overall"] == pytest.approx(float((pred[stage] == labels).mean()))
        assert m["balanced"] == pytest.approx(np.mean(per_class))
        for group, members in rep["data"]["shot_groups"].items():
            assert m[group] == pytest.approx(np.mean([m["per_class"][n] for n in members]))
        assert m["worst"] == min(per_class) and m["per_class"][m["worst_class"]] == m["worst"]
        _check_tail_losses(
            rep["tail_losses"][stage],
            pred[f"confusion_{stage}"],
            pred[stage],
            labels,
            names,
            rep["data"]["shot_groups"],
        )
    parity = rep["parity"]["fp32"]
    assert parity["ok"] and parity["top1_agreement"] >= 0.999
    assert parity["max_abs_logit_diff"] <= parity["allowed_logit_diff"]
    assert [g["passed"] for g in rep["gates"]] == [True] * len(PASSING_GATES) and rep["failed_gates"] == []
    assert [g["subject"] for g in rep["gates"]][2:5] == ["int8.worst", "int8.class[Ankle boot]", "drop(fp32, int8).few"]
    gate = {g["gate"]: g for g in rep["gates"]}
    assert gate["int8.class[Ankle boot] >= 0"]["value"] == rep["stages"]["int8"]["per_class"]["Ankle boot"]
    assert gate["drop(fp32, int8).few <= 1"]["value"] == pytest.approx(
        rep["stages"]["fp32"]["few"] - rep["stages"]["int8"]["few"]
    )
    # INT8: agreement with the torch student reported (not exit 4), flips between consecutive stages recorded
    assert (
        rep["parity"]["int8"]["top1_agreement"]
        == rep["stages"]["int8"]["agreement_with_student"]
        == pytest.approx(float((pred["int8"] == pred["student"]).mean()))
    )
    assert rep["gates"][-1]["value"] == rep["parity"]["int8"]["top1_agreement"]
    assert list(rep["flips"]) == ["teacher->student", "student->fp32", "fp32->int8"]
    for pair, flips in rep["flips"].items():
        a, b = pair.split("->")
        changed = pred[a] != pred[b]
        assert flips["overall"] == pytest.approx(float(changed.mean()))
        for c, name in enumerate(names):
            assert flips["per_class"][name] == pytest.approx(float(changed[labels == c].mean()))
        assert flips["worst"] == max(flips["per_class"].values())
    flip_gate = next(g for g in rep["gates"] if g["gate"] == "flip(fp32, int8) <= 1")
    assert flip_gate["value"] == rep["flips"]["fp32->int8"]["overall"]
    calibration = rep["artifacts"]["int8"]
    assert calibration["calibration"] == "stratified" and calibration["calibration_size"] == sum(COUNTS)
    assert list(calibration["calibration_per_class"].values()) == COUNTS  # smaller than 512: every image
    assert rep["artifacts"]["int8_sha256"] == sha256_file(run / "student.int8.onnx")
    assert rep["teacher"]["source"] == "trained" and rep["teacher"]["arch"] == TINY_MODELS["teacher"]
    assert rep["teacher"]["weights_sha256"] == sha256_file(run / "teacher.safetensors")
    assert rep["method"]["name"] == "bkd" and rep["method"]["status"] == "exact"
    assert rep["artifacts"]["onnx_sha256"] == sha256_file(run / "student.onnx")
    speed = rep["artifacts"]["latency_ms"]
    for batch in ("batch_1", "batch_32"):
        assert speed[batch]["fp32"] > 0 and speed[batch]["int8"] > 0
        assert speed[batch]["int8_speedup"] == pytest.approx(speed[batch]["fp32"] / speed[batch]["int8"], rel=1e-2)
    worth = all(speed[b]["int8_speedup"] >= 1.2 for b in ("batch_1", "batch_32"))
    assert speed["int8_worth_it"] is worth and ("note" in speed) is not worth  # said, whichever way it went
    assert "<h2>Size and speed</h2>" in (run / "report.html").read_text()


def _check_tail_losses(tail, matrix, pred, labels, names, shot_groups):
    """The full confusion matrix counts the stage's predictions; the tail summary follows it, class by class."""
    for t in range(len(names)):
        for q in range(len(names)):
            assert matrix[t, q] == int(((labels == t) & (pred == q)).sum())
    assert list(tail) == shot_groups["medium"] + shot_groups["few"]
    for name, lost in tail.items():
        c = names.index(name)
        wrong = pred[labels == c][pred[labels == c] != c]
        assert lost["misclassified"] == len(wrong) and lost["test_images"] == int((labels == c).sum())
        counts = sorted(((int((wrong == q).sum()), -q) for q in set(wrong.tolist())), reverse=True)[:3]
        assert [(x["images"], x["class"]) for x in lost["lost_to"]] == [(n, names[-q]) for n, q in counts]
        assert all(x["share"] == pytest.approx(x["images"] / lost["test_images"]) for x in lost["lost_to"])


def test_a_run_reruns_from_its_own_config_to_the_identical_student(passed_run, workdir, monkeypatch, capsys, tmp_path):
    from safetensors.torch import load_file

    from conftest import run_cli

    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    run, _ = passed_run
    code, _, err = run_cli(
        ["run", "--preset", str(run / "config.yaml"), "--runs-dir", str(tmp_path / "again"), "--no-progress"], capsys
    )
    assert code == 0, err
    (again,) = (tmp_path / "again").iterdir()  # a new run directory, the original left as it was
    first, second = load_file(run / "student.safetensors"), load_file(again / "student.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    mine, theirs = (yaml.safe_load((r / "config.yaml").read_text()) for r in (run, again))
    for section in ("data", "teacher", "student", "method", "export"):
        assert mine[section] == theirs[section], section
    assert mine["gates"] == theirs["gates"] and mine["run"]["seed"] == theirs["run"]["seed"]


def test_config_and_metrics_log(passed_run):
    run, _ = passed_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["resolved"]["student_arch"] == TINY_MODELS["student"]
    saved.pop("resolved")
    preset = saved.pop("preset")
    flat = {
        f"{section}.{k}": v for section, values in saved.items() if isinstance(values, dict) for k, v in values.items()
    }
    assert resolve(preset, flat).student.train.epochs == TINY["student.train.epochs"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in records] == [
        ("teacher", 1),
        ("teacher", 2),
        ("student", 1),
        ("student", 2),
    ]
    assert all(np.isfinite(r["loss"]) and 0 <= r["train_acc"] <= 1 for r in records)


def test_bundle_runs_without_torch_and_matches_verify(passed_run, tmp_path):
    run, _ = passed_run
    from ltcompress.config import recipe_data
    from ltcompress.data.fmnist import load_fmnist_lt

    cfg = recipe_data(
        n_max=TINY["data.n_max"], imbalance=TINY["data.imbalance"], test_per_class=TINY["data.test_per_class"]
    )
    test = load_fmnist_lt(cfg, tmp_path).test
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):  # the original 28x28 gray image is the centre of the padded input
        Image.fromarray(test.images[i, 0, 2:30, 2:30]).save(images / f"{i:03d}.png")
    blocker = tmp_path / "no_torch"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is not on this device')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}

    def runtime(*args: str) -> subprocess.CompletedProcess:
        """The bundle's own runtime on the 40 images, with torch blocked."""
        script = str(run / "bundle" / "export" / "runtime.py")
        return subprocess.run(
            [sys.executable, script, str(images), *args], capture_output=True, text=True, env=env, cwd=tmp_path
        )

    expected = np.load(run / "predictions.npz")
    out = tmp_path / "pred.json"
    proc = runtime("--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert [r["class_index"] for r in json.loads(out.read_text())] == expected["fp32"][:40].tolist()
    proc = runtime("--model", "model.int8.onnx")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["class_index"] for line in proc.stdout.splitlines()] == expected["int8"][:40].tolist()
    # a bare .onnx file, away from its bundle, describes itself: labels and preprocessing from its metadata
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "student.onnx").write_bytes((run / "student.onnx").read_bytes())
    proc = runtime("--model", str(bare / "student.onnx"))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["class_index"] for line in proc.stdout.splitlines()] == expected["fp32"][:40].tolist()
    stripped = onnx.load(str(bare / "student.onnx"))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(bare / "plain.onnx"))
    proc = runtime("--model", str(bare / "plain.onnx"))
    assert proc.returncode == 2 and "carries no ltcompress.class_names metadata" in proc.stderr


def test_exported_models_describe_themselves(passed_run):
    run, _ = passed_run
    rep = json.loads((run / "report.json").read_text())
    preprocess = json.loads((run / "bundle" / "preprocess.json").read_text())
    for name in ("student.onnx", "student.int8.onnx", "bundle/model.onnx", "bundle/model.int8.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(run / name)).metadata_props}
        assert json.loads(meta["ltcompress.class_names"]) == rep["data"]["class_names"], name
        assert json.loads(meta["ltcompress.preprocess"]) == preprocess
        assert meta["ltcompress.method"] == rep["method"]["name"] and meta["ltcompress.method_status"] == "exact"
        assert meta["ltcompress.teacher_sha256"] == rep["teacher"]["weights_sha256"]
        assert meta["ltcompress.version"] == rep["environment"]["versions"]["ltcompress"]
        assert meta["ltcompress.data_fingerprint"] == rep["data"]["fingerprint"]


def test_models_carry_their_reports_hash_and_verify_measures_a_bare_model(passed_run, tmp_path, capsys):
    from conftest import run_cli
    from ltcompress.results import results_sha256

    run, _ = passed_run
    rep = json.loads((run / "report.json").read_text())
    stamp = results_sha256(rep["config"], rep["stages"], rep["gates"])
    for name in ("student.onnx", "student.int8.onnx", "bundle/model.int8.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(run / name)).metadata_props}
        assert meta["ltcompress.report_sha256"] == stamp, name
    # one .onnx file alone: its metadata says what data it was made for (no report, no side files)
    bare = tmp_path / "copied.onnx"
    bare.write_bytes((run / "student.int8.onnx").read_bytes())
    code, _, err = run_cli(
        ["verify", str(bare), "--gate", "int8.few >= 0", "--output", str(tmp_path / "v.json")], capsys
    )
    assert code == 0, err
    got = json.loads((tmp_path / "v.json").read_text())
    assert list(got["stages"]) == ["int8"] and got["layout"] == "model"
    assert got["stages"]["int8"]["per_class"] == rep["stages"]["int8"]["per_class"]
    stripped = onnx.load(str(bare))
    del stripped.metadata_props[:]
    onnx.save(stripped, str(tmp_path / "plain.onnx"))
    code, _, err = run_cli(["verify", str(tmp_path / "plain.onnx")], capsys)
    assert code == 2 and "carries no ltcompress.data" in err
    # a bundle whose report was swapped for another's is said to be so
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for f in ("model.onnx", "labels.json", "preprocess.json"):
        (bundle / f).write_bytes((run / "bundle" / f).read_bytes())
    other = {**rep, "stages": {**rep["stages"], "fp32": {**rep["stages"]["fp32"], "few": 0.123}}}
    (bundle / "report.json").write_text(json.dumps(other))
    code, _, err = run_cli(["verify", str(bundle), "--output", str(tmp_path / "b.json")], capsys)
    assert code == 0 and "do not carry this report's hash" in err
    assert json.loads((tmp_path / "b.json").read_text())["report_matches_model"] is False
