import os

import pytest
import torch
from safetensors.torch import save_file

from ltcompress import models
from ltcompress.errors import UsageError
from ltcompress.rundir import sha256_file
from ltcompress.teacher import load_weights_file


def _state(num_classes):
    return {k: v.contiguous() for k, v in models.create("test_resnet", num_classes).state_dict().items()}


def test_safetensors_and_weights_only_torch_files_load(tmp_path):
    state = _state(10)
    save_file(state, str(tmp_path / "t.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "t.pt")
    for name in ("t.safetensors", "t.pt"):
        model = load_weights_file("test_resnet", tmp_path / name, 10)
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k])
    assert len(sha256_file(tmp_path / "t.pt")) == 64


def test_weights_for_another_class_count_is_exit_2(tmp_path):
    save_file(_state(7), str(tmp_path / "t7.safetensors"))
    with pytest.raises(UsageError, match="is for 7 classes but the dataset has 10") as info:
        load_weights_file("test_resnet", tmp_path / "t7.safetensors", 10)
    assert info.value.exit_code == 2


def test_weights_for_another_architecture_is_exit_2(tmp_path):
    save_file(_state(10), str(tmp_path / "r.safetensors"))
    with pytest.raises(UsageError, match="does not fit test_efficientnet"):
        load_weights_file("test_efficientnet", tmp_path / "r.safetensors", 10)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused_never_unpickled(tmp_path):
    torch.save({"state_dict": _state(10), "evil": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(UsageError, match="cannot be loaded safely"):
        load_weights_file("test_resnet", tmp_path / "evil.pt", 10)


def test_missing_file_is_exit_2(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_weights_file("test_resnet", tmp_path / "nope.safetensors", 10)


def test_offline_without_cached_weights_never_waits(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty Hugging Face cache
    assert not hasattr(models, "hub_reachable")  # no hostname probing: huggingface_hub's own semantics
    init, reason = models.resolve_init("auto", "resnet50", "teacher")
    assert init == "scratch" and "HF_HUB_OFFLINE" in reason
    assert models.resolve_init("scratch", "resnet50", "teacher")[0] == "scratch"
    with pytest.raises(UsageError, match="--teacher-weights"):
        models.resolve_init("pretrained", "resnet50", "teacher")


def test_model_aliases_and_unknown_names():
    assert models.resolve_name("mobilenetv3") == "mobilenetv3_small_100"
    assert models.resolve_name("resnet18") == "resnet18"
    with pytest.raises(UsageError, match="Did you mean: .*resnet50") as info:
        models.resolve_name("resnet5O")
    assert info.value.exit_code == 2


def test_renormalize_maps_run_normalisation_to_model_normalisation():
    inner = torch.nn.Identity()
    wrap = models.Renormalize(inner, (0.3,) * 3, (0.4,) * 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    raw = torch.rand(2, 3, 4, 4)
    run_norm = (raw - 0.3) / 0.4
    imagenet_norm = (raw - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(wrap(run_norm), imagenet_norm)


def test_cache_key_shares_teachers_across_student_seeds_and_methods_with_the_same_teacher_loss():
    import dataclasses

    from conftest import tiny_data
    from ltcompress.config import resolve
    from ltcompress.teacher import cache_key

    data = tiny_data()

    def key(loss="ce", **overrides):
        return cache_key(resolve(None, overrides), "resnet50", "scratch", loss, data)

    assert key(**{"run.seed": 1, "teacher.seed": 0}) == key(**{"run.seed": 2, "teacher.seed": 0})
    assert key(**{"run.seed": 1}) != key(**{"run.seed": 2})
    assert key(**{"method.name": "kd"}) == key(**{"method.name": "bkd"})  # kd and bkd share one CE teacher
    assert key("bsce") != key("ce")  # dive's Balanced Softmax teacher is another
    assert key(**{"teacher.train.epochs": 3}) != key()
    assert key(**{"teacher.train.grad_clip": 5.0}) != key()
    other = dataclasses.replace(data, fingerprint="g" * 64)
    assert cache_key(resolve(None, {}), "resnet50", "scratch", "ce", other) != key()
    # what the teacher sees: padded or cropped inputs, another augmentation, are other teachers
    cropped = dataclasses.replace(data, spec=dataclasses.replace(data.spec, geometry="crop"))
    assert cache_key(resolve(None, {}), "resnet50", "scratch", "ce", cropped) != key()
    timm = dataclasses.replace(data, pipeline=dataclasses.replace(data.pipeline, augment="timm"))
    assert cache_key(resolve(None, {}), "resnet50", "scratch", "ce", timm) != key()


def test_teacher_loss_is_the_methods_choice_unless_the_user_names_a_teacher_free_method():
    from ltcompress.methods import METHODS
    from ltcompress.plan import teacher_loss_for as resolve_loss

    assert resolve_loss("auto", METHODS.get("kd")) == "ce"
    assert resolve_loss("auto", METHODS.get("dive")) == "bsce"
    assert resolve_loss("bsce", METHODS.get("bkd")) == "bsce"
    with pytest.raises(UsageError, match="itself needs a teacher"):
        resolve_loss("kd", METHODS.get("bkd"))
    with pytest.raises(UsageError):
        resolve_loss("nosuch", METHODS.get("bkd"))


def test_teacher_loss_refuses_methods_that_change_the_classifier():
    from ltcompress.methods import METHODS
    from ltcompress.methods.base import Method
    from ltcompress.plan import teacher_loss_for as resolve_loss

    adapting = [
        n
        for n in METHODS.names()
        if not METHODS.get(n).uses_teacher and METHODS.get(n).adapt_student is not Method.adapt_student
    ]
    distilling = [METHODS.get(n) for n in METHODS.names() if METHODS.get(n).uses_teacher]
    assert adapting  # the registry has such a method (LDAM's cosine classifier); the teacher stage cannot build it
    for name in adapting:
        for method_cls in distilling:
            with pytest.raises(UsageError, match="changes the model's classifier"):
                resolve_loss(name, method_cls)
