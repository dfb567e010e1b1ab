"""The method-agnostic training loop that the teacher stage and the distill stage both run.

The loop asks the method what it needs (teacher logits, penultimate features) and never names one. CUDA when
present (bf16 autocast; losses compute in fp32 inside the methods), channels_last everywhere. Under torchrun it
wraps the student and method in one DistributedDataParallel module; each epoch (and Ctrl-C) ends in a resumable
checkpoint; a teacher-logit cache can stand in for the teacher's forward pass.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ltcompress import dist
from ltcompress.checkpoint import StopRequest
from ltcompress.config import TrainConfig
from ltcompress.data import LTData, eval_batches, train_batches
from ltcompress.data.loader import TrainBatch
from ltcompress.data.samplers import epoch_stream, rank_share
from ltcompress.errors import DivergenceError, UsageError
from ltcompress.logit_cache import LogitCache
from ltcompress.methods.base import Method, TrainingPass
from ltcompress.models import features_and_logits
from ltcompress.rundir import atomic_save_file
from ltcompress.train_state import TrainState, amp_dtype, autocast, build_state

if TYPE_CHECKING:
    from ltcompress.data.transforms import BatchAugment


log = logging.getLogger("ltcompress")


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    seconds: float


def used_batch(requested: int, train_images: int) -> int:
    """The global batch trained with: the one requested, or the whole training set when that is smaller."""
    return min(requested, train_images)


def freeze(model: nn.Module) -> nn.Module:
    """A frozen teacher: eval mode for the whole run (BatchNorm statistics never change), no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model


@torch.no_grad()
def training_pass(
    teacher: nn.Module, student: nn.Module, data: LTData, device: torch.device, batch: int, features: bool
) -> TrainingPass:
    """The frozen teacher's logits (and features) on the un-augmented training set, plus the student's feature
    width (one eval-mode forward on two images: BatchNorm statistics are untouched)."""
    freeze(teacher.to(device).to(memory_format=torch.channels_last))
    logits, feats, labels = [], [], []
    for x, y in eval_batches(data, data.train, batch, device):
        if features:
            f, z = features_and_logits(teacher, x)
            feats.append(f.float().cpu())
        else:
            z = teacher(x)
        logits.append(z.float().cpu())
        labels.append(y.cpu())
    was_training = student.training
    student.to(device).eval()
    dim = int(features_and_logits(student, x[:2])[0].shape[1])
    student.train(was_training)
    return TrainingPass(torch.cat(labels), torch.cat(logits), torch.cat(feats) if features else None, dim)


def prepare_method(
    method: Method, student: nn.Module, teacher: nn.Module | None, data: LTData, device: torch.device, batch: int
) -> tuple[nn.Module, TrainingPass | None]:
    """Give a method what it declared it needs before training: its adapted student, and the teacher's pass over
    the training set (prototypes, diagnostics)."""
    student = method.adapt_student(student)
    train_pass = None
    if method.needs_training_pass and teacher is not None:
        train_pass = training_pass(teacher, student, data, device, batch, method.needs_features)
        method.prepare(train_pass)
    return student, train_pass


@dataclass(frozen=True)
class LoopOptions:
    """How the loop runs beyond the recipe: precision, torch.compile, a teacher-logit cache, progress bars."""

    precision: str = "auto"
    compile: bool = False
    teacher_cache: LogitCache | None = None
    progress: bool = True


class Loop:
    """One training run's fixed parts (data, recipe, teacher, device); `epoch` and `step` move a TrainState."""

    def __init__(
        self,
        method: Method,
        data: LTData,
        recipe: TrainConfig,
        device: torch.device,
        stage: str,
        seed: int,
        teacher: nn.Module | None,
        options: LoopOptions,
    ) -> None:
        self.method, self.data, self.recipe, self.device = method, data, recipe, device
        self.stage, self.seed, self.teacher, self.options = stage, seed, teacher, options
        world = dist.world()
        global_batch = used_batch(recipe.batch_size, len(data.train))
        if global_batch < recipe.batch_size:
            log.warning(
                "%s.train.batch_size %d is larger than the %d training images; using %d (recorded in "
                "report.json as %s.batch_size_used)",
                stage,
                recipe.batch_size,
                len(data.train),
                global_batch,
                stage,
            )
        if global_batch % world:
            raise UsageError(f"{stage}.train.batch_size {global_batch} is not divisible by the {world} processes")
        self.global_batch, self.batch = global_batch, global_batch // world
        self.steps = len(data.train) // global_batch  # drop_last: a batch of 1 would break BatchNorm
        self.dtype = amp_dtype(device, options.precision)
        self.mixer = _mixer(data, device)
        self.first_epoch = 0
        self.checkpointed = False  # a checkpoint of this stage exists on disk (resumed from one, or one written)
        if teacher is not None:
            freeze(teacher.to(device).to(memory_format=torch.channels_last))

    def epoch(
        self, state: TrainState, stop: StopRequest, bar: tqdm[Any], checkpoint: Callable[[dict[str, Any]], None] | None
    ) -> dict[str, Any]:
        """One epoch from where `state` stands; returns its record (loss, accuracy, images/s)."""
        t0, epoch, skip = time.perf_counter(), state.epoch, state.step
        cache = self.options.teacher_cache if self.teacher is not None and not self.method.needs_features else None
        cached = cache.load(epoch, self.steps * self.batch) if cache is not None else None
        # the epoch's logits are stored for the cache only when computed for a whole epoch
        stored: list[torch.Tensor] | None = [] if cache is not None and cached is None and skip == 0 else None
        order = rank_share(
            epoch_stream(self.recipe.sampler, self.data.train.labels, self.seed, epoch), dist.rank(), dist.world()
        )[: self.steps * self.batch]
        batches = train_batches(
            self.data,
            order,
            self.batch,
            self.device,
            key=(self.seed, epoch, dist.rank()),
            first_step=skip,
            generator=state.generator,
            mixer=self.mixer,
        )
        for i, batch in enumerate(batches, start=skip):
            stopping = self.step(
                state,
                batch,
                epoch + 1 + i / self.steps,
                stop,
                partial(self._teacher, cached=cached, i=i, stored=stored),
            )
            state.step = i + 1
            bar.update(1)
            if i == skip and epoch == self.first_epoch:
                log.info("%s: first training step done", self.stage)  # bench/scale.py times the start-up by it
            if stopping:
                _save(state, self.stage, checkpoint)
                raise KeyboardInterrupt
        seconds = time.perf_counter() - t0
        dist.average_buffers(state.module)
        loss_sum, correct, seen = dist.sum_values([state.sums[0], int(state.sums[1]), state.sums[2]])
        record = {
            "stage": self.stage,
            "epoch": epoch + 1,
            "epochs": self.recipe.epochs,
            "loss": loss_sum / seen,
            "train_acc": correct / seen,
            "lr": state.scheduler.get_last_lr()[0],
            "seconds": round(seconds, 3),
            "images_per_s": round((seen - skip * self.global_batch) / seconds, 1),
        }
        if cache is not None and stored is not None:
            cache.save(epoch, torch.cat(stored))
        if self.options.teacher_cache is not None and self.teacher is not None:
            record["teacher_logits"] = "cache" if cached is not None else "computed"
        return record

    def _teacher(
        self, x: torch.Tensor, cached: torch.Tensor | None, i: int, stored: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The teacher's logits (and features) for batch `i`: from the logit cache, or a no-grad forward."""
        if cached is not None:
            return cached[i * self.batch : (i + 1) * self.batch].to(self.device, non_blocking=True), None
        if self.teacher is None:
            return None, None
        features = None
        with torch.no_grad():
            if self.method.needs_features:
                features, logits = features_and_logits(self.teacher, x)
            else:
                logits = self.teacher(x)
        if stored is not None:
            stored.append(logits)
        return logits, features

    def step(
        self,
        state: TrainState,
        batch: TrainBatch,
        progress: float,
        stop: StopRequest,
        teacher: Callable[[torch.Tensor], tuple[torch.Tensor | None, torch.Tensor | None]],
    ) -> bool:
        """One optimizer step; True when Ctrl-C asks the run to stop after it (on any rank)."""
        with autocast(self.device, self.dtype):
            teacher_logits, teacher_features = teacher(batch.x)
            loss, logits = state.wrapped(
                batch.x, batch.y, progress, teacher_logits, teacher_features, batch.y_mix, batch.lam
            )
        # the one host sync per step: divergence (on any rank) must stop every rank at this step
        value, stopping = dist.step_flags(loss, stop.requested)
        if not math.isfinite(value):
            raise DivergenceError(
                f"{self.stage} training diverged: loss {value} at epoch {state.epoch + 1}, step {state.step + 1}; "
                f"{self._kept(state)}. Lower the learning rate (e.g. --set {self.stage}.train.lr="
                f"{self.recipe.lr / 10:g}) or clip gradients (--set {self.stage}.train.grad_clip=5)"
            )
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if self.recipe.grad_clip is not None:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(state.optimizer.param_groups[0]["params"], self.recipe.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.module.student, step=state.epoch * self.steps + state.step + 1)
        loss_sum, correct, seen = state.sums
        correct = correct + (logits.detach().argmax(1) == batch.y).sum()  # summed on the device: no extra sync
        state.sums = (loss_sum + value * len(batch.y), correct, seen + len(batch.y))
        return stopping

    def _kept(self, state: TrainState) -> str:
        if not self.checkpointed:
            return "no checkpoint of this stage was written before it diverged (none is kept)"
        return "the last good checkpoint is kept in the run's checkpoints/"


def _save(state: TrainState, stage: str, checkpoint: Callable[[dict[str, Any]], None] | None) -> None:
    """Every rank takes part in gathering the state (a collective); the caller with a `checkpoint` writes it."""
    saved = state.checkpoint(stage)
    if checkpoint is not None:
        checkpoint(saved)


def _mixer(data: LTData, device: torch.device) -> BatchAugment | None:
    """timm random erasing and Mixup/CutMix on the normalised batch, when the data options turn them on."""
    opts = data.pipeline.options
    if not (opts.re_prob or opts.mixup or opts.cutmix):
        return None
    from ltcompress.data.transforms import BatchAugment

    return BatchAugment(opts, data.num_classes, device)


def train(
    model: nn.Module,
    method: Method,
    data: LTData,
    recipe: TrainConfig,
    device: torch.device,
    *,
    stage: str,
    seed: int,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume: Mapping[str, Any] | None = None,
    options: LoopOptions = LoopOptions(),
) -> TrainResult:
    """Train `model` with `method` for `recipe.epochs`. `on_epoch(record)` logs each epoch; `checkpoint(state)`
    saves the training state after each epoch and on Ctrl-C (then KeyboardInterrupt is raised). `resume`, a
    state saved that way, continues where it stopped, to the same weights an uninterrupted run reaches. With
    an EMA in the recipe, `model` ends holding the EMA weights (what gets exported)."""
    if method.uses_teacher and teacher is None:
        raise ValueError(f"{type(method).__name__} needs a teacher")
    loop = Loop(method, data, recipe, device, stage, seed, teacher, options)
    state = build_state(model, method, recipe, device, loop.steps, seed, options.precision, options.compile)
    if resume is not None:
        state.restore(resume, stage, loop.steps)
    loop.first_epoch = state.epoch
    loop.checkpointed = resume is not None and checkpoint is not None
    start = time.perf_counter()
    _run_epochs(loop, state, on_epoch, checkpoint)
    if state.ema is not None:
        model.load_state_dict(state.ema.module.state_dict())
    model.eval()
    return TrainResult(state.history, time.perf_counter() - start)


def _run_epochs(
    loop: Loop,
    state: TrainState,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    checkpoint: Callable[[dict[str, Any]], None] | None,
) -> None:
    """The remaining epochs, each logged and checkpointed, under one progress bar; Ctrl-C checkpoints the step
    it stopped at and raises KeyboardInterrupt."""
    recipe, stage = loop.recipe, loop.stage
    bar = tqdm(
        total=recipe.epochs * loop.steps,
        initial=state.epoch * loop.steps + state.step,
        desc=stage,
        unit="step",
        dynamic_ncols=True,
        disable=None if loop.options.progress else True,
        leave=False,
    )
    stop = StopRequest()
    try:
        with stop.installed():
            while state.epoch < recipe.epochs:
                record = loop.epoch(state, stop, bar, checkpoint)
                state.history.append(record)
                log.info(
                    "%s epoch %d/%d  loss %.4f  train acc %.3f  %.0f img/s",
                    stage,
                    record["epoch"],
                    recipe.epochs,
                    record["loss"],
                    record["train_acc"],
                    record["images_per_s"],
                )
                if on_epoch is not None:
                    on_epoch(record)
                state.epoch, state.step, state.sums = state.epoch + 1, 0, (0.0, 0, 0)
                _save(state, stage, checkpoint)
                loop.checkpointed = checkpoint is not None
    finally:
        bar.close()


def save_weights(model: nn.Module, path: Path) -> None:
    """Weights as safetensors (loadable without unpickling), written atomically."""
    atomic_save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, path)
