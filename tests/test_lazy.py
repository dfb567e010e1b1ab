"""The lazy path: image folders decoded in DataLoader workers. Exact resume, exact teacher-logit cache, the
same batches as the in-memory path, and bad input at scale (a corrupt image met mid-epoch, a folder changed
before --resume, Ctrl-C and SIGKILL with workers running)."""

import copy
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODELS, lazy_cli_args, photo_tree, run_cli
from ltcompress import models
from ltcompress.config import DataConfig, TrainConfig
from ltcompress.data import eval_batches, load, train_batches
from ltcompress.data.core import streamed_stats, channel_stats
from ltcompress.loop import LoopOptions, prepare_method, train
from ltcompress.logit_cache import LogitCache
from conftest import tiny_method as make


def folder_data(root: Path, **kw):
    values = {"dataset": "imagefolder", "data_dir": str(root), "input_size": 32, "in_memory": False, "workers": 1, **kw}
    return load(DataConfig(**values), root)


def _distill(data, epochs=2, stop_after_epoch=None, resume=None, saved=None, cache=None):
    torch.manual_seed(0)
    teacher = models.create(TINY_MODELS["teacher"], data.num_classes)
    method = make("kd", epochs)
    student, _ = prepare_method(
        method, models.create(TINY_MODELS["student"], data.num_classes), teacher, data, torch.device("cpu"), 32
    )

    def on_epoch(record):
        if record["epoch"] == stop_after_epoch:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(
        student,
        method,
        data,
        TrainConfig(epochs=epochs, batch_size=8, lr=0.05),
        torch.device("cpu"),
        stage="student",
        seed=0,
        teacher=teacher,
        on_epoch=on_epoch,
        resume=resume,
        checkpoint=None if saved is None else lambda state: saved.append(copy.deepcopy(state)),
        options=LoopOptions(teacher_cache=cache, progress=False),
    )
    return student.state_dict(), result.history


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return photo_tree(tmp_path_factory.mktemp("photos"))


def test_lazy_and_in_memory_paths_give_the_same_evaluation_batches(tree):
    lazy, memory = folder_data(tree), folder_data(tree, in_memory=True)
    assert lazy.train.lazy and memory.in_memory and lazy.fingerprint == memory.fingerprint
    assert lazy.spec == memory.spec
    for (xa, ya), (xb, yb) in zip(
        eval_batches(lazy, lazy.test, 5, torch.device("cpu")), eval_batches(memory, memory.test, 5, torch.device("cpu"))
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_in_memory_auto_decides_by_the_decoded_size(tree):
    assert folder_data(tree, in_memory="auto").in_memory
    tight = folder_data(tree, in_memory="auto", memory_budget_gb=1e-6)
    assert tight.train.lazy and "exceeds" in tight.pipeline.in_memory_reason


def test_statistics_come_from_a_bounded_sample_without_a_copy(tree):
    data = folder_data(tree, in_memory=True)
    exact = channel_stats(data.train.images)
    streamed = streamed_stats(iter(data.train.images))
    np.testing.assert_allclose(streamed, exact, rtol=1e-9)
    sampled = folder_data(tree, stats_sample=8).spec
    assert sampled.mean != data.spec.mean  # 8 images, not all of them
    np.testing.assert_allclose(sampled.mean, exact[0], atol=0.1)


def test_fingerprint_follows_the_files_not_the_pixels(tree, tmp_path):
    import shutil

    copy_root = tmp_path / "copy"
    shutil.copytree(tree, copy_root)
    a = folder_data(copy_root)
    victim = next((copy_root / "train" / "class 0").iterdir())
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert folder_data(copy_root).fingerprint != a.fingerprint


@pytest.mark.parametrize("augment", ["timm", "crop_flip"])
def test_lazy_training_batches_depend_only_on_seed_epoch_and_position(tree, augment):
    data = folder_data(tree, augment=augment, mixup=0.4, re_prob=0.3)
    from ltcompress.loop import _mixer

    mixer, order = _mixer(data, torch.device("cpu")), np.random.default_rng(0).permutation(len(data.train))[:40]

    def batches(first_step):
        gen = torch.Generator().manual_seed(0)
        if first_step:  # the generator as a resumed run restores it: advanced by the skipped steps
            list(
                train_batches(
                    data,
                    order[: first_step * 8],
                    8,
                    torch.device("cpu"),
                    key=(0, 1, 0),
                    first_step=0,
                    generator=gen,
                    mixer=None,
                )
            )
        return list(
            train_batches(
                data, order, 8, torch.device("cpu"), key=(0, 1, 0), first_step=first_step, generator=gen, mixer=mixer
            )
        )

    whole, tail = batches(0), batches(2)
    assert len(whole) == 5 and len(tail) == 3
    for a, b in zip(whole[2:], tail):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.lam == b.lam


def test_killed_lazy_run_resumes_to_the_bit_identical_student(tree):
    data = folder_data(tree, mixup=0.4)  # timm augmentation in a worker, Mixup on the batch
    reference, _ = _distill(data)
    saved = []
    with pytest.raises(KeyboardInterrupt):
        _distill(data, stop_after_epoch=1, saved=saved)
    assert (saved[-1]["epoch"], saved[-1]["step"]) == (1, 1)
    resumed, _ = _distill(data, resume=saved[-1])
    assert _same(resumed, reference)


def test_teacher_logit_cache_gives_the_identical_student_on_the_lazy_path(tree, tmp_path):
    data = folder_data(tree)
    cache = LogitCache.open(tmp_path, {"test": "lazy"})
    first, history = _distill(data, cache=cache)
    second, cached = _distill(data, cache=cache)
    assert [h["teacher_logits"] for h in history] == ["computed"] * 2
    assert [h["teacher_logits"] for h in cached] == ["cache"] * 2
    assert _same(first, second)


def test_ema_weights_are_exported_and_resume_exactly(tree):
    data = folder_data(tree)
    torch.manual_seed(0)
    plain = models.create(TINY_MODELS["student"], data.num_classes)
    ema_model = copy.deepcopy(plain)
    method = make("ce", 2)
    train(
        plain,
        method,
        data,
        TrainConfig(epochs=2, batch_size=8, lr=0.05),
        torch.device("cpu"),
        stage="student",
        seed=0,
        options=LoopOptions(progress=False),
    )
    saved = []
    train(
        ema_model,
        make("ce", 2),
        data,
        TrainConfig(epochs=2, batch_size=8, lr=0.05, ema=True, ema_decay=0.5),
        torch.device("cpu"),
        stage="student",
        seed=0,
        options=LoopOptions(progress=False),
        checkpoint=lambda state: saved.append(copy.deepcopy(state)),
    )
    assert "ema" in saved[-1] and not _same(plain.state_dict(), ema_model.state_dict())
    assert _same(ema_model.state_dict(), {k.removeprefix("module."): v for k, v in saved[-1]["ema"].items()})


def test_corrupt_image_met_by_a_worker_is_exit_3_naming_it_or_skipped_and_counted(tree, tmp_path, capsys):
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(tree, root)
    bad = root / "train" / "class 2" / "002.png"
    bad.write_bytes(b"not an image at all")
    code, _, err = run_cli(["run", *lazy_cli_args(root, tmp_path / "runs", "bad", "--set", "data.workers=2")], capsys)
    assert code == 3 and str(bad) in err and "data.skip_corrupt" in err and "Traceback" not in err
    code, _, err = run_cli(
        ["run", *lazy_cli_args(root, tmp_path / "runs", "skip", "--set", "data.skip_corrupt=true")], capsys
    )
    assert code == 0, err
    import json

    report = json.loads((tmp_path / "runs" / "skip" / "report.json").read_text())
    assert report["data"]["skipped"] == [str(bad)] and report["data"]["pipeline"]["in_memory"] is False


@pytest.mark.slow
def test_lazy_224px_run_with_teacher_and_student_pretrained_from_the_hf_cache(tree, tmp_path, monkeypatch):
    """The real workload in miniature: a photo folder decoded lazily at 224 px, timm transforms, both models
    starting from weights found offline in a Hugging Face cache; the bundle classifies the files as verify did."""
    from huggingface_hub import constants

    from ltcompress import compress
    from ltcompress.edge.runtime import Bundle
    from test_pretrained import cache_weights

    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    for arch in TINY_MODELS.values():
        cache_weights(hub, arch)
    overrides = {
        "data.input_size": 224,
        "data.geometry": "crop",  # the tree's 40-90 px images would be padded to 224 px otherwise
        "data.in_memory": False,
        "data.workers": 2,
        "teacher.finetune.epochs": 1,
        "student.finetune.epochs": 1,  # a pretrained student runs its fine-tune recipe
        "teacher.finetune.batch_size": 8,
        "student.finetune.batch_size": 8,
        "student.finetune.ema": True,
    }
    result = compress(
        teacher=TINY_MODELS["teacher"],
        student=TINY_MODELS["student"],
        method="kd",
        dataset="imagefolder",
        data_dir=str(tree),
        teacher_init="pretrained",
        student_init="auto",
        runs_dir=str(tmp_path / "runs"),
        overrides=overrides,
        progress=False,
    )
    assert result.passed
    rep = result.report.to_dict()
    assert rep["student"]["init"] == "pretrained" and rep["student"]["exported_weights"] == "ema"
    assert rep["student"]["recipe"] == "finetune"
    assert rep["teacher"]["init"] == "pretrained" and rep["teacher"]["recipe_name"] == "finetune"
    data = rep["data"]
    assert data["pipeline"]["in_memory"] is False and data["pipeline"]["augment"] == "timm"
    assert data["pipeline"]["normalize"] == "pretrained" and list(data["input"]["mean"]) == [0.485, 0.456, 0.406]
    assert data["input"]["size"] == 224 and data["input"]["geometry"] == "crop" and data["input"]["crop_pct"] == 0.95
    bundle = Bundle(result.bundle_dir)
    files = sorted((tree / "test").rglob("*.*"))  # the loader's order: class folders, then names
    got = [r["class_index"] for r in bundle.classify(files)]
    assert got == np.load(result.run_dir / "predictions.npz")["fp32"].tolist()


def test_a_worker_that_dies_is_a_clear_error_not_a_hang(tree, monkeypatch):
    from ltcompress.data import loader
    from ltcompress.errors import DataError

    data = folder_data(tree, workers=1)
    parent = os.getpid()

    def die(self, position):
        if os.getpid() != parent:  # in the worker: killed as the OOM killer would
            os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(loader.SampleSet, "__getitem__", die)
    with pytest.raises(DataError, match="data-loading worker failed.*lower data.workers"):
        list(eval_batches(data, data.test, 4, torch.device("cpu")))
