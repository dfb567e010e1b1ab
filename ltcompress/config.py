"""Frozen per-stage configuration, resolved as: the recipe (preset) of the dataset in use < user values.

Every setting has its default in one place. What each dataset's recipe sets (architectures, inits, training
recipes, input size) has no dataclass default: a recipe must state it. A dataclass default is a default every
dataset shares (ONNX opset, tolerances, ...) and no built-in recipe repeats it (tests/test_recipes.py checks).
Unknown keys, keys the dataset does not read, and values of the wrong type are UsageError (exit 2) before any
work starts.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping

import yaml

from ltcompress import environment
from ltcompress.config_checks import CALIBRATION_METHODS as CALIBRATION_METHODS
from ltcompress.config_checks import CALIBRATIONS as CALIBRATIONS
from ltcompress.config_checks import INITS as INITS
from ltcompress.config_checks import check_values
from ltcompress.config_checks import recipes as recipes
from ltcompress.values import bundled_dir, coerce
from ltcompress.errors import UsageError
from ltcompress.registry import did_you_mean

DEFAULT_PRESET = "fmnist-lt"  # the recipe of the default dataset (no --dataset, no --preset)
DEFAULT_DATASET = "fmnist-lt"
AUTO = "auto"  # a recipe value the data decides (ltcompress.recipe.fit): data.input_size


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One supervised or distillation training recipe (SGD with a one-cycle schedule: linear warm-up, then
    cosine decay). Epochs, batch size and learning rate belong to the recipe: every recipe states them."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    sampler: str = "instance"  # instance | class_balanced | sqrt
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    warmup: float = 0.3  # share of the steps spent warming up (one-cycle pct_start)
    ema: bool = False  # keep an EMA of the weights (timm ModelEmaV3); the exported model is the EMA one
    ema_decay: float = 0.9998
    # on a GPU: this batch instead, the learning rate scaled linearly with it (Goyal et al. 2017); None: the same
    gpu_batch_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str
    data_dir: str | None = None  # None: $LTCOMPRESS_DATA when set (filled in when resolved)
    download: bool = True  # fetch a missing built-in dataset into the cache ($LTCOMPRESS_OFFLINE=1: false)
    n_max: int | None = None  # subset datasets (fmnist-lt, cifar*-lt): training images of the largest class
    imbalance: float | None = None  # subset datasets: largest / smallest class (their recipes set both)
    profile: str = "exp"
    seed: int = 0
    input_size: int | None  # None ("auto" in a recipe): fitted to the images (imagefolder; ltcompress.recipe)
    resize: bool | None = None  # None: the dataset's way (fmnist-lt pads 28 px to input_size, cifar resizes)
    geometry: str = "auto"  # imagefolder evaluation: auto (fitted) | crop (timm's centre crop) | pad (small images)
    source_size: int | None = None  # pad geometry: images are resized to this before padding; None: input_size
    crop_scale: float | None = None  # timm RandomResizedCrop's smallest area share; None: fitted to the size
    many_threshold: int = 100
    few_threshold: int = 20
    test_per_class: int | None = None  # None: the full balanced test split
    channels: int = 3  # images are converted to this many channels (1 or 3)
    skip_corrupt: bool = False  # skip (and count) unreadable images instead of stopping with exit 3
    train_list: str | None = None  # imagefolder list files, relative to data_dir
    test_list: str | None = None
    class_names_file: str | None = None
    val_list: str | None = None  # held-out images (list file) the INT8 repair decides on; else a training slice
    confine_paths: bool = True  # list files, class-names file and their paths stay inside data_dir (false: anywhere)
    unknown_test_classes: str = "error"  # imagefolder test/<class> with no train/<class>: error (exit 3) | exclude
    # --- real-scale pipeline (imagefolder and anything too large for memory)
    in_memory: bool | str = "auto"  # auto: in memory when the decoded split fits data.memory_budget_gb; true | false
    memory_budget_gb: float = 2.0  # auto keeps a dataset in memory when its decoded uint8 images fit in this
    workers: int | None = None  # DataLoader worker processes for the lazy path; None: from the CPU count
    prefetch: int = 2  # batches each worker decodes ahead
    normalize: str = "auto"  # auto | sample | pretrained: mean/std from a seeded sample, or the student's weights'
    stats_sample: int = 1024  # images the mean/std are estimated from (normalize: sample)
    augment: str = "auto"  # auto (dataset's own) | crop_flip (pad-crop + flip, vectorised) | timm (per image)
    crop_pct: float | None = None  # timm eval centre crop: resize shorter side to size / crop_pct; None: model's
    interpolation: str | None = None  # bilinear | bicubic; None: the student's pretrained_cfg, else bilinear
    auto_augment: str | None = None  # timm: rand-m9-mstd0.5 (RandAugment), trivialaugment, augmix-m5-w3 ...
    color_jitter: float = 0.4  # timm's default; ignored when auto_augment is set
    re_prob: float = 0.0  # timm random erasing probability (on the normalised batch, per image)
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    mix_prob: float = 1.0  # chance a batch is mixed at all when mixup or cutmix is on

    @property
    def size(self) -> int:
        """The input size, once the recipe is fitted to the data (the plan step does it before any loading)."""
        if self.input_size is None:
            raise UsageError(
                f"data.input_size auto is fitted to image folders only; dataset {self.dataset} needs a number"
            )
        return self.input_size


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    arch: str
    weights: str | None = None
    init: str  # auto | pretrained | scratch | a weights file
    loss: str = "auto"  # auto: the method's own choice (dive: bsce, others: ce); or a teacher-free method's name
    seed: int | None = None  # None: run.seed. Fix it to share one teacher across student seeds
    train: TrainConfig  # from scratch
    finetune: TrainConfig  # from pretrained weights or a weights file (lower rate, short warm-up)


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    arch: str
    init: str  # auto | pretrained | scratch | a weights file: where distillation starts
    weights: str | None = None  # a local file to start from (its head is replaced when the class count differs)
    train: TrainConfig  # from scratch
    finetune: TrainConfig  # from pretrained weights or a weights file


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    logits_atol: float = 1e-3  # max |torch - ORT| logit difference, plus logits_rtol * max |logit|
    logits_rtol: float = 1e-3
    agreement_tol: float = 0.001  # top-1 agreement must be >= 1 - agreement_tol
    int8: bool = False  # also write student.int8.onnx (static QDQ, uint8 activations, int8 per-channel weights)
    calibration: str = "stratified"  # stratified (classes filled evenly, so the tail counts) | random
    calibration_size: int = 512  # training images the INT8 ranges are calibrated on (bench/deploy.py)
    calibration_method: str = "minmax"  # minmax | entropy | percentile (ONNX Runtime's CalibrationMethod)
    per_channel: bool = True  # int8 weights per output channel (false: one range per tensor)
    exclude_nodes: tuple[str, ...] = ()  # nodes of the FP32 graph left in float (names as in the report)
    # INT8 repair: when an int8 gate fails on held-out data, the nodes that hurt the gated classes most go back
    # to FP32 until the int8 gates pass there, within a budget (node count and file size)
    int8_repair: bool = False
    repair_holdout: float = 0.1  # share of each class's training images set aside before training (no val_list)
    repair_budget: int = 8  # nodes the repair may return to FP32
    repair_max_size: float = 1.5  # the repaired file may be at most this many times the INT8 file's size
    speed_budget_s: float = 0.25  # seconds per model and batch size (1, 32) to measure ORT latency; 0: skip


@dataclass(frozen=True)
class RunConfig:
    name: str | None = None
    runs_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto (CUDA: bf16, else fp16 + GradScaler; CPU: fp32) | bf16 | fp16 | fp32
    compile: bool = False  # torch.compile the student (opt-in; pays off on GPUs, not on small CPUs)
    cache_dir: str | None = None  # None: $LTCOMPRESS_CACHE, else ~/.cache/ltcompress (filled in when resolved)
    eval_batch_size: int = 256
    teacher_cache: bool = False  # reuse the teacher's logits from an earlier run with the same stream (exact)
    estimate: bool = True  # time a few steps of each model first and log the run's expected duration
    track: tuple[str, ...] = ()  # tracking sinks: tensorboard (event files in the run) | mlflow (extras)


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig
    method: MethodConfig
    export: ExportConfig = field(default_factory=ExportConfig)
    run: RunConfig = field(default_factory=RunConfig)
    gates: tuple[str, ...] = ()
    preset: str | None = None
    description: str = ""
    recipe_reason: str = ""  # why this recipe ran ("from --dataset imagefolder"), as the log and report say
    fitted: tuple[str, ...] = ()  # what the recipe fitted to the data, each with the measurement behind it

    def to_dict(self) -> dict[str, Any]:
        tree: dict[str, Any] = plain(dataclasses.asdict(self))
        return tree

    @property
    def teacher_seed(self) -> int:
        return self.run.seed if self.teacher.seed is None else self.teacher.seed


def plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- presets
def _preset_dir() -> Path:
    return bundled_dir("presets")


def is_builtin(preset: str) -> bool:
    """A built-in recipe's name (not a path to a user's file)."""
    return preset in list_presets()


def list_presets() -> list[str]:
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset is a built-in name or a path to a YAML file (data only, yaml.safe_load)."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = _preset_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UsageError(
                f"unknown preset {name_or_path!r}.{did_you_mean(name_or_path, list_presets())} "
                f"Built-in presets: {', '.join(list_presets())}; or pass a path to a .yaml file."
            )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"preset {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise UsageError(f"preset {path} must be a YAML mapping of sections (data:, teacher:, ...)")
    if isinstance(data.get("resolved"), dict):  # a run's own config.yaml: its settings, not what it derived
        data = {k: v for k, v in data.items() if k not in ("resolved", "preset", "recipe_reason", "fitted")}
        data["run"] = {**(data.get("run") or {}), "name": None}  # a new run directory; the old one stays as it is
    return data


# ---------------------------------------------------------------- building and validation
def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "args":
            out[key] = _deep_merge(dict(out[key]), value)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}  # method args: user keys added over the preset's
        else:
            out[key] = value
    return out


def dotted_to_nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"student.train.epochs": 3}`` -> ``{"student": {"train": {"epochs": 3}}}``."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"config key {key!r} conflicts with another value for {part!r}")
        node[parts[-1]] = value
    return nested


FITTED_KEYS = ("data.input_size",)  # keys a recipe may leave to the data ("auto")


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    if not isinstance(values, Mapping):
        raise UsageError(f"config section {where or 'top level'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{where}.{key}" if where else key
        if key not in fields:
            raise UsageError(
                f"unknown config key {full!r}.{did_you_mean(key, list(fields))} "
                f"Valid keys{' in ' + where if where else ''}: {', '.join(fields)}."
            )
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            # a section builds over the field's own default, when it has one (export, run)
            factory = fields[key].default_factory
            base = dataclasses.asdict(factory()) if factory is not dataclasses.MISSING else {}
            merged = _deep_merge(base, value) if isinstance(value, Mapping) else value
            kwargs[key] = _build(hint, merged, full)
        elif value == AUTO and full in FITTED_KEYS:
            kwargs[key] = None  # fitted to the data when the plan is made
        else:
            kwargs[key] = coerce(value, hint, full)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        keys = ", ".join(f"{where}.{n}" if where else n for n in missing)
        raise UsageError(
            f"the recipe leaves {keys} unset; every recipe (preset) states it: add it to the preset file or "
            f"pass --set KEY=VALUE"
        )
    return cls(**kwargs)


def resolve(
    preset: str | None,
    overrides: Mapping[str, Any],
    reason: str = "",
    dataset_keys: Mapping[str, Collection[str]] | None = None,
    base: str | None = None,
) -> CompressConfig:
    """The recipe `preset` (default ``fmnist-lt``) under dotted-key user overrides, validated. `reason` says why
    this recipe ran; `dataset_keys` maps each dataset-specific data key to the datasets that read it, so a key
    the dataset in use does not read is an error rather than silently ignored; `base` is the recipe a user's
    preset file is read over (its dataset's)."""
    name = preset or DEFAULT_PRESET
    merged = load_preset(name)
    if base:  # a user's preset file states what differs from its dataset's recipe
        merged = _deep_merge(load_preset(base), merged)
    merged = _deep_merge(merged, dotted_to_nested(overrides))
    merged["preset"] = name
    merged["recipe_reason"] = reason or merged.get("recipe_reason") or f"from --preset {name}"
    _check_dataset_keys(merged.get("data"), dataset_keys or {})
    cfg = apply_environment(_build(CompressConfig, merged, ""))  # the one place the environment is read
    check_values(cfg)
    return cfg


def apply_environment(cfg: CompressConfig, env: Mapping[str, str] | None = None) -> CompressConfig:
    """`cfg` with what the environment decides (ltcompress.environment) filled in; settings given explicitly
    win, except that LTCOMPRESS_OFFLINE=1 always turns downloads off."""
    env = os.environ if env is None else env
    run, data = cfg.run, cfg.data
    if not run.cache_dir:
        run = dataclasses.replace(run, cache_dir=str(environment.default_cache(env)))
    if not data.data_dir and environment.data_dir(env):
        data = dataclasses.replace(data, data_dir=environment.data_dir(env))
    if environment.offline(env):
        data = dataclasses.replace(data, download=False)
    return dataclasses.replace(cfg, run=run, data=data)


def _check_dataset_keys(data: Any, dataset_keys: Mapping[str, Collection[str]]) -> None:
    if not isinstance(data, Mapping):
        return
    dataset = data.get("dataset")
    defaults = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    for key, value in data.items():
        readers = dataset_keys.get(key)
        # a default (a run's config.yaml records every key) changes nothing; another value would be ignored
        if readers is not None and dataset not in readers and value != defaults.get(key):
            raise UsageError(
                f"config key data.{key} does not apply to dataset {dataset!r} (only {', '.join(sorted(readers))} "
                f"read it); remove it from the preset or the command line"
            )


def recipe_data(preset: str = DEFAULT_PRESET, **values: Any) -> DataConfig:
    """A recipe's data settings with `values` over them: what loading one dataset by itself takes (examples,
    benchmarks), with the recipe's defaults rather than a second copy of them."""
    cfg = resolve(preset, {f"data.{k}": v for k, v in values.items()})
    return cfg.data


def training_recipe(model: TeacherConfig | StudentConfig, init: str) -> tuple[str, TrainConfig]:
    """A model that starts from other weights (pretrained, a file) is fine-tuned with its section's `finetune`
    recipe; from scratch it trains with `train`. Returns (recipe name, recipe)."""
    return ("scratch", model.train) if init == "scratch" else ("finetune", model.finetune)
