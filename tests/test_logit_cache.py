"""The exact teacher-logit cache: cached and uncached runs train bit-identical students."""

import pytest
import torch
from safetensors.torch import save_file

from ltcompress.loop import LoopOptions
from ltcompress.logit_cache import LogitCache
from conftest import TINY_COUNTS as COUNTS, tiny_distill

SPEC = {"teacher_sha256": "t" * 64, "data": "d" * 64, "sampler": "instance", "seed": 0}


def _student(method_name="bkd", cache=None, **params):
    student, _, result = tiny_distill(
        method_name, batch_size=8, params=params, options=LoopOptions(teacher_cache=cache, progress=False)
    )
    return student.state_dict(), [h.get("teacher_logits") for h in result.history]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_filled_and_reused_cache_give_the_uncached_student(tmp_path):
    cache = LogitCache.open(tmp_path, SPEC)
    plain, _ = _student()
    filled, sources = _student(cache=cache)
    assert sources == ["computed", "computed"] and len(list(cache.folder.glob("epoch-*.safetensors"))) == 2
    reused, sources = _student(cache=cache)
    assert sources == ["cache", "cache"]
    assert _same(plain, filled) and _same(plain, reused)


def test_a_stale_or_foreign_file_is_rebuilt_not_used(tmp_path):
    cache = LogitCache.open(tmp_path, SPEC)
    plain, _ = _student()
    cache.folder.mkdir(parents=True)
    save_file(
        {"logits": torch.zeros(72, len(COUNTS))},
        str(cache.folder / "epoch-0001.safetensors"),
        metadata={"key": "another run"},
    )
    (cache.folder / "epoch-0002.safetensors").write_bytes(b"not safetensors")
    student, sources = _student(cache=cache)
    assert sources == ["computed", "computed"] and _same(plain, student)
    assert cache.load(0, 72) is not None and cache.load(1, 72) is not None  # rewritten for this run
    assert LogitCache.open(tmp_path, {**SPEC, "seed": 1}).folder != cache.folder


def test_methods_that_need_teacher_features_run_the_teacher(tmp_path):
    cache = LogitCache.open(tmp_path, SPEC)
    _, sources = _student("krdistill", cache=cache, feature_term=True)
    assert sources == ["computed", "computed"] and not cache.folder.exists()


@pytest.mark.slow
def test_teacher_cache_option_end_to_end(tmp_path, monkeypatch, capsys):
    import json

    from safetensors.torch import load_file

    from conftest import tiny_cli_args
    from ltcompress.cli import main

    monkeypatch.setenv("LTCOMPRESS_CACHE", str(tmp_path / "cache"))
    for name, extra in (("plain", []), ("fill", ["--teacher-cache"]), ("hit", ["--teacher-cache"])):
        main(["run", *tiny_cli_args(method="kd", name=name, runs_dir=str(tmp_path / "runs")), *extra])
    runs = tmp_path / "runs"
    weights = [load_file(str(runs / n / "student.safetensors")) for n in ("plain", "fill", "hit")]
    assert all(_same(weights[0], w) for w in weights[1:])
    records = [json.loads(line) for line in (runs / "hit" / "metrics.jsonl").read_text().splitlines()]
    sources = [r.get("teacher_logits") for r in records if r["stage"] == "student"]
    assert sources == ["cache", "cache"]


def test_a_damaged_cache_file_is_named_and_rebuilt_not_used(tmp_path, caplog):
    """Zeroed data keeps a valid safetensors header: only the checksum can tell, and the file is rebuilt."""
    from ltcompress.logit_cache import LogitCache

    cache = LogitCache.open(tmp_path, {"teacher": "t", "seed": 0})
    logits = torch.randn(8, 10)
    cache.save(0, logits)
    torch.testing.assert_close(cache.load(0, 8), logits)
    path = cache._path(0)
    data = path.read_bytes()
    path.write_bytes(data[:-40] + bytes(40))
    assert cache.load(0, 8) is None and f"teacher-logit cache {path} is damaged" in caplog.text
    path.write_bytes(data[: len(data) // 2])
    assert cache.load(0, 8) is None and "is unreadable" in caplog.text
    cache.save(0, logits)  # rebuilt in place
    torch.testing.assert_close(cache.load(0, 8), logits)
    assert sorted(p.name for p in cache.folder.iterdir()) == [".lock", path.name]  # no temporary file left
