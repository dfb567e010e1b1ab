"""The CLI's contract without training: instant help, registry-generated listings, exit codes for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from ltcompress import api
from ltcompress.methods import METHODS


def test_help_does_not_import_torch():
    code = (
        "import sys, ltcompress.cli as c\n"
        "try:\n    c.main(['run', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules or 'timm' in sys.modules else 'CLEAN')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--method" in out and "--gate" in out and out.strip().endswith("CLEAN")
    assert all(name in out for name in METHODS.names())  # method names in the help come from the registry


def test_list_methods_comes_from_registry(capsys):
    code, out, _ = run_cli(["list-methods", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == METHODS.names()
    assert all(r["status"] in ("exact", "reading") and r["source"] for r in rows)
    code, out, _ = run_cli(["list-methods"], capsys)
    assert all(name in out for name in METHODS.names())


def test_list_presets_json_is_every_shipped_yaml_with_its_description(capsys):
    import yaml

    shipped = sorted((Path(__file__).resolve().parent.parent / "presets").glob("*.yaml"), key=lambda p: p.stem)
    code, out, _ = run_cli(["list-presets", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == [p.stem for p in shipped]
    assert [r["description"] for r in rows] == [yaml.safe_load(p.read_text())["description"] for p in shipped]
    code, out, _ = run_cli(["list-presets"], capsys)
    assert code == 0 and out.count("\n") == len(shipped)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--method", "bkdd"], 2, "unknown method 'bkdd'. Did you mean: bkd"),
        (["--student", "mobilenetv4_smal"], 2, "unknown model 'mobilenetv4_smal'"),
        (["--gate", "few => 0.5"], 2, "malformed gate"),
        (["--gate", "few >= 50"], 2, "did you mean 0.5"),
        (["--set", "student.train.epoch=3"], 2, "Did you mean: epochs"),
        (["--set", "nonsense"], 2, "expects KEY=VALUE"),
        (["--method-arg", "temperature=2"], 2, "method argument 'temperature' does not exist"),
        (["--preset", "nope"], 2, "unknown preset"),
        (["--device", "cuda:99"], 2, "--device cuda:99: no such device here"),
        (["--device", "mps"], 2, "--device mps: no such device here"),
        (["--device", "tpu"], 2, "unknown device"),
        (["--gate", "drop(fp32, int8) <= 0.01"], 2, "drop(a, b) needs a metric"),
        (["--gate", "teacher.agreement >= 0.9"], 2, "exists for the stages fp32, int8 only"),
        (["--set", "export.calibration=tail"], 2, "export.calibration must be one of stratified, random"),
        (["--set", "export.calibration_size=0"], 2, "export.calibration_size must be at least 1"),
    ],
)
def test_usage_errors_exit_2_before_any_work(tmp_path, capsys, args, code, message):
    runs = tmp_path / "runs"
    got, _, err = run_cli(["run", "--runs-dir", str(runs), *args], capsys)
    assert got == code
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not runs.exists()  # nothing written


def test_gate_on_a_group_the_data_lacks_is_exit_2(tmp_path, capsys, fmnist):
    # n_max 100 with default thresholds: no class has more than 100 images, so there is no Many group
    got, _, err = run_cli(
        ["run", "--runs-dir", str(tmp_path / "r"), "--set", "data.n_max=100", "--gate", "many >= 0.5"], capsys
    )
    assert got == 2 and "no Many-shot class" in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "gate, message",
    [
        (
            "int8.few >= 0.5",
            "stage 'int8' does not exist in this run (stages: teacher, student, fp32) (turn INT8 on with --int8)",
        ),
        ("flip(fp32, int8) <= 0.1", "stage 'int8' does not exist"),
        ("class[Sandals] >= 0.5", "no class named 'Sandals'. Did you mean: Sandal"),
    ],
)
def test_gates_the_run_cannot_answer_are_exit_2_before_training(tmp_path, capsys, fmnist, gate, message):
    got, _, err = run_cli(["run", "--runs-dir", str(tmp_path / "r"), "--gate", gate], capsys)
    assert got == 2 and message in err and not (tmp_path / "r").exists()


def test_missing_data_is_exit_3_with_the_command_that_gets_it(tmp_path, capsys):
    got, _, err = run_cli(["run", "--runs-dir", str(tmp_path / "r"), "--data-dir", str(tmp_path)], capsys)
    assert got == 3 and "apt-get install -y dataset-fashion-mnist" in err


def test_unwritable_runs_dir_is_exit_7_naming_the_path(tmp_path, capsys, fmnist):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    got, _, err = run_cli(["run", "--method", "ce", "--runs-dir", str(blocker / "runs")], capsys)
    assert got == 7 and str(blocker / "runs") in err


def test_interrupt_is_130_and_internal_error_is_1_with_traceback_only_in_debug(monkeypatch, capsys):
    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "compress", interrupted)
    assert run_cli(["run"], capsys)[0] == 130

    def broken(**_):
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "compress", broken)
    code, _, err = run_cli(["run"], capsys)
    assert code == 1 and "internal error: RuntimeError: boom" in err and "Traceback" not in err
    code, _, err = run_cli(["--debug", "run"], capsys)
    assert code == 1 and "Traceback" in err


def test_readings_are_marked_in_help_and_listing(capsys):
    from ltcompress.methods import list_methods

    readings = [i.name for i in list_methods() if i.status == "reading"]
    assert readings, "the registry has readings (rekd, krdistill)"
    help_text = run_cli(["run", "--help"], capsys)[1]
    listing = run_cli(["list-methods"], capsys)[1]
    for name in readings:
        assert f"{name} (a reading)" in " ".join(help_text.split())
        assert any(line.startswith(name) and "reading" in line for line in listing.splitlines())
    in_force = [line.split(":", 1)[1].strip() for line in listing.splitlines() if "reading in force:" in line]
    assert in_force == [i.reading for i in list_methods() if i.status == "reading"]


def test_a_reading_must_name_the_reading_in_force():
    from ltcompress.methods import register_method

    with pytest.raises(ValueError, match="reading in force"):
        register_method("unnamed_reading", "x:Y", summary="s", source="s", status="reading")
    with pytest.raises(ValueError, match="reading in force"):
        register_method("exact_with_reading", "x:Y", summary="s", source="s", reading="first")


def test_method_args_are_typed_and_checked_before_any_work(tmp_path, capsys, fmnist):
    runs = tmp_path / "runs"
    got, _, err = run_cli(["run", "--runs-dir", str(runs), "--method", "rekd", "--method-arg", "k=1"], capsys)
    assert got == 2 and "2 <= k <= C - 2" in err and not runs.exists()
    got, _, err = run_cli(["run", "--runs-dir", str(runs), "--method", "krdistill", "--method-arg", "lam=much"], capsys)
    assert got == 2 and "lam" in err and not runs.exists()


def test_method_arg_values_parse_to_their_types():
    from ltcompress.methods import METHODS
    from ltcompress.values import key_values

    args = key_values(("topk_from=teacher", "T=2", "k=3"), "--method-arg")
    params = METHODS.get("rekd").make_params(args)
    assert (params.topk_from, params.T, params.k) == ("teacher", 2.0, 3)
    params = METHODS.get("krdistill").make_params(key_values(("feature_term=false", "lam=1e-1"), "x"))
    assert params.feature_term is False and params.lam == 0.1


def test_run_help_names_every_registered_dataset(capsys):
    from ltcompress.data import DATASETS

    help_text = " ".join(run_cli(["run", "--help"], capsys)[1].split())
    assert all(name in help_text for name in DATASETS.names())


def test_readme_method_table_is_the_registry_markdown(capsys):
    code, out, _ = run_cli(["list-methods", "--markdown"], capsys)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert code == 0 and out.count("\n") == len(METHODS.names()) + 2
    assert out.strip() in readme, "README's method table differs from `ltcompress list-methods --markdown`"


@pytest.mark.parametrize(
    "option, prefix, expected",
    [
        ("--method", "kr", "plain,krdistill"),
        ("--preset", "fmnist-lt-b", "plain,fmnist-lt-bench"),
        ("--dataset", "cifar1", "plain,cifar10-lt"),
    ],
)
def test_shell_completion_offers_registered_names(option, prefix, expected):
    from conftest import LTCOMPRESS

    env = {
        **os.environ,
        "COMP_WORDS": f"ltcompress run {option} {prefix}",
        "COMP_CWORD": "3",
        "_LTCOMPRESS_COMPLETE": "bash_complete",
    }
    out = subprocess.run([str(LTCOMPRESS)], capture_output=True, text=True, env=env, check=True).stdout
    assert expected in out.splitlines()
