"""The pipeline's first steps, before anything is written: resolve the names, join the process group (under
torchrun), fit the recipe to the data and device, load the data, plan the teacher and build the method's loss.
Each is a named step; what they decide is a frozen Plan. A bad input fails here and leaves nothing on disk."""

from __future__ import annotations

import logging
import time

from ltcompress import dist
from ltcompress import plan as plan_mod
from ltcompress.config import CompressConfig
from ltcompress.data import LTData
from ltcompress.methods.base import Method
from ltcompress.metrics import Groups
from ltcompress.plan import Names, Plan, since

log = logging.getLogger("ltcompress")


def prepare(cfg: CompressConfig, progress: bool) -> tuple[Plan, Method]:
    """The checked plan of a run and its method's loss."""
    from ltcompress import distill, recipe, tracking
    from ltcompress import progress as progress_mod
    from ltcompress import teacher as teacher_stage

    names = plan_mod.resolve_names(cfg)
    tracking.check(cfg.run.track)
    device = dist.init_from_env(dist.pick_device(cfg.run.device))  # step: join the process group (torchrun)
    cfg = recipe.fit(cfg, names.student_arch)  # data.input_size auto etc., from the images' headers
    cfg = recipe.fit_device(cfg, device)  # batch sizes by device
    plan_mod.check_batches(cfg, device, dist.world())
    if not dist.is_main():  # only rank 0 writes files and shows progress
        log.setLevel(logging.WARNING)
        progress = False
    progress_mod.configure(progress)
    student_init = plan_mod.student_init(cfg, names.student_arch)
    start = time.perf_counter()
    data, groups = load_data(cfg, names, student_init[0])  # step: the data
    teacher = teacher_stage.plan(cfg, data, names.teacher_loss, names.rebalance) if names.teacher_loss else None
    resolved = plan_mod.resolved(cfg, names)
    plan = Plan(cfg, names, student_init, device, progress, data, groups, teacher, resolved, since(start))
    plan_mod.check_gates(plan)
    _check_starts(plan)  # step: every weights file a model starts from, loaded once and dropped
    loss = distill.build_loss(plan)  # step: the loss (checks that need the class count, such as rekd's k)
    _check_exclude_nodes(plan)
    log.info(
        "data: %s, %d train / %d test images, class counts %s",
        cfg.data.dataset,
        len(data.train),
        len(data.test),
        _counts(data),
    )
    log.info("%s", recipe.describe(cfg))
    for line in cfg.fitted:
        log.info("recipe %s fitted %s", cfg.preset, line)
    return plan, loss


def load_data(cfg: CompressConfig, names: Names, student_init: str) -> tuple[LTData, Groups]:
    """The data with the preprocessing of a pretrained student, and its shot groups. The INT8 repair takes no
    image from training (its evidence is the training images' views, or data.val_list's held-out images)."""
    from ltcompress import data as data_stage
    from ltcompress import models, rundir

    if cfg.export.int8_repair:  # a repair with no int8 gate to work for is refused before any image loads
        from ltcompress.repair import check

        check(names.gates)
    pre = models.pretrained_preprocessing(names.student_arch) if student_init == "pretrained" else None
    data = data_stage.load(cfg.data, rundir.cache_root(cfg.run.cache_dir), pre)
    groups = data_stage.shot_groups(data.class_counts, cfg.data.many_threshold, cfg.data.few_threshold)
    return data, groups


def _check_starts(plan: Plan) -> None:
    """Every weights file a model will start from (--student-weights, a FILE init, cached pretrained weights)
    is readable, in a safe format and loads into its architecture: checked by building the model once here,
    before any folder is made or any model trains (a bad student file would otherwise surface after the
    teacher has trained). The random state is left as it was, so the run trains the same models."""
    import torch

    from ltcompress import models

    cfg, data = plan.cfg, plan.data
    student_init = cfg.student.init if plan.student_init[0] == "file" else plan.student_init[0]
    starts = [("student", plan.student_arch, student_init, cfg.student.weights)]
    if plan.teacher is not None and plan.teacher.loaded is None:  # --teacher-weights is loaded by its plan
        starts.append(("teacher", plan.teacher.arch, cfg.teacher.init, None))
    for role, arch, init, weights in starts:
        kind = "file" if weights else models.resolve_init(init, arch, role)[0]
        if kind == "file" or (kind == "pretrained" and models.cached_weights(arch)):
            with torch.random.fork_rng(devices=[]):
                models.build(arch, data.num_classes, data.spec.channels, init, weights, role=role)
            log.debug("%s start checked: %s", role, weights or init)


def _check_exclude_nodes(plan: Plan) -> None:
    """export.exclude_nodes names nodes the student's graph has (checked on a throwaway export)."""
    e = plan.cfg.export
    if e.int8 and e.exclude_nodes:
        from ltcompress import onnx_export

        data = plan.data
        onnx_export.check_exclude_nodes(plan.student_arch, data.spec, data.num_classes, e.exclude_nodes, e.opset)


def _counts(data: LTData) -> str:
    from ltcompress.data import counts_text

    return counts_text(data.class_counts)
