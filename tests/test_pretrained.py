"""Pretrained starts through timm / huggingface_hub cache semantics, on a real HF cache layout built on disk for a
tiny timm model (no network): HF_HUB_OFFLINE with cached weights, empty caches, corrupt files, mirrors, files."""

import hashlib
import http.server
import os
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from ltcompress import hub as hub_mod
from ltcompress import models
from ltcompress.errors import UsageError

ARCH = "test_resnet"
SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty, isolated HF cache in offline mode (env and huggingface_hub's import-time constants)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _imagenet_state(arch=ARCH):
    torch.manual_seed(123)
    return {k: v.contiguous() for k, v in models.create(arch, 1000).state_dict().items()}


def cache_weights(cache, arch=ARCH):
    """What `hf download` leaves: blobs/<etag>, snapshots/<commit>/model.safetensors -> blob, refs/main."""
    from timm.models import get_pretrained_cfg

    repo = get_pretrained_cfg(arch).hf_hub_id  # the default tag's repo, e.g. timm/test_resnet.r160_in1k
    assert repo == f"timm/{arch}.r160_in1k"
    folder = cache / f"models--{repo.replace('/', '--')}"
    state = _imagenet_state(arch)
    (folder / "blobs").mkdir(parents=True)
    tmp = folder / "blobs" / "tmp"
    save_file(state, str(tmp))
    blob = folder / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
    tmp.rename(blob)
    (folder / "snapshots" / SHA).mkdir(parents=True)
    (folder / "snapshots" / SHA / "model.safetensors").symlink_to(os.path.relpath(blob, folder / "snapshots" / SHA))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(SHA)
    return state, blob


def assert_backbone_is(model, state, num_classes):
    own = model.state_dict()
    assert own["fc.weight"].shape[0] == num_classes
    for key, value in state.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(own[key], value, msg=key)


@pytest.mark.parametrize("init", ["auto", "pretrained"])
def test_cached_weights_are_used_offline_with_a_new_head(hub, init):
    state, blob = cache_weights(hub)
    start = time.perf_counter()
    assert models.resolve_init(init, ARCH, "student")[0] == "pretrained"
    assert time.perf_counter() - start < 1
    model, info = models.build(ARCH, 7, 3, init)
    assert_backbone_is(model, state, 7)
    assert info["init"] == "pretrained" and info["source"] == "hf-cache"
    assert info["weights_sha256"] == blob.name  # the file that was loaded is the cached one
    from huggingface_hub import try_to_load_from_cache

    assert os.path.realpath(info["file"]) == os.path.realpath(
        try_to_load_from_cache("timm/test_resnet.r160_in1k", "model.safetensors")
    )


def test_cached_weights_adapt_to_one_channel(hub):
    state, _ = cache_weights(hub)
    model, _ = models.build(ARCH, 4, 1, "pretrained", role="teacher")
    first = model.state_dict()["conv1.0.weight"]
    assert first.shape[1] == 1
    torch.testing.assert_close(first, state["conv1.0.weight"].sum(dim=1, keepdim=True))


def test_empty_cache_auto_is_scratch_at_once_and_pretrained_is_exit_2(hub):
    start = time.perf_counter()
    init, reason = models.resolve_init("auto", ARCH, "teacher")
    assert time.perf_counter() - start < 1
    assert init == "scratch" and "HF_HUB_OFFLINE" in reason and "test_resnet.r160_in1k" in reason
    model, info = models.build(ARCH, 5, 3, "auto", role="student")
    assert info == {"init": "scratch", "reason": reason, "source": "scratch"}
    assert model.get_classifier().out_features == 5
    for role in ("teacher", "student"):
        with pytest.raises(UsageError, match=f"--{role}-weights FILE, or --{role}-init scratch") as err:
            models.build(ARCH, 5, 3, "pretrained", role=role)
        assert err.value.exit_code == 2 and "HF_HUB_OFFLINE" in str(err.value)


def test_scratch_is_scratch_even_when_cached(hub):
    cache_weights(hub)
    torch.manual_seed(0)
    model, info = models.build(ARCH, 5, 3, "scratch")
    torch.manual_seed(0)
    assert info["init"] == "scratch"
    torch.testing.assert_close(model.state_dict(), models.create(ARCH, 5).state_dict())


def test_truncated_cached_file_is_a_clear_error_naming_it(hub):
    _, blob = cache_weights(hub)
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache("timm/test_resnet.r160_in1k", "model.safetensors")
    for init in ("auto", "pretrained"):
        with pytest.raises(UsageError, match="truncated or corrupt") as err:
            models.build(ARCH, 5, 3, init, role="teacher")
        assert cached in str(err.value) and "--teacher-init scratch" in str(err.value)


def test_a_damaged_cached_file_is_refused_before_the_run_folder_exists(hub, tmp_path, monkeypatch, capsys):
    """The plan step loads the cached weights a model will start from: a truncated file is exit 2 naming it,
    before a run folder is made or a model trains."""
    from conftest import run_cli, tiny_cli_args

    _, blob = cache_weights(hub)
    blob.write_bytes(blob.read_bytes()[:4096])
    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "ltc-cache"))
    runs = tmp_path / "runs"
    args = tiny_cli_args(method="ce", name="cached", runs_dir=str(runs))
    code, _, err = run_cli(["run", *args, "--student", ARCH, "--student-init", "pretrained"], capsys)
    assert code == 2 and "truncated or corrupt" in err and not (runs / "cached").exists()


def test_arch_without_pretrained_weights():
    from timm.models import get_pretrained_cfg

    arch = "test_vit4"
    assert not get_pretrained_cfg(arch).hf_hub_id  # timm knows no weights for it
    assert models.resolve_init("auto", arch, "student") == ("scratch", f"timm has no pretrained weights for {arch}")
    with pytest.raises(UsageError, match="no pretrained weights for test_vit4; pass --student-weights"):
        models.resolve_init("pretrained", arch, "student")
    assert models.pretrained_preprocessing(arch) is None


def test_pretrained_preprocessing_is_the_default_tags():
    pre = models.pretrained_preprocessing(ARCH)
    assert pre == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 0.95, "interpolation": "bilinear"}
    assert models.pretrained_preprocessing("test_efficientnet")["interpolation"] == "bicubic"


class Mirror(http.server.BaseHTTPRequestHandler):
    """A minimal HF_ENDPOINT mirror: serves `files` (URL path -> bytes) the way the hub's resolve/ URLs do."""

    files: dict = {}
    seen: list = []

    def do_HEAD(self):
        self._reply(body=False)

    def do_GET(self):
        self._reply(body=True)

    def _reply(self, body):
        self.seen.append(self.path)
        data = self.files.get(self.path.split("?")[0])
        self.send_response(200 if data is not None else 404)
        if data is not None:
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", SHA)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        if body and data:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror(hub, monkeypatch):
    """huggingface_hub online, HF_ENDPOINT pointing at a local Mirror (its constants are read at import)."""
    from huggingface_hub import constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(Mirror, "files", {})
    monkeypatch.setattr(Mirror, "seen", [])
    yield url
    server.shutdown()
    server.server_close()


def test_online_weights_come_from_the_hf_endpoint_mirror(mirror, hub):
    from safetensors.torch import save

    state = _imagenet_state()
    Mirror.files[f"/timm/{ARCH}.r160_in1k/resolve/main/model.safetensors"] = save(state)
    assert models.resolve_init("auto", ARCH, "student") == ("pretrained", f"timm/{ARCH}.r160_in1k from {mirror}")
    assert Mirror.seen == ["/"]  # deciding asks the hub once whether it answers, and downloads nothing
    model, info = models.build(ARCH, 5, 3, "auto")
    assert info["init"] == "pretrained" and info["source"] == "hub" and Mirror.seen
    assert_backbone_is(model, state, 5)
    assert models.build(ARCH, 5, 3, "pretrained")[1]["source"] == "hf-cache"  # downloaded once, then cached


def test_online_auto_falls_back_to_scratch_when_the_mirror_has_no_weights(mirror):
    torch.manual_seed(0)
    model, info = models.build(ARCH, 5, 3, "auto")
    assert info["init"] == "scratch" and mirror in info["reason"] and Mirror.seen
    torch.manual_seed(0)
    torch.testing.assert_close(model.state_dict(), models.create(ARCH, 5).state_dict())  # as a scratch run
    expected = f"could not be fetched \\(timm/test_resnet.r160_in1k from {mirror}: .*--teacher-weights FILE"
    with pytest.raises(UsageError, match=expected) as err:
        models.build(ARCH, 5, 3, "pretrained", role="teacher")
    assert err.value.exit_code == 2


def test_student_weights_file_backbone_with_new_head_or_kept_head(tmp_path):
    imagenet = _imagenet_state()
    save_file(imagenet, str(tmp_path / "in1k.safetensors"))
    model, info = models.build(ARCH, 6, 3, "auto", weights=str(tmp_path / "in1k.safetensors"))
    assert_backbone_is(model, imagenet, 6)
    assert info["init"] == "file" and info["head"] == "new"
    finished = {k: v.contiguous() for k, v in models.create(ARCH, 6).state_dict().items()}
    torch.save({"state_dict": finished}, tmp_path / "mine.pth")
    model, info = models.build(ARCH, 6, 3, "scratch", weights=str(tmp_path / "mine.pth"))
    torch.testing.assert_close(model.state_dict(), finished)
    assert info["head"] == "file" and len(info["weights_sha256"]) == 64


def test_teacher_init_file_is_a_start_with_a_new_head(tmp_path):
    imagenet = _imagenet_state()
    torch.save(imagenet, tmp_path / "resnet.pth")
    model, info = models.build(ARCH, 3, 3, str(tmp_path / "resnet.pth"), role="teacher")
    assert_backbone_is(model, imagenet, 3)
    assert info["init"] == "file" and info["source"] == str((tmp_path / "resnet.pth").resolve())


def test_weights_file_for_another_arch_or_unsafe_is_exit_2(tmp_path):
    save_file(_imagenet_state("test_efficientnet"), str(tmp_path / "eff.safetensors"))
    with pytest.raises(UsageError, match="--student-weights .* does not fit test_resnet"):
        models.build(ARCH, 6, 3, "auto", weights=str(tmp_path / "eff.safetensors"))
    torch.save({"state_dict": _imagenet_state(), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UsageError, match="--teacher-init .* cannot be loaded safely"):
        models.build(ARCH, 6, 3, str(tmp_path / "evil.pt"), role="teacher")
    with pytest.raises(UsageError, match="--student-init 'nope.pt' must be auto, pretrained, scratch or"):
        models.resolve_init("nope.pt", ARCH, "student")


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_config_checks_init_and_weights(tmp_path):
    from ltcompress.config import resolve

    (tmp_path / "w.safetensors").write_bytes(b"x")
    assert resolve(None, {"teacher.init": str(tmp_path / "w.safetensors")}).teacher.init.endswith("w.safetensors")
    assert resolve(None, {"student.init": "scratch"}).student.init == "scratch"
    with pytest.raises(UsageError, match="student.init must be auto, pretrained, scratch or a weights file"):
        resolve(None, {"student.init": "imagenet"})
    with pytest.raises(UsageError, match="student.weights"):
        resolve(None, {"student.weights": str(tmp_path / "missing.pt")})


def test_cli_maps_student_options(tmp_path):
    from ltcompress.api import build_config

    (tmp_path / "s.pt").write_bytes(b"x")
    cfg = build_config(None, {}, student_init="pretrained", student_weights=str(tmp_path / "s.pt"))
    assert (cfg.student.init, cfg.student.weights) == ("pretrained", str(tmp_path / "s.pt"))
    from click.testing import CliRunner

    from ltcompress.cli import cli

    out = CliRunner().invoke(cli, ["run", "--help"]).output
    assert "--student-init" in out and "--student-weights" in out


def test_pretrained_teacher_is_fine_tuned_with_its_recipe_and_records_it(hub, tmp_path, monkeypatch):
    """The teacher's init resolves to pretrained (from the HF cache): teacher.finetune runs, the cache key and
    teacher.json name it; a scratch teacher keeps teacher.train under another key."""
    from conftest import tiny_data

    from ltcompress import teacher as stage
    from ltcompress.config import resolve

    cache_weights(hub)
    data = tiny_data()
    over = {
        "teacher.arch": ARCH,
        "teacher.finetune.epochs": 1,
        "teacher.finetune.batch_size": 16,
        "teacher.train.epochs": 2,
        "run.cache_dir": str(tmp_path / "cache"),
    }
    cfg = resolve(None, over)
    p = stage.plan(cfg, data, "ce")
    assert (p.init, p.key) == ("pretrained", stage.cache_key(cfg, ARCH, "pretrained", "ce", data))
    assert p.key != stage.cache_key(cfg, ARCH, "scratch", "ce", data)
    assert stage.recipe_for(cfg, "pretrained") == ("finetune", cfg.teacher.finetune)
    seen = {}
    real_train = stage.train
    monkeypatch.setattr(
        stage,
        "train",
        lambda model, method, d, recipe, *a, **k: (
            seen.setdefault("recipe", recipe),
            real_train(model, method, d, recipe, *a, **k),
        )[1],
    )
    from ltcompress.role import Follower

    got = stage.obtain(p, cfg, data, torch.device("cpu"), Follower(resume=False))  # no run directory
    assert seen["recipe"] == cfg.teacher.finetune
    prov = got.provenance
    assert prov["recipe_name"] == "finetune" and prov["recipe"]["epochs"] == 1 and prov["init"] == "pretrained"
    assert prov["init_source"]["source"] == "hf-cache" and prov["cache_key"] == p.key
    assert isinstance(got.module, models.Renormalize)  # pretrained mean/std 0.5 vs the data's 0.5/0.25


@pytest.fixture
def silent_hub(hub, monkeypatch):
    """HF_HUB_OFFLINE unset and HF_ENDPOINT at a local socket that accepts connections and never answers: a hub
    behind a network that swallows packets."""
    import socket

    from huggingface_hub import constants

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(hub_mod, "_probed", {})
    yield url
    sock.close()


def test_an_unreachable_hub_is_decided_by_one_short_request_then_the_run_is_offline(silent_hub, caplog):
    from huggingface_hub import constants

    init, reason = models.resolve_init("auto", ARCH, "teacher")
    assert init == "scratch" and reason.startswith("the hub did not answer") and constants.HF_HUB_OFFLINE
    assert models.resolve_init("auto", "test_efficientnet", "student")[0] == "scratch"
    said = [r.getMessage() for r in caplog.records if "did not answer within" in r.getMessage()]
    assert len(said) == 1 and silent_hub in said[0] and "HF_HUB_OFFLINE=1" in said[0]  # once per run
    with pytest.raises(UsageError, match="the hub did not answer and timm/test_resnet.r160_in1k is not in"):
        models.resolve_init("pretrained", ARCH, "teacher")


def test_cached_weights_load_without_the_network_when_the_hub_does_not_answer(silent_hub, hub):
    state, _ = cache_weights(hub)
    assert models.resolve_init("auto", ARCH, "student")[0] == "pretrained"
    model, info = models.build(ARCH, 5, 3, "auto")
    assert info["source"] == "hf-cache"
    assert_backbone_is(model, state, 5)


def test_the_cli_says_once_that_the_hub_is_unreachable_and_goes_on(silent_hub, tmp_path):
    """As a user on a machine without a network runs it, with no HF_HUB_OFFLINE: decided, said once, scratch."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    args = [sys.executable, "-m", "ltcompress", "run", "--teacher", ARCH, "--student", "test_efficientnet"]
    args += ["--method", "kd", "--student-init", "auto", "--runs-dir", str(tmp_path), "--no-progress", "--dry-run"]
    proc = subprocess.run(args, capture_output=True, text=True, env={**env, "HF_ENDPOINT": silent_hub}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("did not answer within 3 s") == 1
    assert "student init: scratch (the hub did not answer" in proc.stderr
