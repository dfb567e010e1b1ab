"""Classifier re-balancing of the teacher (teacher.rebalance): the pure functions against the source's code,
what they leave alone, and a teacher re-balanced through the CLI sharing its base with the run without."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY_COUNTS, cli_exit, tiny_cli_args, tiny_data
from ltcompress import models, rebalance
from ltcompress.errors import UsageError
from ltcompress.plan import resolve_names


def _pnorm(weights, p):
    """The source's tau-normalisation (classifier-balancing, tau_normalization), row by row."""
    norms = torch.norm(weights, 2, 1)
    ws = weights.clone()
    for i in range(weights.size(0)):
        ws[i] = ws[i] / torch.pow(norms[i], p)
    return ws


@pytest.mark.parametrize("tau", [0.0, 0.5, 0.7, 1.0, 2.0])
def test_tau_normalisation_is_the_sources(tau):
    w = torch.randn(7, 16) * torch.linspace(0.1, 5, 7)[:, None]
    torch.testing.assert_close(rebalance.tau_normalize(w, tau), _pnorm(w, tau))
    if tau == 1.0:
        torch.testing.assert_close(rebalance.tau_normalize(w, tau).norm(dim=1), torch.ones(7))


def test_parameters_are_checked_by_name():
    assert rebalance.make_params("none", {}) is None
    assert rebalance.make_params("tau-norm", {"tau": "0.7"}) == rebalance.TauNorm(0.7)
    assert rebalance.make_params("crt", {}) == rebalance.CRT()
    for kind, args, match in [
        ("tau", {}, "Did you mean: tau-norm"),
        ("tau-norm", {"t": 1}, "'t' is not an argument of tau-norm"),
        ("tau-norm", {"tau": 3}, "outside"),
        ("crt", {"epochs": 0}, "epochs >= 1"),
        ("none", {"tau": 1}, "teacher.rebalance is none"),
    ]:
        with pytest.raises(UsageError, match=match) as info:
            rebalance.make_params(kind, args)
        assert info.value.exit_code == 2


def test_a_bad_rebalancing_argument_is_exit_2_before_any_data_loads(tmp_path, capsys, monkeypatch):
    from ltcompress import data as data_stage

    def never(*args, **kwargs):
        raise AssertionError("the data was loaded before the re-balancing's arguments were checked")

    monkeypatch.setattr(data_stage, "load", never)
    args = tiny_cli_args(method="bkd", runs_dir=str(tmp_path / "runs"), teacher_rebalance="tau-norm")
    code = cli_exit(["run", *args, "--set", "teacher.rebalance_args.tua=0.7", "--name", "bad"])
    err = capsys.readouterr().err
    assert code == 2 and "'tua' is not an argument of tau-norm. Did you mean: tau?" in err, err
    assert not (tmp_path / "runs").exists()


def _trained_teacher():
    """test_resnet after a short cross-entropy training on the generated long-tailed tensors."""
    from conftest import tiny_method
    from ltcompress.config import TrainConfig
    from ltcompress.loop import LoopOptions, train

    torch.manual_seed(0)
    model = models.create("test_resnet", len(TINY_COUNTS))
    recipe = TrainConfig(epochs=4, batch_size=16, lr=0.05)
    train(
        model,
        tiny_method("ce", 4),
        tiny_data(),
        recipe,
        torch.device("cpu"),
        stage="teacher",
        seed=0,
        options=LoopOptions(progress=False),
    )
    return model


def _split(model):
    head = models.classifier(model)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    return head, body


def test_tau_norm_changes_the_classifier_alone():
    model = _trained_teacher()
    head, body = _split(model)
    record = rebalance.apply(model, rebalance.TauNorm(1.0), tiny_data(), 16, torch.device("cpu"), 0)
    assert record["method"] == "tau-norm" and record["params"] == {"tau": 1.0} and "Kang" in record["source"]
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(len(TINY_COUNTS)))
    assert torch.equal(head.bias, torch.zeros(len(TINY_COUNTS)))
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in body.items())  # features and BatchNorm statistics


class _Probe(torch.nn.Module):
    """A model with timm's API whose pooled features are the channel means after a BatchNorm: informative
    features, so what cRT does to the classifier is visible."""

    def __init__(self, classes):
        super().__init__()
        self.bn, self.fc = torch.nn.BatchNorm2d(3), torch.nn.Linear(3, classes)
        self.bn.running_mean.fill_(0.3)  # statistics that must not move

    def forward_features(self, x):
        return self.bn(x)

    def forward_head(self, x, pre_logits=False):
        pooled = x.mean((2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


def _shaded(counts, seed=0):
    """Long-tailed images whose class sets the brightness of one channel (with noise)."""
    from ltcompress.data import InputSpec, LTData, Split

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    images = rng.normal(128, 30, (len(labels), 3, 16, 16))
    images[np.arange(len(labels)), labels % 3] += np.where(labels < 3, 60, -60)[:, None, None]
    images = np.clip(images, 0, 255).astype(np.uint8)
    spec = InputSpec(16, 3, (0.5,) * 3, (0.25,) * 3, "RGB", 16)
    split = Split(images, labels)
    return LTData(split, split, np.asarray(counts), tuple("abcd"[: len(counts)]), spec, "shaded")


def _balanced_accuracy(model, data):
    with torch.no_grad():
        x = (torch.from_numpy(data.train.images).float() / 255 - 0.5) / 0.25
        pred = model.eval()(x).argmax(1).numpy()
    labels = data.train.labels
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)])), pred


def test_crt_retrains_a_head_biased_to_the_head_class_into_a_balanced_one_on_frozen_features():
    data, model = _shaded([200, 40, 10, 5]), _Probe(4)
    with torch.no_grad():  # a classifier that answers the largest class whatever it sees
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([10.0, 0, 0, 0]))
    body = {k: v.clone() for k, v in model.bn.state_dict().items()}
    before, pred = _balanced_accuracy(model, data)
    assert before == 0.25 and set(pred) == {0}
    record = rebalance.apply(model, rebalance.CRT(), data, 16, torch.device("cpu"), 0)
    after, pred = _balanced_accuracy(model, data)
    assert after > 0.9, (after, np.bincount(pred))
    assert record["method"] == "crt" and record["lr"] == pytest.approx(0.2 * 16 / 512) and record["steps"] == 10 * 15
    assert record["final_loss"] < np.log(4)  # below chance
    assert all(torch.equal(model.bn.state_dict()[k], v) for k, v in body.items())  # features frozen, BN too
    assert not any(p.requires_grad for p in model.fc.parameters())


def test_a_given_teacher_is_rebalanced_only_when_asked(tmp_path):
    from safetensors.torch import save_file

    from ltcompress.config import resolve
    from ltcompress.teacher import plan as teacher_plan

    def plan(cfg, data, loss):  # as the plan step calls it: with the re-balancing resolve_names checked
        return teacher_plan(cfg, data, loss, resolve_names(cfg).rebalance)

    data = tiny_data()
    path = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in models.create("test_resnet", 4).state_dict().items()}, str(path))
    given = {"teacher.arch": "test_resnet", "teacher.weights": str(path), "teacher.rebalance": "tau-norm"}
    assert plan(resolve(None, given), data, "ce").rebalance is None  # the user's teacher stays as it is
    opted = plan(resolve(None, {**given, "teacher.rebalance_given": True}), data, "ce")
    assert opted.rebalance == rebalance.TauNorm()


def test_rebalancing_keys_the_cache_apart_and_keeps_the_base_key():
    from ltcompress.config import resolve
    from ltcompress.teacher import plan

    data = tiny_data()

    def planned(**overrides):
        cfg = resolve(None, {"teacher.arch": "test_resnet", "teacher.init": "scratch", **overrides})
        return plan(cfg, data, "ce", resolve_names(cfg).rebalance)

    plain, tau, crt = planned(), planned(**{"teacher.rebalance": "tau-norm"}), planned(**{"teacher.rebalance": "crt"})
    assert plain.rebalance is None and plain.key == plain.base_key  # keys from before re-balancing stay valid
    assert tau.base_key == crt.base_key == plain.key  # one cross-entropy teacher under all three
    assert len({plain.key, tau.key, crt.key}) == 3
    other_tau = planned(**{"teacher.rebalance": "tau-norm", "teacher.rebalance_args": {"tau": 0.5}})
    assert other_tau.key not in (tau.key, plain.key)


def test_a_rebalanced_teacher_is_trained_once_and_shares_its_base_with_the_run_without(
    passed_run, workdir, monkeypatch, capsys
):
    """The e2e run's teacher (cross-entropy, cached) is the base: the run with --teacher-rebalance crt trains
    no teacher, re-trains its classifier, records it, and caches the result under a key of its own."""
    from safetensors.torch import load_file

    monkeypatch.setenv("LTCOMPRESS_CACHE", str(workdir / "cache"))
    runs = workdir / "runs"
    args = tiny_cli_args(method="bkd", runs_dir=str(runs), teacher_rebalance="crt")
    assert cli_exit(["run", *args, "--name", "crt"]) == 0
    err = capsys.readouterr().err
    assert "reusing cached test_resnet" in err and "classifier re-balanced (crt)" in err
    assert "teacher epoch" not in err  # the base came from the cache: no teacher training
    base, rebalanced = (json.loads((runs / n / "teacher.json").read_text()) for n in ("ok", "crt"))
    assert rebalanced["base_cache_key"] == base["cache_key"] != rebalanced["cache_key"]
    assert rebalanced["source"] == "cache, re-balanced here" and rebalanced["rebalance"]["method"] == "crt"
    report = json.loads((runs / "crt" / "report.json").read_text())
    assert report["teacher"]["rebalance"]["params"] == {"epochs": 10, "lr": 0.2, "weight_decay": 5e-4, "momentum": 0.9}
    assert "classifier re-balanced: crt (epochs 10, lr 0.2" in (runs / "crt" / "report.html").read_text()
    w0, w1 = (load_file(str(runs / n / "teacher.safetensors")) for n in ("ok", "crt"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0 if not k.startswith("fc."))
    assert not torch.equal(w0["fc.weight"], w1["fc.weight"])
    assert cli_exit(["run", *args, "--name", "crt-again"]) == 0  # the re-balanced teacher itself is cached now
    err = capsys.readouterr().err
    assert "reusing cached test_resnet (key " + rebalanced["cache_key"][:12] in err and "re-balanced (crt)" not in err
