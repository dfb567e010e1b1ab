"""The options of `ltcompress run`, each declared once in OPTIONS: the CLI's click options, compress()'s keywords
(its signature and docstring) and docs/config.md are generated from it. A new config option is one row here.

Also how compress()'s settings resolve into a config: the recipe (a preset, else the dataset's own, else the
default dataset's) under dotted-key overrides under keywords."""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar, cast

from ltcompress import config as config_mod
from ltcompress.config import CompressConfig
from ltcompress.errors import UsageError
from ltcompress.values import key_values

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RunOption:
    """One option of `ltcompress run`; when it sets config keys, also the compress() keyword of the same name."""

    name: str  # compress() keyword, and the click parameter's name
    keys: str | tuple[str, ...]  # the config key(s) it sets; (): a compress() call parameter, not a setting
    help: str | Callable[[], str]  # --help's text; a callable lists registered names (the CLI calls it)
    type: type = str  # a value's type: str, int, or bool for a flag
    flag: str = ""  # the CLI spelling; "": --name with dashes
    metavar: str | None = None
    multiple: bool = False  # repeatable on the CLI, a sequence in compress()
    pairs: bool = False  # repeatable KEY=VALUE on the CLI, a mapping in compress()
    path: str | None = None  # "dir" | "file": the CLI refuses a path of the other kind
    choices: tuple[str, ...] = ()
    completion: Callable[[], list[str]] | None = None  # the names the shell completes
    complete_files: bool = False  # the shell also completes file paths
    negated: bool = False  # a flag that turns its keyword off: --no-progress is progress=False
    keyword: bool = True  # False: the CLI's own (output format), not a compress() keyword
    implies: Mapping[str, Any] = field(default_factory=dict)  # config values it sets too, unless given
    doc: str = ""  # compress()'s docstring text where `help` is a callable

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.keys,) if isinstance(self.keys, str) else self.keys

    @property
    def keeps_recipe(self) -> bool:
        """Left off on the CLI (an empty repeatable option, a flag not given), a setting keeps the recipe's value."""
        return bool(self.targets) and (self.multiple or self.pairs or self.type is bool)

    @property
    def annotation(self) -> str:
        """compress()'s annotation of the keyword (None: the recipe's value)."""
        kind = "Mapping[str, Any]" if self.pairs else "Sequence[str]" if self.multiple else self.type.__name__
        return f"{kind} | None"

    @property
    def text(self) -> str:
        """The help as compress()'s docstring states it (registry names are the CLI's alone)."""
        return self.help if isinstance(self.help, str) else self.doc

    def from_cli(self, value: Any) -> Any:
        """The compress() keyword's value for what click parsed."""
        if self.pairs:
            return key_values(value, self.cli_flag) or None
        return (value or None) if self.keeps_recipe else value


def _preset_names() -> list[str]:
    return config_mod.list_presets()


def _dataset_names() -> list[str]:
    from ltcompress.data import DATASETS

    return DATASETS.names()


def _method_names() -> list[str]:
    from ltcompress.methods import METHODS

    return METHODS.names()


def _method_help() -> str:
    from ltcompress.methods import list_methods

    names = ", ".join(i.name + (" (a reading)" if i.status == "reading" else "") for i in list_methods())
    return f"Distillation method or baseline: {names}; see list-methods."


_INIT = "auto|pretrained|scratch|FILE"
OPTIONS: tuple[RunOption, ...] = (
    RunOption(
        "preset",
        (),
        "Built-in preset (recipe) or a .yaml file read over its dataset's recipe, such as a run's config.yaml "
        "(default: the dataset's recipe). See list-presets.",
        completion=_preset_names,
        complete_files=True,
    ),
    RunOption("teacher", "teacher.arch", "timm architecture of the teacher (e.g. resnet50)."),
    RunOption(
        "student", "student.arch", "timm architecture or alias of the student (mobilenetv3 = mobilenetv3_small_100)."
    ),
    RunOption(
        "method",
        "method.name",
        _method_help,
        completion=_method_names,
        doc="Distillation method or baseline (ltcompress list-methods).",
    ),
    RunOption(
        "dataset",
        "data.dataset",
        "fmnist-lt (default), cifar10-lt, cifar100-lt or imagefolder (with --data-dir); each runs its own "
        "recipe (imagefolder: photos, fitted to the images) unless --preset names another.",
        completion=_dataset_names,
    ),
    RunOption("data_dir", "data.data_dir", "Folder holding the dataset files.", path="dir"),
    RunOption(
        "gates",
        "gates",
        "Gate, e.g. 'few >= 0.5', 'int8.class[Sandal] >= 0.6', 'drop(fp32, int8).few <= 0.01', "
        "'flip(fp32, int8) <= 0.02'; repeatable (README: Gates).",
        flag="--gate",
        metavar="EXPR",
        multiple=True,
    ),
    RunOption(
        "int8",
        "export.int8",
        "Also export a static INT8 model (calibrated on a class-stratified "
        "training sample), verify and gate it as stage int8.",
        type=bool,
    ),
    RunOption(
        "int8_repair",
        "export.int8_repair",
        "--int8, and when an int8 gate fails with confidence on views of the gated classes' training "
        "images, return the quantized nodes that hurt them most to FP32 until it passes there (export.repair_budget "
        "nodes, export.repair_seconds at most). Training is unchanged.",
        type=bool,
        implies={"export.int8": True},  # a repair of an INT8 model that is not built would be a surprise
    ),
    RunOption(
        "teacher_weights",
        "teacher.weights",
        "Teacher weights for this dataset (.safetensors, or .pt/.pth loaded with weights_only=True).",
        path="file",
    ),
    RunOption(
        "teacher_init",
        "teacher.init",
        "Where a teacher trained here starts: auto (pretrained weights when timm / huggingface_hub can "
        "provide them, from the HF cache under HF_HUB_OFFLINE, else scratch), pretrained, scratch, or "
        "a weights file (e.g. ImageNet .safetensors) fine-tuned under a new head.",
        metavar=_INIT,
    ),
    RunOption(
        "teacher_rebalance",
        "teacher.rebalance",
        "Re-balance the classifier of a teacher trained here after its training: none, tau-norm (weight "
        "norms equalised) or crt (classifier re-trained with class-balanced sampling). A --teacher-weights "
        "teacher is re-balanced only with --set teacher.rebalance_given=true.",
        choices=config_mod.REBALANCE,
    ),
    RunOption(
        "student_init",
        "student.init",
        "Where the student starts (as --teacher-init; default: the recipe's, scratch for fmnist-lt and "
        "cifar, auto for image folders).",
        metavar=_INIT,
    ),
    RunOption(
        "student_weights",
        "student.weights",
        "Weights file the student starts from (.safetensors or .pt/.pth, weights_only=True); a head for "
        "another class count is replaced by a new one.",
        path="file",
    ),
    RunOption(
        "method_args",
        "method.args",
        "Method hyper-parameter, e.g. T=2; repeatable (see list-methods --params).",
        flag="--method-arg",
        metavar="KEY=VALUE",
        pairs=True,
    ),
    RunOption(
        "epochs",
        ("student.train.epochs", "student.finetune.epochs"),  # the recipe that runs, scratch or fine-tune
        "Student (distillation) epochs, of the recipe it runs (train or finetune).",
        type=int,
    ),
    RunOption(
        "teacher_epochs",
        ("teacher.train.epochs", "teacher.finetune.epochs"),
        "Teacher training epochs, of the recipe it runs (train or finetune).",
        type=int,
    ),
    RunOption("seed", "run.seed", "Training seed.", type=int),
    RunOption("device", "run.device", "auto (CUDA when present), cpu, cuda, cuda:N, mps."),
    RunOption("name", "run.name", "Run name (folder under --runs-dir); must not exist yet."),
    RunOption("runs_dir", "run.runs_dir", "Where runs go (default: runs).", path="dir"),
    RunOption(
        "overrides",
        (),
        "Any config value by dotted key, e.g. student.train.lr=0.1; repeatable.",
        flag="--set",
        metavar="KEY=VALUE",
        pairs=True,
    ),
    RunOption(
        "teacher_cache",
        "run.teacher_cache",
        "Store the teacher's logits per epoch and reuse them in later runs with the same teacher, data, "
        "sampler and seed (exact: the same student, without the teacher's forward pass).",
        type=bool,
    ),
    RunOption(
        "resume",
        (),
        "Continue the interrupted run named by --name from its last checkpoint (same options).",
        type=bool,
    ),
    RunOption(
        "track",
        "run.track",
        "Also log epochs, results, gates and artifacts to TensorBoard (event files in the run) or MLflow "
        "(MLFLOW_TRACKING_URI, else a file store beside the runs); repeatable; needs the extra of that name.",
        multiple=True,
        choices=("tensorboard", "mlflow"),
    ),
    RunOption(
        "dry_run",
        (),
        "Check everything, time a few steps of each model, print the resolved recipe, a data summary and the "
        "cost estimate, and exit 0 without training or writing anything.",
        type=bool,
    ),
    RunOption("as_json", (), "Print the result as JSON instead of a table.", type=bool, flag="--json", keyword=False),
    RunOption("progress", (), "Hide progress bars.", type=bool, flag="--no-progress", negated=True),
)
SETTINGS = {o.name: o for o in OPTIONS if o.targets}  # the keywords that set config keys


def check_keywords(keywords: Mapping[str, Any], config: CompressConfig | None, **others: Any) -> None:
    """compress()'s settings: an unknown keyword is Python's TypeError; a setting beside `config` (which would
    be ignored) is a UsageError naming it."""
    unknown = next((k for k in keywords if k not in SETTINGS), None)
    if unknown is not None:
        raise TypeError(f"compress() got an unexpected keyword argument {unknown!r}")
    values = {**keywords, **others}
    given = ", ".join(k for k in (*SETTINGS, *others) if values.get(k) is not None)
    if config is not None and given:
        raise UsageError(
            f"compress() got config= and also {given}, which config= would ignore: set them on the config "
            f"(dataclasses.replace), or drop config= and pass them (overrides= takes dotted keys)"
        )


def run_keywords(func: F) -> F:
    """compress() takes its settings as **options; its signature and docstring list them from SETTINGS, so
    help() and inspect show every one (and a new row needs no second list)."""
    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    named = {p.name for p in params}
    params += [
        inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=o.annotation)
        for o in SETTINGS.values()
        if o.name not in named
    ]
    typed = cast(Any, func)
    typed.__signature__ = sig.replace(parameters=params)
    typed.__doc__ = (func.__doc__ or "").rstrip() + "\n\n" + _settings_doc()
    return func


def _settings_doc() -> str:
    """The settings' list in compress()'s docstring: keyword, config key(s), CLI option, meaning."""
    lines = ["    Settings (None keeps the recipe's value; docs/config.md lists every config key):"]
    for o in SETTINGS.values():
        line = f"{o.name} ({', '.join(o.targets)}; {o.cli_flag}): {o.text}"
        lines.append(textwrap.fill(line, 112, initial_indent=" " * 8, subsequent_indent=" " * 12))
    return "\n".join(lines) + "\n    "


def build_config(
    preset: str | None = None, overrides: Mapping[str, Any] | None = None, **keywords: Any
) -> CompressConfig:
    """Resolve recipe < overrides (dotted keys) < keywords (SETTINGS); unknown keys or bad values raise UsageError.

    The recipe is `preset` when given, else the one the dataset names (``--dataset imagefolder`` runs the
    ``photos`` recipe), else the default dataset's."""
    from ltcompress import data as data_stage

    check_keywords(keywords, None)
    flat = dict(overrides or {})
    for key, value in keywords.items():
        option = SETTINGS[key]
        if value is not None:
            for target in option.targets:
                flat[target] = tuple(value) if option.multiple else value
            if value:
                for target, implied in option.implies.items():
                    flat.setdefault(target, implied)
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
