"""`ltcompress verify` / verify_export(): re-measure an existing run or bundle without training."""

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from ltcompress import verify_export

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("where", ["run", "bundle"])
def test_verify_export_reproduces_the_recorded_onnx_stages(passed_run, monkeypatch, workdir, where):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    run, _ = passed_run
    path = run if where == "run" else run / "bundle"
    result = verify_export(path, gates=["int8.few >= 0", "drop(fp32, int8).worst <= 1"])
    recorded = json.loads((run / "report.json").read_text())
    assert set(result.metrics) == {"fp32", "int8"} and result.passed
    for stage in ("fp32", "int8"):
        for key in ("overall", "balanced", "many", "medium", "few", "worst", "per_class"):
            assert result.metrics[stage].to_dict()[key] == recorded["stages"][stage][key], (stage, key)
    assert result.flips["fp32->int8"].to_dict() == recorded["flips"]["fp32->int8"]
    assert result.recorded["int8"].balanced == recorded["stages"]["int8"]["balanced"]


def test_verify_cli_lists_every_failed_gate_exit_5_and_writes_json_once(
    passed_run, workdir, monkeypatch, capsys, tmp_path
):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    run, _ = passed_run
    out = tmp_path / "verify.json"
    gates = [a for g in ("int8.balanced > 1", "few >= 0", "flip(fp32, int8).worst < 0") for a in ("--gate", g)]
    code, stdout, err = run_cli(["verify", str(run / "bundle"), *gates, "--output", str(out)], capsys)
    assert code == 5 and "2 gate(s) failed: 'int8.balanced > 1'" in err and "'flip(fp32, int8).worst < 0'" in err
    assert "fp32" in stdout and "int8" in stdout and "flips fp32->int8" in stdout
    saved = json.loads(out.read_text())
    assert [g["passed"] for g in saved["gates"]] == [False, True, False] and saved["layout"] == "bundle"
    before = out.read_bytes()
    code, _, err = run_cli(["verify", str(run / "bundle"), "--output", str(out)], capsys)
    assert code == 2 and "already exists" in err and out.read_bytes() == before
    # --json prints the same document instead of the table, as run --json does
    code, stdout, _ = run_cli(["verify", str(run / "bundle"), *gates, "--json"], capsys)
    printed = json.loads(stdout)
    assert code == 5 and printed["gates"] == saved["gates"] and printed["stages"] == saved["stages"]


def test_verify_on_another_test_split_measures_it(passed_run, workdir, monkeypatch):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    run, _ = passed_run
    result = verify_export(run, overrides={"data.test_per_class": 10})
    per_class = result.metrics["fp32"].per_class.values()
    assert all(v * 10 == pytest.approx(round(v * 10)) for v in per_class)  # 10 images per class now
    assert result.metrics["fp32"].balanced == pytest.approx(np.mean(list(per_class)))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gate", "student.few >= 0.1"], "stage 'student' does not exist in this run (stages: fp32, int8)"),
        (["--gate", "int8.agreement >= 0.9"], "agreement needs the torch student"),
        (["--gate", "class[Sneakers] > 0"], "Did you mean: Sneaker"),
        (["--gate", "few >> 0.1"], "malformed gate"),
        (["--set", "data.input_size=64"], "differ from the export's"),
        (["--set", "student.train.epochs=3"], "data.* and run.* settings only"),
    ],
)
def test_verify_usage_errors_are_exit_2(passed_run, workdir, monkeypatch, capsys, args, message):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    run, _ = passed_run
    code, _, err = run_cli(["verify", str(run / "bundle"), *args], capsys)
    assert code == 2 and message in err and err.count("\n") == 1


def test_verify_refuses_a_folder_that_is_no_export(passed_run, tmp_path, capsys):
    run, _ = passed_run
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy2(run / "student.onnx", partial / "student.onnx")  # no report: the run never finished
    code, _, err = run_cli(["verify", str(partial)], capsys)
    assert code == 2 and "neither a finished run directory" in err


def _damaged(what: str, data: bytes) -> bytes:
    """The file's bytes damaged as a disk or a copy damages them."""
    if what == "truncated":
        return data[: len(data) // 2]
    if what == "zeroed":
        return data[:64] + bytes(len(data) - 64)
    return b"\x00garbage, not a protobuf\xff" * 8


@pytest.mark.parametrize("damage", ["truncated", "zeroed", "garbage"])
@pytest.mark.parametrize("target", ["model.onnx", "model.int8.onnx", "report.json"])
def test_verify_names_a_damaged_file_with_exit_4(passed_run, workdir, monkeypatch, capsys, tmp_path, damage, target):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    run, _ = passed_run
    bundle = tmp_path / "bundle"
    shutil.copytree(run / "bundle", bundle)
    (bundle / target).write_bytes(_damaged(damage, (bundle / target).read_bytes()))
    code, _, err = run_cli(["verify", str(bundle)], capsys)
    assert code == 4, err
    assert str(bundle / target) in err and err.count("\n") == 1 and "internal error" not in err


def test_verify_names_a_report_that_is_no_ltcompress_report(passed_run, capsys, tmp_path):
    run, _ = passed_run
    bundle = tmp_path / "bundle"
    shutil.copytree(run / "bundle", bundle)
    (bundle / "report.json").write_text("[1, 2, 3]")
    code, _, err = run_cli(["verify", str(bundle)], capsys)
    assert code == 4 and f"{bundle / 'report.json'} is not an ltcompress report" in err


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("ltcompress.held_out", '{"share": 0.1, "seed"', "ltcompress.held_out is not valid JSON"),
        ("ltcompress.held_out", '{"share": 2, "seed": 0}', "ltcompress.held_out is damaged: share 2"),
        ("ltcompress.input", '{"size": 32, "channels": 3}', "ltcompress.input is damaged: expected the keys"),
        ("ltcompress.input", None, "ltcompress.input is damaged: mean [0.5] is not 3 number(s)"),
        ("ltcompress.class_names", "[]", "ltcompress.class_names is damaged"),
        ("ltcompress.data", '{"dataset": "fmnist-lt", "n_max": "many"}', "ltcompress.data is damaged"),
        ("ltcompress.data", '{"dataset": "fmnist-lt", "pixels": 1}', "unknown data settings pixels"),
    ],
)
def test_verify_refuses_damaged_metadata_by_name_before_loading_data(
    passed_run, workdir, monkeypatch, capsys, tmp_path, key, value, said
):
    """A model whose ltcompress metadata was tampered with: exit 4 naming the field and the file, checked before
    any data loads (here loading data would fail the test)."""
    import ltcompress.data
    from ltcompress.inference import onnx_header
    from ltcompress.metadata import embed

    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    run, _ = passed_run
    model = tmp_path / "model.onnx"
    shutil.copy2(run / "bundle" / "model.onnx", model)
    if value is None:  # a one-channel mean on a three-channel input
        spec = json.loads(onnx_header(model)[1]["ltcompress.input"])
        value = json.dumps({**spec, "channels": 3, "mean": [0.5], "std": [0.25, 0.25, 0.25]})
    embed(model, {key: value})
    monkeypatch.setattr(ltcompress.data, "load", lambda *a, **k: pytest.fail("data loaded before the check"))
    code, _, err = run_cli(["verify", str(model)], capsys)
    assert code == 4, err
    assert str(model) in err and said in err and err.count("\n") == 1 and "internal error" not in err


def test_verify_refuses_a_report_whose_recorded_input_is_damaged(passed_run, capsys, tmp_path):
    run, _ = passed_run
    bundle = tmp_path / "bundle"
    shutil.copytree(run / "bundle", bundle)
    report = json.loads((bundle / "report.json").read_text())
    del report["data"]["input"]["mean"]
    (bundle / "report.json").write_text(json.dumps(report))
    code, _, err = run_cli(["verify", str(bundle)], capsys)
    assert code == 4 and f"{bundle / 'report.json'}: its data.input is damaged" in err
