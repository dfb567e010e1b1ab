"""What a run will do, decided and checked before its directory exists: names, gates, devices, batch sizes,
the data itself, the teacher's source and the method's loss. A bad input fails here and leaves nothing on disk."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from ltcompress import config as config_mod
from ltcompress.config import CompressConfig, TrainConfig
from ltcompress.errors import UsageError

log = logging.getLogger("ltcompress")


@dataclass
class Plan:
    """A run with everything a user can get wrong already checked, before any file is written."""

    cfg: CompressConfig
    student_arch: str
    student_init: tuple[str, str]  # (pretrained | scratch | file, why)
    params: Any
    loss: Any  # the method's loss module
    gates: list[Any]
    device: Any
    progress: bool
    data: Any
    groups: dict[str, list[int]]
    teacher_plan: Any
    resolved: dict[str, Any]
    timings: dict[str, float]

    def student_recipe(self) -> tuple[str, TrainConfig]:
        """(scratch | finetune, recipe): the one the student's start calls for."""
        return config_mod.training_recipe(self.cfg.student, self.student_init[0])

    def student_info(self) -> dict[str, Any]:
        """report.json's `student`: where it started and how it trained."""
        from ltcompress.distill import used_batch

        recipe_name, recipe = self.student_recipe()
        return {
            "arch": self.student_arch,
            "init": self.student_init[0],
            "init_reason": self.student_init[1],
            "recipe": recipe_name,
            "batch_size_used": used_batch(recipe.batch_size, len(self.data.train)),
            "ema": recipe.ema,
            "ema_decay": recipe.ema_decay if recipe.ema else None,
            "exported_weights": "ema" if recipe.ema else "last epoch",
            "precision": self.cfg.run.precision,
            "compile": self.cfg.run.compile,
        }


@dataclass(frozen=True)
class _Names:
    method_cls: Any
    params: Any
    student_arch: str
    teacher_arch: str | None
    teacher_loss: str | None
    gates: list[Any]


def validate(cfg: CompressConfig, progress: bool) -> Plan:
    """Names, gates, devices, batch sizes and the data itself, checked before anything is written."""
    from ltcompress import dist
    from ltcompress import progress as progress_mod
    from ltcompress import recipe, tracking

    names = _names(cfg)
    tracking.check(cfg.run.track)
    device = dist.init_from_env(dist.pick_device(cfg.run.device))  # torchrun: join the process group
    cfg = recipe.fit(cfg, names.student_arch)  # data.input_size auto etc., from the images' headers
    cfg = recipe.fit_device(cfg, device)  # batch sizes by device
    _check_device_and_batches(cfg, device)
    if not dist.is_main():  # only rank 0 writes files and shows progress
        log.setLevel(logging.WARNING)
        progress = False
    progress_mod.configure(progress)
    student_init = _student_init(cfg, names.student_arch)
    t = time.perf_counter()
    data, groups, teacher_plan, loss = _data_and_loss(cfg, names, student_init)
    log.info("%s", recipe.describe(cfg))
    for line in cfg.fitted:
        log.info("recipe %s fitted %s", cfg.preset, line)
    resolved = {
        **cfg.to_dict(),
        "resolved": {
            "student_arch": names.student_arch,
            "teacher_arch": names.teacher_arch,
            "method_params": dataclasses.asdict(names.params),
        },
    }
    return Plan(
        cfg=cfg,
        student_arch=names.student_arch,
        student_init=student_init,
        params=names.params,
        loss=loss,
        gates=names.gates,
        device=device,
        progress=progress,
        data=data,
        groups=groups,
        teacher_plan=teacher_plan,
        resolved=resolved,
        timings={"data": since(t)},
    )


def since(start: float) -> float:
    """Seconds since `start` (time.perf_counter), as report.json's timings record them."""
    return round(time.perf_counter() - start, 2)


def _names(cfg: CompressConfig) -> _Names:
    """The method and its arguments, both architectures, the teacher's loss and the gates."""
    from ltcompress import gates as gate_mod
    from ltcompress import models
    from ltcompress import teacher as teacher_stage
    from ltcompress.methods import METHODS

    method_cls = METHODS.get(cfg.method.name)
    params = method_cls.make_params(cfg.method.args)
    student_arch = models.resolve_name(cfg.student.arch)
    teacher_arch = models.resolve_name(cfg.teacher.arch) if method_cls.uses_teacher else None
    teacher_loss = teacher_stage.resolve_loss(cfg.teacher.loss, method_cls) if teacher_arch else None
    gates = [gate_mod.parse(g) for g in cfg.gates]
    return _Names(method_cls, params, student_arch, teacher_arch, teacher_loss, gates)


def _check_device_and_batches(cfg: CompressConfig, device: Any) -> None:
    from ltcompress import dist
    from ltcompress.train_state import amp_dtype
    from ltcompress.data.samplers import SAMPLERS

    amp_dtype(device, cfg.run.precision)
    for section, recipe in config_mod.recipes(cfg):
        SAMPLERS.get(recipe.sampler)
        if recipe.batch_size % dist.world():
            raise UsageError(
                f"{section}.batch_size {recipe.batch_size} is the global batch and must be "
                f"divisible by the {dist.world()} processes"
            )


def _data_and_loss(cfg: CompressConfig, names: _Names, student_init: tuple[str, str]) -> tuple[Any, ...]:
    """The data (minus the repair's held-out images), its shot groups, the teacher's source and the method's
    loss, with the gates checked against the classes and stages the run will have."""

    from ltcompress import data as data_stage
    from ltcompress import gates as gate_mod
    from ltcompress import models, rundir
    from ltcompress import teacher as teacher_stage
    from ltcompress.methods.base import MethodContext

    arch = names.student_arch
    pre = models.pretrained_preprocessing(arch) if student_init[0] == "pretrained" else None
    data = data_stage.load(cfg.data, rundir.cache_root(cfg.run.cache_dir), pre)
    if cfg.export.int8_repair:
        from ltcompress.repair import set_aside

        data = set_aside(data, names.gates, cfg.export.repair_holdout, cfg.data.seed)
    groups = data_stage.shot_groups(data.class_counts, cfg.data.many_threshold, cfg.data.few_threshold)
    stage_keys = ("teacher",) * bool(names.teacher_arch) + ("student", "fp32") + ("int8",) * cfg.export.int8
    gate_mod.check_applicable(names.gates, groups, stage_keys, data.class_names)
    teacher_plan = teacher_stage.plan(cfg, data, names.teacher_loss) if names.teacher_loss else None
    epochs = config_mod.training_recipe(cfg.student, student_init[0])[1].epochs
    ctx = MethodContext.for_run(data.class_counts, epochs, cfg.data)
    loss = names.method_cls(names.params, ctx)  # checks needing the class count (rekd's k) happen here
    if cfg.export.int8 and cfg.export.exclude_nodes:
        from ltcompress import onnx_export

        onnx_export.check_exclude_nodes(arch, data.spec, data.num_classes, cfg.export.exclude_nodes, cfg.export.opset)
    log.info(
        "data: %s, %d train / %d test images, class counts %s",
        cfg.data.dataset,
        len(data.train),
        len(data.test),
        data_stage.counts_text(data.class_counts),
    )
    return data, groups, teacher_plan, loss


def _student_init(cfg: CompressConfig, arch: str) -> tuple[str, str]:
    """Where the student starts: a weights file, pretrained weights timm can provide here, or scratch."""
    from ltcompress import models

    if cfg.student.weights or cfg.student.init not in config_mod.INITS:
        return "file", cfg.student.weights or cfg.student.init
    init, reason = models.resolve_init(cfg.student.init, arch, "student")
    log.info("student init: %s (%s, student.init %s)", init, reason, cfg.student.init)
    return init, reason
