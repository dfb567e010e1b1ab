"""compress()'s keyword settings and how they resolve into a config: the recipe (a preset, else the dataset's
own, else the default dataset's) under dotted-key overrides under keywords. The CLI's options map onto the same
keywords, so an option's config key is written once, here."""

from __future__ import annotations

from typing import Any, Mapping

from ltcompress import config as config_mod
from ltcompress.config import CompressConfig

# compress() keywords -> dotted config keys (the CLI's options map onto the same keys)
KEYWORDS: dict[str, str | tuple[str, ...]] = {
    "teacher": "teacher.arch",
    "student": "student.arch",
    "method": "method.name",
    "dataset": "data.dataset",
    "gates": "gates",
    "name": "run.name",
    "runs_dir": "run.runs_dir",
    "teacher_weights": "teacher.weights",
    "teacher_init": "teacher.init",
    "data_dir": "data.data_dir",
    "method_args": "method.args",
    "seed": "run.seed",
    "device": "run.device",
    "int8": "export.int8",
    "student_init": "student.init",
    "student_weights": "student.weights",
    "int8_repair": "export.int8_repair",
    "epochs": ("student.train.epochs", "student.finetune.epochs"),  # the recipe that runs, scratch or fine-tune
    "teacher_epochs": ("teacher.train.epochs", "teacher.finetune.epochs"),
    "teacher_cache": "run.teacher_cache",
    "track": "run.track",
}


def build_config(
    preset: str | None = None, overrides: Mapping[str, Any] | None = None, **keywords: Any
) -> CompressConfig:
    """Resolve recipe < overrides (dotted keys) < keywords; unknown keys or bad values raise UsageError.

    The recipe is `preset` when given, else the one the dataset names (``--dataset imagefolder`` runs the
    ``photos`` recipe), else the default dataset's."""
    from ltcompress import data as data_stage

    flat = dict(overrides or {})
    for key, value in keywords.items():
        if key not in KEYWORDS:
            raise TypeError(f"compress() got an unexpected keyword argument {key!r}")
        if value is not None:
            targets = KEYWORDS[key]
            for target in (targets,) if isinstance(targets, str) else targets:
                flat[target] = tuple(value) if key in ("gates", "track") else value
    if keywords.get("int8_repair"):  # a repair of an INT8 model that is not built would be a surprise
        flat.setdefault("export.int8", True)
    dataset = flat.get("data.dataset")
    base = None
    if preset is not None:
        reason = f"from --preset {preset}"
        if not config_mod.is_builtin(preset):  # a user's file: over its dataset's recipe
            own = (config_mod.load_preset(preset).get("data") or {}).get("dataset")
            base = data_stage.recipe_of(str(own or dataset or config_mod.DEFAULT_DATASET))
            reason += f" over recipe {base}"
    elif dataset is not None:
        preset, reason = data_stage.recipe_of(str(dataset)), f"from --dataset {dataset}"
    else:
        default = config_mod.DEFAULT_DATASET
        preset, reason = data_stage.recipe_of(default), f"the default dataset {default} (no --dataset)"
    return config_mod.resolve(preset, flat, reason, data_stage.dataset_keys(), base)
