"""The INT8 repair's evidence: the gates' values on it equal the test-set code's on the same predictions, the
bootstrap draws images (not views) within each class, a gate is acted on only when it fails with confidence, an
accuracy claim on training views is judged as the part quantization controls, and turning the repair on leaves
the data, the teacher's cache key and the student as they are."""

from __future__ import annotations

import numpy as np
import pytest

from ltcompress import gates as gate_mod
from ltcompress.evidence import MIN_IMAGES, Evidence, bootstrap, judge, judged_as, views_per_class
from ltcompress.metrics import summarize_stages

NAMES = ("a", "b", "c", "d")
GROUPS = {"many": [0], "medium": [1], "few": [2, 3]}


def _evidence(labels, images, fp32_pred, student_pred=None, held_out=True, replicates=400):
    fixed = {"fp32": np.eye(len(NAMES))[fp32_pred]}
    if student_pred is not None:
        fixed["student"] = np.eye(len(NAMES))[student_pred]
    rng = np.random.default_rng(0)
    weights = np.vstack([np.ones((1, len(labels)), np.float32), bootstrap(labels, images, replicates, rng)])
    return Evidence(np.zeros((len(labels), 1, 1, 1), np.float32), labels, images, fixed, weights, "t", held_out)


@pytest.mark.parametrize(
    "expr",
    [
        "drop(fp32, int8).few <= 0.01",
        "drop(fp32, int8).worst <= 0.02",
        "drop(fp32, int8).balanced <= 0.02",
        "drop(student, int8).class[c] <= 0.02",
        "flip(fp32, int8).few <= 0.05",
        "flip(fp32, int8).worst <= 0.05",
        "flip(fp32, int8).overall <= 0.05",
        "int8.medium >= 0.5",
        "int8.overall >= 0.5",
        "int8.agreement >= 0.9",
    ],
)
def test_a_gate_on_the_evidence_is_the_test_set_code_on_the_same_predictions(expr):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    preds = {
        k: np.where(rng.random(300) < p, labels, rng.integers(0, 4, 300))
        for k, p in (("fp32", 0.8), ("int8", 0.6), ("student", 0.8))
    }
    ev = _evidence(labels, np.arange(300), preds["fp32"], preds["student"])
    gate = gate_mod.parse(expr)
    got = judge([gate], ev, np.eye(4)[preds["int8"]], GROUPS, NAMES, 0.95)[0]
    stages = summarize_stages(preds, labels, GROUPS, NAMES)
    want = gate_mod.evaluate([gate], stages, preds, labels, GROUPS, NAMES)[0]
    assert got.value == pytest.approx(want.value, abs=1e-6)
    assert got.low <= got.value <= got.high and got.high > got.low  # 300 images: the resamples vary


def test_the_bootstrap_draws_each_class_its_own_number_of_images_and_all_views_of_one_together():
    labels = np.repeat([0, 0, 0, 1, 1], 4)  # class 0: 3 images, class 1: 2 images, 4 views each
    images = np.repeat([10, 11, 12, 20, 21], 4)
    w = bootstrap(labels, images, 200, np.random.default_rng(0))
    assert w.shape == (200, 20)
    per_image = w.reshape(200, 5, 4)
    assert (per_image == per_image[:, :, :1]).all()  # the views of an image share its weight
    assert (per_image[:, :3, 0].sum(1) == 3).all() and (per_image[:, 3:, 0].sum(1) == 2).all()
    assert len(np.unique(per_image[:, 0, 0])) > 1  # and it really resamples


def _drop_case(per_class_images, views, int8_right):
    """Few classes c, d with `per_class_images` images of `views` views each; fp32 always right, int8 right
    on the share `int8_right` of the images."""
    labels = np.repeat(np.repeat([2, 3], per_class_images), views)
    images = np.repeat(np.arange(2 * per_class_images), views)
    right = np.repeat(np.arange(2 * per_class_images) % per_class_images < int8_right * per_class_images, views)
    int8 = np.where(right, labels, 0)
    return _evidence(labels, images, labels, held_out=False), np.eye(4)[int8], labels


def test_a_gate_is_acted_on_only_when_it_fails_with_confidence_and_thin_evidence_is_undecided():
    gate = gate_mod.parse("drop(fp32, int8).few <= 0.01")
    ev, int8, _ = _drop_case(per_class_images=20, views=8, int8_right=0.5)
    clear = judge([gate], ev, int8, GROUPS, NAMES, 0.95)[0]
    assert clear.value == pytest.approx(0.5) and clear.decision == "fails" and clear.failing and clear.low > 0.01

    ev, int8, _ = _drop_case(per_class_images=1, views=64, int8_right=0.0)  # 2 images, 128 views, all lost
    assert 2 < MIN_IMAGES
    thin = judge([gate], ev, int8, GROUPS, NAMES, 0.95)[0]
    assert thin.value == pytest.approx(1.0) and thin.images == 2 and thin.decision == "undecided"
    assert not thin.failing

    ev, int8, labels = _drop_case(per_class_images=20, views=8, int8_right=1.0)
    kept = judge([gate], ev, int8, GROUPS, NAMES, 0.95)[0]
    assert kept.value == 0 and kept.decision == "passes" and not kept.failing

    ev, int8, _ = _drop_case(per_class_images=6, views=8, int8_right=5 / 6)  # one image of six lost: unsure
    unsure = judge([gate], ev, int8, GROUPS, NAMES, 0.95)[0]
    assert unsure.value > 0.01 and unsure.low <= 0.01 < unsure.high and unsure.decision == "undecided"


@pytest.mark.parametrize(
    "expr, held_out, judged",
    [
        ("int8.few >= 0.7", False, "drop(fp32, int8).few <= 0"),
        ("int8.class[c] >= 0.6", False, "drop(fp32, int8).class[c] <= 0"),
        ("drop(teacher, int8).worst <= 0.05", False, "drop(fp32, int8).worst <= 0"),
        ("drop(fp32, int8).few <= 0.01", False, "drop(fp32, int8).few <= 0.01"),
        ("flip(student, int8).few <= 0.05", False, "flip(student, int8).few <= 0.05"),
        ("int8.agreement >= 0.99", False, "int8.agreement >= 0.99"),
        ("int8.few >= 0.7", True, "int8.few >= 0.7"),
        ("drop(teacher, int8).worst <= 0.05", True, "drop(teacher, int8).worst <= 0.05"),
    ],
)
def test_an_accuracy_claim_on_training_views_is_judged_as_what_quantization_controls(expr, held_out, judged):
    assert judged_as(gate_mod.parse(expr), held_out).expr == judged


def test_views_per_class_share_the_total_budget():
    from ltcompress.config import ExportConfig

    cfg = ExportConfig(repair_views=64, repair_max_views=4096)
    assert views_per_class(2, cfg) == 64 and views_per_class(1000, cfg) == 4 and views_per_class(10**5, cfg) == 1


def _arrays(counts, size=8):
    """In-memory data: each image filled with its own index, so a view can be traced back to its image."""
    from ltcompress.data import InputSpec, LTData, Split

    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    images = (np.arange(len(labels)) % 250 + 1).astype(np.uint8).reshape(-1, 1, 1, 1).repeat(size, 2).repeat(size, 3)
    spec = InputSpec(size, 1, (0.0,), (1 / 255,), "L", size)  # normalised value = pixel value
    names = tuple(f"c{i}" for i in range(len(counts)))
    return LTData(Split(images, labels), Split(images[:4], labels[:4]), np.asarray(counts), names, spec, "fp")


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory):
    import torch

    from ltcompress.data import InputSpec
    from ltcompress.onnx_export import export

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    return export(model, InputSpec(8, 1, (0.0,), (1.0,), "L", 8), tmp_path_factory.mktemp("m") / "m.onnx", 18)


def test_training_views_cover_the_gated_classes_images_evenly_through_the_augmentation(linear_onnx):
    import dataclasses

    import torch

    from ltcompress.config import ExportConfig
    from ltcompress.evidence import collect

    data = _arrays([40, 12, 5])
    groups = {"many": [], "medium": [0], "few": [1, 2]}
    cfg = dataclasses.replace(ExportConfig(), repair_views=24)
    gates = [gate_mod.parse("drop(fp32, int8).few <= 0.01")]
    ev = collect(data, gates, groups, cfg, 0, linear_onnx, {}, torch.device("cpu"))
    assert not ev.held_out and "training images of the 2 gated class(es)" in ev.source
    assert np.bincount(ev.labels).tolist() == [0, 24, 24] and ev.inputs.shape == (48, 1, 8, 8)
    assert np.array_equal(ev.labels, data.train.labels[ev.images])  # each view knows its image
    per_image = np.bincount(ev.images, minlength=57)[40:]
    assert set(per_image[:12]) == {2} and set(per_image[12:]) == {4, 5}  # every image, about equally often
    # augmented: crop with zero padding moves pixels, so some views differ from their image
    originals = data.train.images[ev.images].astype(np.float32)
    assert not np.array_equal(ev.inputs, originals)
    own = np.isclose(ev.inputs, originals, atol=1e-3) | (ev.inputs == 0)
    assert own.all()  # each view holds only its own image's pixels (and padding)
    assert ev.fp32_logits.shape == (48, 3) and ev.weights.shape[1] == 48
    again = collect(data, gates, groups, cfg, 0, linear_onnx, {}, torch.device("cpu"))
    assert np.array_equal(again.inputs, ev.inputs)  # seeded: the same evidence every time


def test_held_out_images_are_the_evidence_when_there_are_any(linear_onnx):
    import dataclasses

    import torch

    from ltcompress.config import ExportConfig
    from ltcompress.data import Split
    from ltcompress.evidence import collect

    data = _arrays([40, 12, 5])
    val = Split(data.train.images[:6], np.array([0, 1, 1, 2, 2, 2]))
    data = dataclasses.replace(data, val=val, val_source="data.val_list v.txt, 6 images")
    gates = [gate_mod.parse("int8.few >= 0.5")]
    groups = {"many": [], "medium": [0], "few": [1, 2]}
    ev = collect(data, gates, groups, ExportConfig(), 0, linear_onnx, {}, torch.device("cpu"))
    assert ev.held_out and ev.labels.tolist() == [1, 1, 2, 2, 2] and sorted(ev.images.tolist()) == [1, 2, 3, 4, 5]
    assert np.array_equal(ev.inputs, data.val.images[ev.images].astype(np.float32))  # as they are, unaugmented
    assert judged_as(gates[0], ev.held_out).expr == "int8.few >= 0.5"  # an accuracy claim, judged as written
