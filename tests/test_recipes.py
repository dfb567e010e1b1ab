"""Recipes: one source of defaults, the dataset's own recipe, a recipe fitted to an image folder, the cost
estimate and --dry-run (issue: your own photos get a recipe made for them)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import TINY_MODELS, flat_keys, run_cli
from ltcompress import config as config_mod
from ltcompress.api import build_config, compress
from ltcompress.errors import UsageError


def _leaves(cls: type, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every leaf setting of a config dataclass by dotted key."""
    hints = typing.get_type_hints(cls)
    out: dict[str, dataclasses.Field] = {}
    for f in dataclasses.fields(cls):
        if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name]):
            out.update(_leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = f
    return out


SECTIONS = ("data.", "teacher.", "student.", "method.", "export.", "run.")


def test_every_setting_has_its_default_in_one_place():
    """A recipe never repeats a dataclass default, and no dataclass default is one every recipe that could use
    it overrides (that default would never take effect): each setting's default is written once."""
    from ltcompress.data import dataset_keys

    leaves = _leaves(config_mod.CompressConfig)
    readers = dataset_keys()
    presets = {name: flat_keys(config_mod.load_preset(name)) for name in config_mod.list_presets()}
    for name, values in presets.items():
        for key, value in values.items():
            f = leaves.get(key)
            assert f is not None, f"{name}: {key} is not a config key"
            if f.default is not dataclasses.MISSING and key.startswith(SECTIONS):
                coerced = tuple(value) if isinstance(value, list) else value
                assert coerced != f.default, f"preset {name} repeats the default {key}={value!r}"
    uses: dict[tuple[str, str], list[bool]] = {}  # (owner, field) -> for each place it could apply: overridden?
    for key, f in leaves.items():
        if not key.startswith(SECTIONS):
            continue
        field = key.rsplit(".", 1)[-1]
        applies = [
            n
            for n, v in presets.items()
            if key.split(".")[0] != "data" or v["data.dataset"] in readers.get(field, [v["data.dataset"]])
        ]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            missing = [n for n in applies if key not in presets[n]]
            assert not missing, f"{key} has no default, yet recipes {missing} do not set it"
        elif f.default is not None:  # None: "not set" (a subset dataset refuses to run without n_max)
            owner = "TrainConfig" if key.split(".")[1] in ("train", "finetune") else key.rsplit(".", 1)[0]
            uses.setdefault((owner, field), []).extend(key in presets[n] for n in applies)
    dead = [f"{owner}.{field}" for (owner, field), overridden in uses.items() if all(overridden)]
    assert not dead, f"every recipe overrides {dead}: those defaults never take effect"


def test_each_dataset_runs_its_own_recipe_and_says_why(tmp_path):
    cfg = build_config(dataset="imagefolder", data_dir=str(tmp_path))
    assert (cfg.preset, cfg.recipe_reason) == ("photos", "from --dataset imagefolder")
    assert cfg.data.input_size is None  # fitted to the images when the plan is made
    default = build_config()
    assert default.preset == "fmnist-lt" and "default dataset fmnist-lt" in default.recipe_reason
    assert build_config(dataset="cifar10-lt").preset == "cifar10-lt"
    chosen = build_config(preset="fmnist-lt-bench", dataset="fmnist-lt")
    assert (chosen.preset, chosen.recipe_reason) == ("fmnist-lt-bench", "from --preset fmnist-lt-bench")
    # the imagefolder recipe inherits nothing from fmnist-lt's
    photos = config_mod.load_preset("photos")
    assert photos["data"]["dataset"] == "imagefolder" and "n_max" not in photos["data"]


def test_a_key_the_dataset_does_not_read_is_exit_2_naming_it(tmp_path):
    with pytest.raises(UsageError, match=r"data\.n_max does not apply to dataset 'imagefolder'") as err:
        build_config(dataset="imagefolder", data_dir=str(tmp_path), overrides={"data.n_max": 50})
    assert err.value.exit_code == 2
    with pytest.raises(UsageError, match=r"data\.train_list does not apply to dataset 'fmnist-lt'"):
        build_config(overrides={"data.train_list": "train.txt"})
    with pytest.raises(UsageError, match="input_size auto is fitted to image folders only"):
        compress(overrides={"data.input_size": "auto"}, dry_run=True)


def test_list_presets_shows_which_dataset_uses_which_recipe(capsys):
    code, out, _ = run_cli(["list-presets", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert (
        code == 0 and rows["photos"]["recipe_of"] == ["imagefolder"] and rows["fmnist-lt"]["recipe_of"] == ["fmnist-lt"]
    )
    assert rows["fmnist-lt-bench"]["recipe_of"] == [] and rows["photos"]["dataset"] == "imagefolder"


# ---------------------------------------------------------------- a recipe fitted to the folder
def _folder(root: Path, sides: list[int], classes: int = 3, gray: bool = False) -> Path:
    """train/<class>/ and test/<class>/ PNGs whose shorter sides are `sides` (cycled), a few per class."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", [8, 5, 3][:classes]), ("test", [2] * classes)):
        for c, n in enumerate(per_class):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                side = sides[(c * 7 + i) % len(sides)]
                shape = (side, side + side // 3) if gray else (side, side + side // 3, 3)
                arr = np.clip(rng.normal(70 * c + 40, 20, shape), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")
    return root


def _dry(root: Path, **kw: object):
    return compress(
        dataset="imagefolder",
        data_dir=str(root),
        teacher=TINY_MODELS["teacher"],
        student="test_resnet",
        method="kd",
        progress=False,
        dry_run=True,
        **kw,
    )


def test_small_images_are_padded_to_the_stride_and_augmented_on_batches(tmp_path):
    dry = _dry(_folder(tmp_path / "small", [28], gray=True))
    cfg = dry.config
    assert (cfg["data"]["input_size"], cfg["data"]["geometry"], cfg["data"]["source_size"]) == (32, "pad", 28)
    assert dry.data["pipeline"]["augment"] == "crop_flip" and dry.data["input"]["geometry"] == "pad"
    assert any("median shorter side 28 px" in line and "padded up" in line for line in dry.fitted)


def test_photos_get_the_students_pretrained_size_and_gentler_crops_when_small(tmp_path):
    from ltcompress.models import pretrained_input_size

    big = _dry(_folder(tmp_path / "big", [300, 420, 500]))
    size = pretrained_input_size("test_resnet")  # 160: test_resnet's pretrained configuration
    assert (big.config["data"]["input_size"], big.config["data"]["geometry"]) == (size, "crop")
    assert big.config["data"]["crop_scale"] == 0.25 and big.data["pipeline"]["augment"] == "timm"  # 160 px
    mid = _dry(_folder(tmp_path / "mid", [100, 110, 120]))
    assert mid.config["data"]["input_size"] == 96 and mid.config["data"]["crop_scale"] == 0.25


def test_a_folder_from_10_to_4000_px_still_gets_one_size_with_the_reason(tmp_path):
    root = _folder(tmp_path / "mixed", [10, 40, 64, 90, 120])
    Image.new("RGB", (5000, 4000), (90, 90, 90)).save(root / "train" / "c0" / "huge.png")
    dry = _dry(root)
    line = next(f for f in dry.fitted if f.startswith("data.input_size="))
    assert dry.config["data"]["input_size"] == 64 and "10-4000 px" in line
    assert dry.config["data"]["crop_scale"] == 0.5  # gentler crops for a small input


def test_the_size_rule_caps_at_the_pretrained_size_and_never_exceeds_the_images():
    from ltcompress.recipe import ImageSizes, crop_scale_for, fit_size

    def sizes(median: int) -> ImageSizes:
        return ImageSizes(median, 10, 4000, 512, 9000, 0)

    assert fit_size(sizes(420), 224, "x")[0] == 224  # photos: the pretrained size
    assert fit_size(sizes(224), 224, "x")[0] == 224
    assert fit_size(sizes(223), 224, "x")[0] == 192  # never upsampled past what the images carry
    assert fit_size(sizes(28), 224, "x")[0] == 32 and fit_size(sizes(10), 224, "x")[0] == 32  # padded up
    assert [crop_scale_for(s) for s in (224, 192, 160, 96, 64, 32)] == [0.08, 0.08, 0.25, 0.25, 0.5, 0.5]


def test_an_explicit_size_wins_over_the_fit(tmp_path):
    dry = _dry(_folder(tmp_path / "x", [300]), overrides={"data.input_size": 64})
    assert dry.config["data"]["input_size"] == 64 and not any(f.startswith("data.input_size") for f in dry.fitted)


# ---------------------------------------------------------------- --dry-run and the estimate
def test_dry_run_prints_recipe_data_and_estimate_and_writes_nothing(tmp_path, capsys):
    root = _folder(tmp_path / "d", [28], gray=True)
    runs = tmp_path / "runs"
    args = ["run", "--dataset", "imagefolder", "--data-dir", str(root), "--teacher", TINY_MODELS["teacher"]]
    args += ["--student", TINY_MODELS["student"], "--method", "kd", "--runs-dir", str(runs), "--dry-run"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "recipe photos (from --dataset imagefolder)" in out and "fitted data.input_size=32" in out
    assert "class counts: c0 8, c1 5, c2 3" in out and "few: 3 classes" in out and "estimate:" in out
    for stage in ("teacher", "student", "export", "verify", "total"):
        assert any(line.strip().startswith(stage) for line in out.splitlines()), stage
    assert not runs.exists()
    code, out, _ = run_cli([*args, "--json"], capsys)
    doc = json.loads(out)
    stages = {s["stage"]: s for s in doc["estimate"]["stages"]}
    assert stages["teacher"]["seconds"] > 0 and stages["student"]["epoch_s"] > 0
    assert doc["config"]["data"]["geometry"] == "pad" and doc["data"]["class_counts"] == [8, 5, 3]


def test_dry_run_on_a_broken_folder_is_exit_3_exactly_as_a_run(tmp_path, capsys):
    (tmp_path / "broken" / "train").mkdir(parents=True)
    base = ["run", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "broken"), "--runs-dir", str(tmp_path)]
    dry = run_cli([*base, "--dry-run"], capsys)
    real = run_cli(base, capsys)
    assert dry[0] == real[0] == 3 and dry[2] == real[2] and "no test/ folder" in dry[2]


def test_the_estimate_never_changes_the_run(tmp_path):
    """Timing steps draws batches and builds models: the run's random streams must be as they were."""
    from safetensors.torch import load_file

    from conftest import TINY

    common = dict(teacher=TINY_MODELS["teacher"], student=TINY_MODELS["student"], method="kd", progress=False)
    weights = []
    for estimate in (True, False):
        result = compress(
            **common, runs_dir=str(tmp_path), name=f"e{estimate}", overrides={**TINY, "run.estimate": estimate}
        )
        weights.append(load_file(str(result.run_dir / "student.safetensors")))
        rep = json.loads((result.run_dir / "report.json").read_text())
        assert (rep["estimate"] is not None) == estimate
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_advice_when_a_cpu_run_would_take_more_than_an_hour():
    from ltcompress.estimate import Estimate, StageCost

    long = Estimate((StageCost("teacher", 3000.0, "x"), StageCost("student", 1200.0, "y")), "cpu")
    advice = long.advice()
    assert advice and "70.0 min" in advice and "--teacher-weights" in advice and "--teacher-cache" in advice
    assert "data.input_size" in advice and "--device cuda" in advice
    assert Estimate(long.stages, "cuda:0").advice() is None
    assert Estimate((StageCost("student", 600.0, "y"),), "cpu").advice() is None


def test_a_run_config_reproduces_its_fitted_recipe(tmp_path):
    """config.yaml records the fitted values; used as --preset it is a new run with the same settings."""
    root = _folder(tmp_path / "f", [28], gray=True)
    dry = _dry(root)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(dry.config))
    again = build_config(preset=str(path))
    assert again.data.input_size == 32 and again.data.geometry == "pad" and again.fitted == ()
