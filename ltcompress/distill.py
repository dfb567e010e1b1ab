"""Stage 3: distill the student. Builds the method's loss for the run, seeds and builds the student, gives the
method what it declared it needs from the teacher, and runs the training loop (loop.py), checkpointing into the
run on the leader."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ltcompress import dist
from ltcompress.loop import LoopOptions, prepare_method, save_weights, train
from ltcompress.methods.base import Method, TrainingPass
from ltcompress.plan import Plan
from ltcompress.role import Leader, Role
from ltcompress.teacher import Teacher

log = logging.getLogger("ltcompress")


@dataclass(frozen=True)
class Distilled:
    """Stage 3's result: the trained student, the teacher's pass its method prepared from, and where the
    student really started (an `auto` start may still fall back to scratch when a download fails)."""

    student: nn.Module
    train_pass: TrainingPass | None
    init: tuple[str, str]  # (pretrained | scratch | file, why)
    diagnostics: dict[str, Any]  # the method's own entries for report.json (method.diagnostics)


def build_loss(plan: Plan) -> Method:
    """The method's loss for this run's class counts; checks that need the class count (rekd's k) fail here,
    before the run directory exists."""
    from ltcompress.methods.base import MethodContext

    epochs = plan.student_recipe()[1].epochs
    ctx = MethodContext.for_run(plan.data.class_counts, epochs, plan.cfg.data)
    return plan.names.method(plan.names.params, ctx)


def distill_student(plan: Plan, loss: Method, teacher: Teacher | None, role: Role) -> Distilled:
    """Stage 3 on every rank, as api.compress() runs it: the seeded student, what its method needs from the
    teacher, then training with the teacher-logit cache when the run has one. The leader checkpoints into its
    run (and resumes from it); followers train alongside it."""
    from ltcompress import logit_cache, models

    cfg, data = plan.cfg, plan.data
    teacher_sha = teacher.provenance["weights_sha256"] if teacher and isinstance(role, Leader) else None
    saved, save = _student_checkpoints(plan, teacher_sha, role)
    torch.manual_seed(cfg.run.seed)
    init = cfg.student.init if plan.student_init[0] == "file" else plan.student_init[0]
    student, info = models.build(
        plan.student_arch, data.num_classes, data.spec.channels, init, cfg.student.weights, role="student"
    )
    module = teacher.module if teacher else None
    student, train_pass = prepare_method(loss, student, module, data, plan.device, cfg.run.eval_batch_size)
    teacher_sha = dist.broadcast_object(teacher_sha)
    recipe_name, recipe = plan.student_recipe(info["init"])  # an auto start may have fallen back
    cache = logit_cache.for_run(cfg, recipe, data, plan.device, teacher_sha) if module is not None else None
    options = LoopOptions(cfg.run.precision, cfg.run.compile, cache, role.progress)
    log.info(
        "student recipe: %s (%d epochs, lr %g, batch %d)", recipe_name, recipe.epochs, recipe.lr, recipe.batch_size
    )
    on_epoch = role.log_metrics if isinstance(role, Leader) else None
    train(
        student,
        loss,
        data,
        recipe,
        plan.device,
        stage="student",
        seed=cfg.run.seed,
        teacher=module,
        on_epoch=on_epoch,
        checkpoint=save,
        resume=dist.broadcast_object(saved),
        options=options,
    )
    if isinstance(role, Leader):
        save_weights(student, role.run.file("student.safetensors"))
    diagnostics = loss.diagnostics(train_pass, dict(plan.groups))
    return Distilled(student, train_pass, (info["init"], info["reason"]), diagnostics)


def _student_checkpoints(
    plan: Plan, teacher_sha: str | None, role: Role
) -> tuple[dict[str, Any] | None, Callable[[dict[str, Any]], None] | None]:
    """The leader's last student checkpoint (when resuming) and how it writes the next one; followers: none."""
    from ltcompress import checkpoint
    from ltcompress.rundir import atomic_torch_save

    if not isinstance(role, Leader):
        return None, None
    path = role.run.file("checkpoints") / "student-last.pt"
    saved = checkpoint.load_student(path, teacher_sha, role.run.path) if role.resume else None

    def save(state: dict[str, Any]) -> None:
        atomic_torch_save(path, {**state, "teacher_sha256": teacher_sha, "config": dict(plan.resolved)})

    return saved, save
