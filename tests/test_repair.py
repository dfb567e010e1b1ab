"""INT8 repair: nodes ranked by what they do to the gated classes, a repaired node's weights kept int8, a real run
that fails its int8 gate without the repair and passes with it (trained exactly as the run without it), and the
repair's settings checked before anything trains. The evidence it judges on: tests/test_evidence.py."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from conftest import run_cli
from ltcompress import gates as gate_mod, models
from ltcompress.data import InputSpec, LTData, Split, hold_out
from ltcompress.onnx_export import Quantizer, add_logit_bias, calibration_indices, export
from ltcompress.evidence import gated_classes, ort_run
from ltcompress.repair import damage, logit_shift

GROUPS = {"many": [0], "medium": [1], "few": [2, 3]}
NAMES = ("a_head", "b_mid", "c_tail", "d_tail")


def test_damage_is_the_class_balanced_mean_kl_of_a_naive_loop():
    rng = np.random.default_rng(0)
    ref, out = rng.normal(size=(40, 4)), rng.normal(size=(40, 4))
    labels = rng.integers(0, 4, 40)
    expected = []
    for c in (1, 3):
        kls = []
        for i in np.flatnonzero(labels == c):
            p, q = np.exp(ref[i]) / np.exp(ref[i]).sum(), np.exp(out[i]) / np.exp(out[i]).sum()
            kls.append(sum(p[k] * np.log(p[k] / q[k]) for k in range(4)))
        expected.append(np.mean(kls))
    assert damage(ref, out, labels, [1, 3]) == pytest.approx(np.mean(expected), rel=1e-9)
    assert damage(ref, ref, labels, [0, 1, 2, 3]) == pytest.approx(0.0, abs=1e-12)
    assert damage(ref, out, labels, [7]) == 0.0  # a class with no held-out image says nothing


@pytest.mark.parametrize(
    "expr, classes",
    [
        ("drop(fp32, int8).few <= 0.01", [2, 3]),
        ("int8.medium >= 0.5", [1]),
        ("int8.class[c_tail] >= 0.5", [2]),
        ("flip(fp32, int8) <= 0.1", [0, 1, 2, 3]),
        ("int8.worst >= 0.1", [0, 1, 2, 3]),
    ],
)
def test_gated_classes_are_the_classes_a_gate_reads(expr, classes):
    assert gated_classes([gate_mod.parse(expr)], GROUPS, NAMES) == classes


def _data(counts: list[int]) -> LTData:
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(4, 2).repeat(4, 3)
    spec = InputSpec(4, 1, (0.5,), (0.25,), "L", 4)
    test = Split(images[:4], labels[:4])
    names = tuple(f"c{i}" for i in range(len(counts)))
    return LTData(Split(images, labels), test, np.asarray(counts), names, spec, "fp")


def test_hold_out_sets_a_stratified_slice_aside_and_keeps_every_class_trainable():
    data = _data([50, 20, 9, 2, 1])
    held = hold_out(data, 0.1, seed=0)
    assert held.val is not None
    assert np.bincount(held.val.labels, minlength=5).tolist() == [5, 2, 1, 1, 0]  # >= 1 from n >= 2, none from 1
    assert held.class_counts.tolist() == [45, 18, 8, 1, 1] == np.bincount(held.train.labels).tolist()
    train_pixels = {int(x) for x in held.train.images[:, 0, 0, 0]}
    assert train_pixels.isdisjoint(int(x) for x in held.val.images[:, 0, 0, 0])  # never trained on
    assert len(train_pixels) + len(held.val) == 82
    assert held.fingerprint != data.fingerprint  # caches keyed by it see a different training set
    again = hold_out(data, 0.1, seed=0)
    assert np.array_equal(again.val.images, held.val.images) and again.fingerprint == held.fingerprint
    assert "set aside before training" in held.val_source


def test_head_calibration_samples_only_the_classes_holding_half_the_images():
    labels = np.repeat(np.arange(4), [60, 30, 6, 4])
    idx = calibration_indices(labels, 40, "head", seed=0)
    assert set(labels[idx].tolist()) == {0}  # class 0 alone holds 60 % of the images
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    assert set(labels[calibration_indices(labels, 1000, "head", 0)].tolist()) == {0, 1}


def _tiny_onnx(tmp_path):
    """A tiny real timm model (SiLU, so Mul and Sigmoid nodes too) exported as the run exports it."""
    torch.manual_seed(0)
    model = models.create("test_efficientnet", 4, 3).eval()
    return export(model, InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3, "RGB", 32), tmp_path / "m.onnx", 18)


def test_every_node_is_named_and_listed_so_all_of_them_can_go_back_to_float(tmp_path):
    fp32 = _tiny_onnx(tmp_path)
    rng = np.random.default_rng(0)
    q = Quantizer(fp32, iter([rng.normal(size=(4, 3, 32, 32)).astype(np.float32)]), tmp_path)
    names = q.graph_nodes
    assert all(names) and len(set(names)) == len(names)
    assert {"Mul", "Sigmoid", "Conv"} <= {q.op_types[n] for n in q.nodes}  # SiLU parts are quantized too
    ops = {n.op_type for n in onnx.load(str(q.write(tmp_path / "none.onnx", exclude=q.nodes))).graph.node}
    assert "QuantizeLinear" not in ops  # with every listed node excluded, nothing is quantized
    only = onnx.load(str(q.write(tmp_path / "one.onnx", only=[q.nodes[0]]))).graph.node
    assert 0 < sum(n.op_type == "QuantizeLinear" for n in only) <= 3


def test_a_repaired_node_computes_in_float_with_its_weights_stored_int8(tmp_path):
    fp32 = _tiny_onnx(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3, 32, 32)).astype(np.float32)
    q = Quantizer(fp32, iter([x]), tmp_path)
    back = [n for n in q.nodes if q.op_types[n] in ("Conv", "Gemm")][-3:]
    floated = q.write(tmp_path / "float.onnx", exclude=back)
    stored = q.write(tmp_path / "stored.onnx", exclude=back, int8_weights=back)
    assert stored.stat().st_size < floated.stat().st_size
    graph = onnx.load(str(stored)).graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    for name in back:
        node = next(n for n in graph.node if n.name == name)
        weight = producers[node.input[1]]  # the weight comes through a DequantizeLinear of int8 values
        assert weight.op_type == "DequantizeLinear" and inits[weight.input[0]].data_type == onnx.TensorProto.INT8
    onnx.checker.check_model(str(stored))
    run = {
        p.name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        for p in (floated, stored)
    }
    scale = np.abs(run["float.onnx"]).max()
    assert np.abs(run["float.onnx"] - run["stored.onnx"]).max() < 0.05 * scale  # int8 weights, float compute


def test_logit_shift_is_the_class_balanced_mean_difference_of_a_naive_loop():
    rng = np.random.default_rng(1)
    labels = np.array([0] * 30 + [1] * 5 + [2] * 2)  # long-tailed: the head must not outweigh the tail
    fp32, int8 = rng.normal(size=(37, 3)), rng.normal(size=(37, 3))
    expected = np.zeros(3)
    for c in (0, 1, 2):
        rows = [i for i in range(37) if labels[i] == c]
        expected += sum(fp32[i] - int8[i] for i in rows) / len(rows) / 3
    np.testing.assert_allclose(logit_shift(fp32, int8, labels), expected, rtol=1e-12)


def test_the_logit_bias_undoes_a_per_class_shift_of_the_output_and_keeps_its_name(tmp_path):
    fp32 = _tiny_onnx(tmp_path)
    shifted = tmp_path / "shifted.onnx"
    shifted.write_bytes(fp32.read_bytes())
    delta = np.array([0.5, -1.0, 2.0, 0.0])
    add_logit_bias(shifted, -delta)  # an "INT8 model" whose class logits quantization moved as a whole
    x = np.random.default_rng(0).normal(size=(12, 3, 32, 32)).astype(np.float32)
    labels = np.arange(12) % 4
    reference, moved = ort_run(fp32, x), ort_run(shifted, x)
    bias = logit_shift(reference, moved, labels)
    np.testing.assert_allclose(bias, delta, atol=1e-5)
    add_logit_bias(shifted, bias)
    np.testing.assert_allclose(ort_run(shifted, x), reference, atol=1e-5)
    model = onnx.load(str(shifted))
    onnx.checker.check_model(model)
    original = onnx.load(str(fp32))
    assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]
    names = [n.name for n in model.graph.node]
    assert names[-1] == "ltcompress_logit_bias" and names.count("ltcompress_logit_bias") == 1  # offsets summed


# A long-tailed folder where per-tensor ranges calibrated on the head class alone clip the tail: the head is dark,
# the tail classes bright, each class its own stripes.
SYNTH = {
    "a_head": (80, "h", 0, 50),
    "b_mid": (30, "v", 0, 50),
    "c_tail": (8, "h", 170, 255),
    "d_tail": (8, "v", 170, 255),
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    rng = np.random.default_rng(0)
    stripes = np.arange(32) // 4 % 2 == 0
    for name, (n_train, orient, low, high) in SYNTH.items():
        for split, n in (("train", n_train), ("test", 10)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(low, low + (high - low) // 3, size=(32, 32)).astype(np.uint8)
                mask = np.broadcast_to(stripes[:, None] if orient == "h" else stripes[None, :], img.shape)
                Image.fromarray(np.where(mask, np.uint8(high), img)).convert("RGB").save(folder / f"{i}.png")
    return root


def _synth_args(root, tmp_path, name, *extra, gate="drop(fp32, int8).few <= 0.1"):
    return [
        "run",
        "--dataset",
        "imagefolder",
        "--data-dir",
        str(root),
        "--student",
        "test_efficientnet",
        "--method",
        "ce",
        "--epochs",
        "15",
        "--no-progress",
        "--runs-dir",
        str(tmp_path),
        "--name",
        name,
        "--gate",
        gate,
        "--set",
        "data.input_size=32",
        "--set",
        "data.many_threshold=50",
        "--set",
        "data.few_threshold=10",
        "--set",
        "data.augment=crop_flip",
        "--set",
        "export.calibration=head",
        "--set",
        "export.per_channel=false",
        "--set",
        "export.speed_budget_s=0",
        *extra,
    ]


def _report(tmp_path, name):
    return json.loads((tmp_path / name / "report.json").read_text())


@pytest.mark.slow
def test_a_run_that_fails_its_int8_gate_passes_with_the_repair_trained_as_without_it(synth, tmp_path, capsys):
    code, _, err = run_cli(_synth_args(synth, tmp_path, "plain", "--int8"), capsys)
    assert code == 5 and "gate(s) failed" in err  # the INT8 model as calibrated fails on the test set
    code, out, err = run_cli(
        _synth_args(
            synth,
            tmp_path,
            "fixed",
            "--int8-repair",
            "--set",
            "export.repair_budget=64",
            "--set",
            "export.repair_max_size=8",
            "--set",
            "export.speed_budget_s=0.05",  # each step's latency is measured within it
        ),
        capsys,
    )
    assert code == 0, err
    run, plain, report = tmp_path / "fixed", _report(tmp_path, "plain"), _report(tmp_path, "fixed")
    # the repair took no image from training: the same data, the same student as the run without it
    assert report["data"]["class_counts"] == plain["data"]["class_counts"] == [80, 30, 8, 8]
    assert report["data"]["fingerprint"] == plain["data"]["fingerprint"] and report["data"]["held_out"] is None
    assert (
        report["stages"]["student"] == plain["stages"]["student"]
        and report["stages"]["fp32"] == plain["stages"]["fp32"]
    )
    r = report["int8_repair"]
    ev = r["evidence"]  # the Few classes' 8 training images each, 256 augmented views per class
    assert not ev["held_out"] and "training images" in ev["source"] and (ev["images"], ev["views"]) == (16, 512)
    assert [(c["name"], c["images"], c["views"]) for c in ev["classes"]] == [("c_tail", 8, 256), ("d_tail", 8, 256)]
    assert all(c["int8_after"] is not None and c["fp32"] >= 0 for c in ev["classes"])
    before, after = r["gates_before"][0], r["gates_after"][0]
    assert before["decision"] == "fails" and before["low"] > 0.1 and before["images"] == 16
    assert after["decision"] != "fails" and after["value"] <= 0.1 and r["met"] and r["needed"]
    assert r["nodes"] and r["trials"] >= len(r["nodes"]) and 0 < r["seconds"] <= r["budget"]["seconds"]
    assert all(n["op_type"] and n["size_bytes"] > 0 and n["latency_ms"] > 0 for n in r["nodes"])
    assert r["nodes"][-1]["size_bytes"] <= 8 * r["int8_size_bytes"]
    # on the test set, which no decision used: the unrepaired model is the plain run's, and fails; repaired, passes
    assert r["test_before"] == {k: v for k, v in plain["stages"]["int8"].items() if k != "agreement_with_student"}
    assert {g["gate"]: g["passed"] for g in report["gates"]} == {"drop(fp32, int8).few <= 0.1": True}
    assert r["test_before"]["few"] < report["stages"]["int8"]["few"]
    assert (run / "student.int8.unrepaired.onnx").is_file()
    assert "int8 repair: " in out and "node(s) back to FP32" in out and "'drop(fp32, int8).few <= 0.1'" in out
    bundled = (run / "bundle" / "model.int8.onnx").read_bytes()
    assert hashlib.sha256(bundled).hexdigest() == report["artifacts"]["int8_sha256"]
    assert bundled == (run / "student.int8.onnx").read_bytes()
    html = (run / "report.html").read_text()
    assert "<h2>INT8 repair</h2>" in html and r["nodes"][0]["node"] in html and "int8 before repair" in html
    assert "id='repair-evidence'" in html and "id='repair-gates'" in html
    card = (run / "bundle" / "README.md").read_text()
    assert "fp32_nodes:" in card and r["nodes"][0]["node"] in card

    # a time budget spent before any node is tried: the record says so, and the test-set gates alone decide
    code, _, err = run_cli(
        _synth_args(synth, tmp_path, "short", "--int8-repair", "--set", "export.repair_seconds=0.001"), capsys
    )
    short = _report(tmp_path, "short")
    assert (
        short["int8_repair"]["stopped"] == "the time budget of 0.001 s is spent" and not short["int8_repair"]["nodes"]
    )
    assert short["passed"] is all(g["passed"] for g in short["gates"]) is (code == 0)
    assert code == 5 and err.strip().splitlines()[-1].startswith("ltcompress: 1 gate(s) failed: 'drop(fp32, int8)")


@pytest.mark.slow
def test_the_logit_bias_correction_is_tried_when_the_node_budget_is_spent_and_recorded(synth, tmp_path, capsys):
    args = ["--int8-repair", "--set", "export.repair_budget=1"]  # one node cannot mend this calibration
    code, _, err = run_cli(_synth_args(synth, tmp_path, "biased", *args), capsys)
    run, report = tmp_path / "biased", _report(tmp_path, "biased")
    r = report["int8_repair"]
    assert r["needed"] and report["passed"] is (code == 0), err
    assert len(r["nodes"]) == 1 and r["gates_after"] and r["logit_bias"] is not None
    bias = r["logit_bias"]
    assert set(bias["per_class"]) == set(NAMES) and bias["kl_before"] > 0
    assert bias["kept"] is (bias["kl_after"] < bias["kl_before"])  # kept only when it lowered the divergence
    nodes = [n.name for n in onnx.load(str(run / "student.int8.onnx")).graph.node]
    assert ("ltcompress_logit_bias" in nodes) is bias["kept"]
    assert (run / "student.int8.unrepaired.onnx").is_file() is (bias["kept"] or bool(r["nodes"]))
    if bias["kept"]:  # the offsets in the model are the ones reported
        model = onnx.load(str(run / "student.int8.onnx"))
        stored = next(i for i in model.graph.initializer if i.name.endswith("_bias") and i.dims == [1, len(NAMES)])
        np.testing.assert_allclose(
            onnx.numpy_helper.to_array(stored)[0], list(bias["per_class"].values()), rtol=1e-6, atol=1e-6
        )
    assert "id='repair-bias'" in (run / "report.html").read_text()
    card = (run / "bundle" / "README.md").read_text() if (run / "bundle").is_dir() else ""
    assert not card or f"logit_bias: {str(bias['kept']).lower()}" in card


def test_the_repair_leaves_the_data_and_the_teachers_cache_key_as_they_are(synth, tmp_path):
    from ltcompress.api import build_config
    from ltcompress.prepare import prepare

    plans = []
    for repair in (False, True):
        cfg = build_config(
            overrides={"data.input_size": 32, "data.many_threshold": 50, "data.few_threshold": 10},
            dataset="imagefolder",
            data_dir=str(synth),
            teacher="test_resnet",
            student="test_efficientnet",
            method="kd",
            gates=["drop(fp32, int8).few <= 0.1"],
            int8=True,
            int8_repair=repair,
            runs_dir=str(tmp_path),
        )
        plans.append(prepare(cfg, progress=False)[0])
    plain, repaired = plans
    assert repaired.cfg.export.int8_repair and repaired.data.val is None
    assert repaired.data.fingerprint == plain.data.fingerprint and len(repaired.data.train) == len(plain.data.train)
    assert repaired.data.class_counts.tolist() == plain.data.class_counts.tolist() == [80, 30, 8, 8]
    assert repaired.teacher is not None and repaired.teacher.key == plain.teacher.key  # the cached teacher serves


def test_val_list_is_the_held_out_split_and_its_labels_are_checked(synth, tmp_path, capsys):
    from ltcompress.data.imagefolder import load_imagefolder
    from ltcompress.config import DataConfig

    (synth / "val.txt").write_text("".join(f"test/{n}/0.png {i}\n" for i, n in enumerate(SYNTH)))
    data = load_imagefolder(
        DataConfig(dataset="imagefolder", data_dir=str(synth), input_size=32, val_list="val.txt"), tmp_path
    )
    assert data.val is not None and data.val.labels.tolist() == [0, 1, 2, 3]
    assert data.val_source == "data.val_list val.txt, 4 images"
    (synth / "bad.txt").write_text("test/a_head/0.png 9\n")
    code, _, err = run_cli(
        _synth_args(synth, tmp_path, "bad", "--int8-repair", "--set", "data.val_list=bad.txt"), capsys
    )
    assert code == 3 and "bad.txt: label 9 of" in err and "out of range 0..3" in err


@pytest.mark.parametrize(
    "extra, gate, message",
    [
        (["--int8-repair", "--set", "export.repair_budget=0"], None, "export.repair_budget is 0"),
        (["--int8-repair"], "few >= 0", "export.int8_repair works toward the int8 gates and this run has none"),
        (["--set", "export.int8_repair=true"], None, "turn it on with --int8"),
        (
            ["--int8-repair", "--set", "export.repair_confidence=1"],
            None,
            "export.repair_confidence must be in [0.5, 1)",
        ),
        (["--int8-repair", "--set", "export.repair_seconds=0"], None, "export.repair_seconds must be more than 0"),
        (["--int8-repair", "--set", "export.repair_views=0"], None, "export.repair_views must be at least 1"),
    ],
)
def test_bad_repair_settings_are_one_line_and_exit_2(synth, tmp_path, capsys, extra, gate, message):
    code, _, err = run_cli(_synth_args(synth, tmp_path, "x", *extra, gate=gate or "int8.few >= 0"), capsys)
    assert code == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_val_list_belongs_to_imagefolder(tmp_path, capsys):
    code, _, err = run_cli(
        ["run", "--no-progress", "--set", "data.val_list=v.txt", "--runs-dir", str(tmp_path)], capsys
    )
    assert code == 2 and "data.val_list does not apply to dataset 'fmnist-lt' (only imagefolder read it)" in err


def test_compress_int8_repair_keyword_builds_the_int8_model_it_repairs():
    from ltcompress.api import build_config

    cfg = build_config(int8_repair=True)
    assert cfg.export.int8 and cfg.export.int8_repair
    assert not build_config(int8_repair=False).export.int8
