"""What one training run carries from step to step and across a resume (the module that returns the loss,
optimizer, one-cycle schedule, loss scaler, EMA, augmentation generator, where the loop stands) and the precision
it runs at. The loop itself is distill.py."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from ltcompress import dist
from ltcompress.checkpoint import rng_state, set_rng_state
from ltcompress.config import TrainConfig
from ltcompress.errors import UsageError
from ltcompress.methods.base import Method, StepInputs
from ltcompress.models import features_and_logits

if TYPE_CHECKING:
    from timm.utils.model_ema import ModelEmaV3

log = logging.getLogger("ltcompress")
RANK_SEED_STRIDE = 1_000_003  # rank r augments with seed + r * stride; rank 0 of 1 is the plain seed


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: auto is bf16 on GPUs that have it, fp16 (with a GradScaler) on those that do not,
    and full fp32 on the CPU. None: no autocast."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("run.precision fp16 needs a CUDA GPU; use auto, bf16 or fp32 on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class TrainModule(nn.Module):
    """The student and the method (with any parameters of its own) in one module whose forward returns the
    loss, so a single DistributedDataParallel wrapper sees every trainable parameter. A mixed batch (Mixup,
    CutMix) is scored against both label sets: lam * loss(y) + (1 - lam) * loss(y_mix)."""

    def __init__(self, student: nn.Module, method: Method) -> None:
        super().__init__()
        self.student = student
        self.method = method

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epoch: float,
        teacher_logits: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        y_mix: torch.Tensor | None = None,
        lam: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method.needs_features:
            features, logits = features_and_logits(self.student, x)
        else:
            features, logits = None, self.student(x)
        loss = self.method(StepInputs(logits, y, epoch, teacher_logits, features, teacher_features))
        if y_mix is not None:
            other = self.method(StepInputs(logits, y_mix, epoch, teacher_logits, features, teacher_features))
            loss = lam * loss + (1.0 - lam) * other
        return loss, logits


@dataclass
class TrainState:
    """Everything a resumed run needs besides the data: weights, optimizer, schedule, loss scaler, EMA, the
    augmentation generator, and where in which epoch the loop stands (with that epoch's running sums)."""

    module: TrainModule
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None
    generator: torch.Generator
    history: list[dict[str, Any]]
    epoch: int = 0
    step: int = 0
    sums: tuple[float, int, int] = (0.0, 0, 0)

    def checkpoint(self, stage: str) -> dict[str, Any]:
        ranks = dist.gather_objects(
            {
                "generator": self.generator.get_state(),
                "rng": rng_state(),
                "sums": [float(self.sums[0]), int(self.sums[1]), int(self.sums[2])],
            }
        )
        state = {
            "stage": stage,
            "model": self.module.student.state_dict(),
            "method": self.module.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": list(self.history),
            "ranks": ranks,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def restore(self, saved: Mapping[str, Any], stage: str, steps: int) -> None:
        if len(saved["ranks"]) != dist.world():
            raise UsageError(
                f"the checkpoint was written by {len(saved['ranks'])} process(es); resume with as many "
                f"(torchrun --nproc_per_node)"
            )
        own = saved["ranks"][dist.rank()]
        self.module.student.load_state_dict(saved["model"])
        self.module.method.load_state_dict(saved["method"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and "ema" in saved:
            self.ema.load_state_dict(saved["ema"])
        self.generator.set_state(own["generator"])
        set_rng_state(own["rng"])
        self.history, self.epoch, self.step = list(saved["history"]), saved["epoch"], saved["step"]
        self.sums = tuple(own["sums"])
        log.info("%s: resuming at epoch %d, step %d of %d", stage, self.epoch + 1, self.step, steps)


def build_state(
    model: nn.Module,
    method: Method,
    recipe: TrainConfig,
    device: torch.device,
    steps: int,
    seed: int,
    precision: str,
    compile: bool,
) -> TrainState:
    """SGD + one-cycle (warm-up share `recipe.warmup`) over student and method parameters, one DDP wrapper,
    a GradScaler for fp16, and an EMA of the student when the recipe asks for one."""
    module = TrainModule(model, method).to(device).to(memory_format=torch.channels_last).train()
    if compile:
        module.student.compile()
    wrapped: nn.Module = module
    if dist.world() > 1:  # one DDP wrapper over student + method parameters; unused ones only if a method has its own
        wrapped = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=any(True for _ in method.parameters()),
        )
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * steps, pct_start=recipe.warmup, cycle_momentum=False
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, precision) is torch.float16)
    ema = None
    if recipe.ema:
        from timm.utils.model_ema import ModelEmaV3

        # timm's warm-up (decay 1 - (1 + step) ** -2/3, capped at ema_decay): without it a run of a few thousand
        # steps would export weights that still hold most of the random initialisation (0.9998 ** 1560 = 0.73)
        ema = ModelEmaV3(model, decay=recipe.ema_decay, use_warmup=True)
    generator = torch.Generator().manual_seed(seed + RANK_SEED_STRIDE * dist.rank())
    return TrainState(module, wrapped, optimizer, scheduler, scaler, ema, generator, [])
