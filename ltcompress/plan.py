"""What a run will do, decided and checked before its directory exists: names, gates, the device, the data
and its shot groups, the teacher's source. A `Plan` is a frozen value; the steps that do work to get one (join
the process group, load the data, build the loss) are named steps of the pipeline (api.py)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ltcompress import config as config_mod
from ltcompress.config import CompressConfig, TrainConfig
from ltcompress.data import LTData
from ltcompress.errors import UsageError
from ltcompress.gates import Gate
from ltcompress.methods.base import Method
from ltcompress.metrics import Groups
from ltcompress.rebalance import CRT, TauNorm, make_params

log = logging.getLogger("ltcompress")


@dataclass(frozen=True)
class TeacherPlan:
    """The teacher's source, decided before the run directory exists, so a bad weights file leaves nothing on
    disk: a loaded file (with its provenance), or training here from `init` with `loss`, cached under `key`;
    then, with `rebalance`, its classifier re-balanced."""

    arch: str
    loss: str
    init: str = "file"
    reason: str = ""
    key: str = ""
    loaded: nn.Module | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    rebalance: TauNorm | CRT | None = None  # the classifier re-balancing after training (teacher.rebalance)
    base_key: str = ""  # with a re-balancing: the cache key of the teacher before it (shared with runs without)


@dataclass(frozen=True)
class Names:
    """The names a config gives, resolved and checked: the method and its arguments, both architectures, the
    teacher's training loss and the parsed gates."""

    method: type[Method]
    params: Any  # the method's frozen Params dataclass
    student_arch: str
    teacher_arch: str | None
    teacher_loss: str | None
    gates: tuple[Gate, ...]
    rebalance: TauNorm | CRT | None = None  # the teacher's classifier re-balancing (teacher.rebalance)


@dataclass(frozen=True)
class Plan:
    """A run with everything a user can get wrong already checked, before any file is written."""

    cfg: CompressConfig
    names: Names
    student_init: tuple[str, str]  # (pretrained | scratch | file, why)
    device: torch.device
    progress: bool
    data: LTData
    groups: Groups
    teacher: TeacherPlan | None
    resolved: Mapping[str, Any]  # the config as config.yaml and report.json record it
    data_seconds: float = 0.0  # how long loading the data took (report.json's timings)

    @property
    def gates(self) -> tuple[Gate, ...]:
        return self.names.gates

    @property
    def student_arch(self) -> str:
        return self.names.student_arch

    @property
    def stage_keys(self) -> tuple[str, ...]:
        """The stages this run measures, in pipeline order."""
        teacher = ("teacher",) if self.names.teacher_arch else ()
        return (*teacher, "student", "fp32", *(("int8",) if self.cfg.export.int8 else ()))

    def student_recipe(self, init: str | None = None) -> tuple[str, TrainConfig]:
        """(scratch | finetune, recipe): the one the student's planned start (or `init`, where it really
        started) calls for."""
        return config_mod.training_recipe(self.cfg.student, init or self.student_init[0])


def resolved(cfg: CompressConfig, names: Names) -> dict[str, Any]:
    """config.yaml's content: the config and what its names resolved to."""
    return {
        **cfg.to_dict(),
        "resolved": {
            "student_arch": names.student_arch,
            "teacher_arch": names.teacher_arch,
            "method_params": dataclasses.asdict(names.params),
        },
    }


def resolve_names(cfg: CompressConfig) -> Names:
    """The method and its arguments, both architectures, the teacher's loss and re-balancing, and the gates."""
    from ltcompress import gates as gate_mod
    from ltcompress import models
    from ltcompress.methods import METHODS

    method_cls = METHODS.get(cfg.method.name)
    params = method_cls.make_params(cfg.method.args)
    student_arch = models.resolve_name(cfg.student.arch)
    teacher_arch = models.resolve_name(cfg.teacher.arch) if method_cls.uses_teacher else None
    teacher_loss = teacher_loss_for(cfg.teacher.loss, method_cls) if teacher_arch else None
    gates = tuple(gate_mod.parse(g) for g in cfg.gates)
    rebalanced = make_params(cfg.teacher.rebalance, cfg.teacher.rebalance_args) if teacher_arch else None
    return Names(method_cls, params, student_arch, teacher_arch, teacher_loss, gates, rebalanced)


def teacher_loss_for(requested: str, method_cls: type[Method]) -> str:
    """The teacher's training loss: the method's declared choice, or a teacher-free method named by the user
    (a balanced teacher such as bsce gives balanced soft labels to any distillation method)."""
    from ltcompress.methods import METHODS

    if requested == "auto":
        return method_cls.teacher_method
    chosen = METHODS.get(requested)
    if chosen.uses_teacher:
        raise UsageError(
            f"teacher.loss {requested!r} itself needs a teacher; use auto or a method without one (e.g. ce, bsce, la)"
        )
    if chosen.adapt_student is not Method.adapt_student:  # ldam_drw: its cosine classifier is student-only
        raise UsageError(
            f"teacher.loss {requested!r} changes the model's classifier, which the teacher stage does "
            f"not do; use ce, bsce or la for the teacher"
        )
    return requested


def check_batches(cfg: CompressConfig, device: torch.device, world: int) -> None:
    """The precision runs on the device, samplers exist, and each global batch splits over the processes."""
    from ltcompress.data.samplers import SAMPLERS
    from ltcompress.train_state import amp_dtype

    amp_dtype(device, cfg.run.precision)
    for section, recipe in config_mod.recipes(cfg):
        SAMPLERS.get(recipe.sampler)
        if recipe.batch_size % world:
            raise UsageError(
                f"{section}.batch_size {recipe.batch_size} is the global batch and must be "
                f"divisible by the {world} processes"
            )


def student_init(cfg: CompressConfig, arch: str) -> tuple[str, str]:
    """Where the student starts: a weights file, pretrained weights timm can provide here, or scratch."""
    from ltcompress import models

    if cfg.student.weights or cfg.student.init not in config_mod.INITS:
        return "file", cfg.student.weights or cfg.student.init
    init, reason = models.resolve_init(cfg.student.init, arch, "student")
    log.info("student init: %s (%s, student.init %s)", init, reason, cfg.student.init)
    return init, reason


def check_gates(plan: Plan) -> None:
    """Gates on a shot group the data lacks, a class it does not have or a stage this run does not produce."""
    from ltcompress import gates as gate_mod

    gate_mod.check_applicable(plan.gates, plan.groups, plan.stage_keys, plan.data.class_names)


def since(start: float) -> float:
    """Seconds since `start` (time.perf_counter), as report.json's timings record them."""
    return round(time.perf_counter() - start, 2)
