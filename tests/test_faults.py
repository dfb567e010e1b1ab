"""Faults after training, made real where the kernel can make them: a file-size limit (RLIMIT_FSIZE, EFBIG) or a
small tmpfs (ENOSPC) for a full disk, a read-only mount, truncated and zeroed files. What must hold: every failure
names its file with its documented exit code, nothing partial is left under a final name, and a run that failed
while finishing is completed by --resume without training again."""

import contextlib
import json
import resource
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODELS, cli_exit, tiny_cli_args
from ltcompress import bundle as bundle_mod
from ltcompress.errors import StorageError
from ltcompress.rundir import atomic_save_file, atomic_write_bytes, sha256_file, write_json

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Every file this process writes past `limit` bytes fails with EFBIG, as on a nearly full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the error, not the signal that kills
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (needs mount rights; skipped without them, the RLIMIT tests cover the same paths)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old"))


def test_writers_on_a_full_disk_name_the_file_and_leave_nothing(small_tmpfs):
    big = small_tmpfs / "big.bin"
    with pytest.raises(StorageError, match=f"cannot write {big}: No space left on device") as info:
        atomic_write_bytes(big, b"x" * (2 << 20))
    assert info.value.exit_code == 7 and not big.exists() and leftovers(small_tmpfs) == []
    weights = small_tmpfs / "student.safetensors"
    with pytest.raises(StorageError, match=f"cannot write {weights}"):  # not safetensors' own error type
        atomic_save_file({"w": torch.zeros(1 << 19)}, weights)
    assert not weights.exists() and leftovers(small_tmpfs) == []


def test_writers_past_a_file_size_limit_name_the_file_and_leave_nothing(tmp_path):
    target = tmp_path / "report.json"
    target.write_text('{"old": true}')
    with file_size_limit(1000), pytest.raises(StorageError, match=f"cannot write {target}"):
        write_json(target, {"rows": list(range(1000))})
    assert json.loads(target.read_text()) == {"old": True} and leftovers(tmp_path) == []  # the old file stays
    weights = tmp_path / "student.safetensors"
    with file_size_limit(1000), pytest.raises(StorageError, match=f"cannot write {weights}: File too large"):
        atomic_save_file({"w": torch.zeros(1 << 16)}, weights)  # safetensors' own error type once hid this
    assert not weights.exists() and leftovers(tmp_path) == []


def test_onnx_export_on_a_full_disk_is_exit_7_without_a_partial_file(tmp_path):
    import timm

    from ltcompress import onnx_export
    from ltcompress.data import InputSpec

    model = timm.create_model(TINY_MODELS["student"], num_classes=10)
    spec = InputSpec(32, 3, (0.5,) * 3, (0.25,) * 3, "RGB", 32, "pad", 1.0, "bilinear")
    path = tmp_path / "student.onnx"
    with file_size_limit(4096), pytest.raises(StorageError, match=f"cannot write {path}") as info:
        onnx_export.export(model, spec, path, 18)
    assert info.value.exit_code == 7 and not path.exists() and leftovers(tmp_path) == []


def _run_args(runs: Path, name: str, *extra: str) -> list[str]:
    return ["run", *tiny_cli_args(method="kd", name=name, runs_dir=str(runs)), "--int8", *extra]


def test_a_full_disk_while_finishing_leaves_a_run_resume_completes(tmp_path, monkeypatch, capsys):
    """The disk fills while the bundle is written: exit 7, no report.json (so nothing says passed), no bundle
    and no temporary files; --resume then finishes the run without training again."""
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    real = bundle_mod.write

    def bundle_on_a_full_disk(*args, **kwargs):
        with file_size_limit(1000):
            return real(*args, **kwargs)

    monkeypatch.setattr(bundle_mod, "write", bundle_on_a_full_disk)
    code = cli_exit(_run_args(runs, "full"))
    err = capsys.readouterr().err
    run = runs / "full"
    assert code == 7 and "cannot write" in err and str(run / "bundle") in err and "--resume" in err
    assert not (run / "report.json").exists() and not (run / "bundle").exists() and leftovers(run) == []
    assert (run / "student.onnx").is_file()  # what was finished before the failure stays
    epochs_logged = len((run / "metrics.jsonl").read_text().splitlines())

    monkeypatch.setattr(bundle_mod, "write", real)
    code = cli_exit(_run_args(runs, "full", "--resume"))
    assert code == 0, capsys.readouterr().err
    rep = json.loads((run / "report.json").read_text())
    assert rep["passed"] and (run / "bundle" / "model.onnx").is_file() and leftovers(run) == []
    assert len((run / "metrics.jsonl").read_text().splitlines()) == epochs_logged  # no epoch trained again


def test_a_class_name_with_dollars_reaches_a_bundle(tmp_path, monkeypatch):
    """`a $b_$ c` once broke the plots after training (matplotlib mathtext): exit 1 and no report. The batch
    asked for is larger than the 24 training images: the report records the one used."""
    from PIL import Image

    from ltcompress import compress

    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "cache"))
    names = {"plain": 12, "a $b_$ c": 8, "50$": 4}
    for split, scale in (("train", 1), ("test", 0)):
        for c, (name, n) in enumerate(names.items()):
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n * scale or 3):
                Image.new("RGB", (20, 20), (40 * c, 100 + i, 7 * i)).save(tmp_path / "data" / split / name / f"{i}.png")
    result = compress(
        teacher=TINY_MODELS["teacher"],
        student=TINY_MODELS["student"],
        method="ce",
        dataset="imagefolder",
        data_dir=str(tmp_path / "data"),
        runs_dir=str(tmp_path / "runs"),
        overrides={"student.train.epochs": 1, "student.train.batch_size": 64, "data.input_size": 32},
        progress=False,
    )
    html = (result.run_dir / "report.html").read_text()
    assert result.passed and (result.run_dir / "bundle" / "model.onnx").is_file() and "plot-missing" not in html
    assert result.report.to_dict()["student"]["batch_size_used"] == 24
    assert result.report.to_dict()["config"]["student"]["train"]["batch_size"] == 64


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_teacher_cache_entry_is_named_and_rebuilt(tmp_path, monkeypatch, capsys, damage):
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    assert cli_exit(_run_args(runs, "first")) == 0
    (weights,) = (tmp_path / "cache" / "teachers").glob("*/teacher.safetensors")
    data = weights.read_bytes()
    damaged = data[: len(data) // 2] if damage == "truncated" else data[:200] + bytes(len(data) - 200)
    weights.write_bytes(damaged)
    capsys.readouterr()
    assert cli_exit(_run_args(runs, "second")) == 0
    err = capsys.readouterr().err
    assert f"teacher cache entry {weights.parent} is damaged" in err and "training the teacher again" in err
    second = json.loads((runs / "second" / "teacher.json").read_text())
    assert second["source"] == "trained" and weights.read_bytes() != damaged
    assert load_file(weights) and sha256_file(weights) == second["weights_sha256"]  # the entry was rewritten whole
    assert cli_exit(_run_args(runs, "third")) == 0  # the rebuilt entry is used as it is
    assert json.loads((runs / "third" / "teacher.json").read_text())["source"] == "cache"


def test_resume_on_a_read_only_file_system_is_exit_7(tmp_path, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "runs" / "r").mkdir(parents=True)
        (mount / "runs" / "r" / "config.yaml").write_text("{}\n")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        code = cli_exit(["run", "--runs-dir", str(mount / "runs"), "--name", "r", "--resume"])
        err = capsys.readouterr().err
        assert code == 7 and f"cannot write {mount / 'runs' / 'r' / '.lock'}: Read-only file system" in err
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_two_writers_of_one_cache_file_never_share_a_temporary_name(tmp_path):
    from ltcompress.rundir import temp_name

    names = {temp_name(tmp_path / "teacher.safetensors") for _ in range(100)}
    assert len(names) == 100 and all(n.parent == tmp_path and n.name.startswith(".teacher.safetensors.") for n in names)


@pytest.mark.parametrize("content", [b"run: [unclosed\n", b"\xff\xfe not text", b"- a list\n"])
def test_resume_with_a_damaged_config_is_one_line_naming_it(tmp_path, capsys, content):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_bytes(content)
    code = cli_exit(["run", *tiny_cli_args(method="ce", name="r", runs_dir=str(tmp_path / "runs")), "--resume"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and f"cannot resume {run}: its config.yaml is damaged" in last and "Traceback" not in err
