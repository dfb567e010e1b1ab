"""Stage 2: a frozen teacher for the dataset's classes, with its provenance.

Sources: a local weights file (safetensors, or torch files loaded with ``weights_only=True``), or training here
on the long-tailed data with the method's teacher loss. Trained teachers are cached by a hash of the resolved
teacher-stage config and the data fingerprint, so the next run with the same settings reuses them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ltcompress import checkpoint, dist, models
from ltcompress.config import CompressConfig
from ltcompress.data import LTData
from ltcompress.distill import freeze, save_weights, train
from ltcompress.errors import UsageError
from ltcompress.methods import METHODS
from ltcompress.methods.base import Method, MethodContext
from ltcompress.rundir import RunDir, atomic_torch_save, link_or_copy, sha256_file, write_json

log = logging.getLogger("ltcompress")
CACHE_FORMAT = 1


@dataclass
class Teacher:
    module: nn.Module
    provenance: dict[str, Any]


def cache_root(configured: str | None) -> Path:
    """``run.cache_dir``, else ``$LTCOMPRESS_CACHE``, else ``$XDG_CACHE_HOME/ltcompress`` (~/.cache/ltcompress)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("LTCOMPRESS_CACHE"):
        return Path(os.environ["LTCOMPRESS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "ltcompress"


# ---------------------------------------------------------------- weights from a file
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UsageError(f"--teacher-weights {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise UsageError(f"--teacher-weights {path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--teacher-weights {path} cannot be loaded safely (weights_only=True): {reason}. "
                         f"Save a plain state_dict (torch.save(model.state_dict(), ...)) or .safetensors") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"--teacher-weights {path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights_file(arch: str, path: Path, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Exit 2 for a file made for another class count or another architecture."""
    state = _read_state_dict(path)
    model = models.create(arch, num_classes, in_chans)
    head = model.get_classifier()
    head_keys = [n for n, p in model.named_parameters() if any(p is q for q in head.parameters())]
    for key in head_keys:
        if key in state and key.endswith("weight") and state[key].shape[0] != num_classes:
            raise UsageError(f"--teacher-weights {path} is for {state[key].shape[0]} classes but the dataset has "
                             f"{num_classes}; pass weights trained on this dataset or leave the option out to "
                             f"train the teacher here")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        example = (missing or unexpected or shapes)[0]
        raise UsageError(f"--teacher-weights {path} does not fit {arch}: {len(missing)} missing, {len(unexpected)} "
                         f"unexpected, {len(shapes)} mis-shaped tensors (e.g. {example!r}); check --teacher")
    model.load_state_dict(state)
    return model


# ---------------------------------------------------------------- trained here, cached
def resolve_init(requested: str, arch: str) -> tuple[str, str]:
    """auto: pretrained when the hub answers (checked in well under a second), else scratch; logged."""
    if requested == "scratch":
        return "scratch", "requested"
    reachable = models.hub_reachable()
    if requested == "pretrained" and not reachable:
        raise UsageError(f"--teacher-init pretrained needs the Hugging Face hub, which is offline or unreachable "
                         f"(HF_HUB_OFFLINE or no network). Pass --teacher-weights FILE, or --teacher-init scratch to "
                         f"train {arch} here from scratch")
    if reachable:
        return "pretrained", "hub reachable"
    return "scratch", "hub offline or unreachable"


def resolve_loss(requested: str, method_cls: type) -> str:
    """The teacher's training loss: the method's declared choice, or a teacher-free method named by the user
    (a balanced teacher such as bsce gives balanced soft labels to any distillation method)."""
    if requested == "auto":
        return method_cls.teacher_method
    chosen = METHODS.get(requested)
    if chosen.uses_teacher:
        raise UsageError(f"teacher.loss {requested!r} itself needs a teacher; use auto or a method without one "
                         f"(e.g. ce, bsce, la)")
    if chosen.adapt_student is not Method.adapt_student:  # ldam_drw: its cosine classifier is student-only
        raise UsageError(f"teacher.loss {requested!r} changes the model's classifier, which the teacher stage does "
                         f"not do; use ce, bsce or la for the teacher")
    return requested


def cache_key(cfg: CompressConfig, arch: str, init: str, loss: str, data: LTData) -> str:
    # options left off (None) stay out of the key, so keys from before an option existed stay valid
    recipe = {k: v for k, v in dataclasses.asdict(cfg.teacher.train).items() if v is not None}
    spec = {
        "format": CACHE_FORMAT, "arch": arch, "init": init, "loss": loss, "recipe": recipe,
        "input_size": cfg.data.input_size, "sampler": recipe.pop("sampler"), "seed": cfg.teacher_seed,
        "data": data.fingerprint,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _build_untrained(arch: str, init: str, data: LTData) -> tuple[nn.Module, str]:
    """Returns the model to train and how init really happened (auto may fall back to scratch)."""
    if init == "pretrained":
        try:
            model = models.create(arch, data.num_classes, data.spec.channels, pretrained=True)
        except Exception as exc:  # no weights for this arch, hub error mid-way, ...
            raise UsageError(f"could not load pretrained weights for {arch}: {str(exc).splitlines()[0]}. "
                             f"Use --teacher-init scratch or --teacher-weights FILE") from None
        mean, std = model.pretrained_cfg.get("mean"), model.pretrained_cfg.get("std")
        if mean and std and (tuple(mean) != data.spec.mean or tuple(std) != data.spec.std):
            model = models.Renormalize(model, data.spec.mean, data.spec.std, mean, std)
        return model, "pretrained"
    return models.create(arch, data.num_classes, data.spec.channels), "scratch"


@dataclass(frozen=True)
class TeacherPlan:
    """Everything decided before the run directory exists, so a bad weights file leaves nothing on disk."""

    arch: str
    loss: str
    init: str = "file"
    reason: str = ""
    key: str = ""
    loaded: nn.Module | None = None
    provenance: dict[str, Any] | None = None


def plan(cfg: CompressConfig, data: LTData, teacher_loss: str) -> TeacherPlan:
    arch = models.resolve_name(cfg.teacher.arch)
    if cfg.teacher.weights:
        path = Path(cfg.teacher.weights).expanduser()
        model = load_weights_file(arch, path, data.num_classes, data.spec.channels)
        provenance = {"arch": arch, "source": "file", "path": str(path.resolve()),
                      "weights_sha256": sha256_file(path), "trained_here": False}
        return TeacherPlan(arch, teacher_loss, loaded=model, provenance=provenance)
    init, reason = resolve_init(cfg.teacher.init, arch)
    return TeacherPlan(arch, teacher_loss, init, reason, cache_key(cfg, arch, init, teacher_loss, data))


def obtain(p: TeacherPlan, cfg: CompressConfig, data: LTData, device: torch.device, run: RunDir | None,
           progress: bool, resume_from_checkpoint: bool = False) -> Teacher:
    """The teacher for this run; training here continues from the run's own checkpoint when resuming.

    Under torchrun every rank calls this: rank 0 (the one with a `run`) decides between cache and training and
    sends the cached weights, the other ranks (`run` None) train alongside it or receive them."""
    if p.loaded is not None:
        if run is not None:
            log.info("teacher: %s from %s (sha256 %s)", p.arch, p.provenance["path"],
                     p.provenance["weights_sha256"][:12])
            write_json(run.file("teacher.json"), p.provenance)
        return Teacher(freeze(p.loaded), p.provenance)
    log.info("teacher init: %s (%s, --teacher-init %s)", p.init, p.reason, cfg.teacher.init)
    entry = cache_root(cfg.run.cache_dir) / "teachers" / p.key[:24]
    weights, meta_path = entry / "teacher.safetensors", entry / "teacher.json"
    meta = dist.broadcast_object(json.loads(meta_path.read_text()) if run and meta_path.is_file() and
                                 weights.is_file() else None)
    if meta is not None:
        model = _wrap_like(models.create(p.arch, data.num_classes, data.spec.channels), meta, data)
        if run is not None:
            model.load_state_dict(load_file(str(weights)))
        dist.broadcast_module(model)
        log.info("teacher: reusing cached %s (key %s, %s)", p.arch, p.key[:12], entry)
        source = "cache"
    else:
        torch.manual_seed(cfg.teacher_seed)  # before building: the head's initial weights depend on it
        model, init = _build_untrained(p.arch, p.init, data)
        method_cls = METHODS.get(p.loss)
        ctx = MethodContext(torch.as_tensor(data.class_counts, dtype=torch.float32), cfg.teacher.train.epochs)
        method = method_cls(method_cls.make_params({}), ctx)
        log.info("teacher: training %s here (%s init, loss %s, %d epochs, cache key %s)", p.arch, init, p.loss,
                 cfg.teacher.train.epochs, p.key[:12])
        path = run.file("checkpoints") / "teacher-last.pt" if run else None
        resume = dist.broadcast_object(checkpoint.load(path) if path and resume_from_checkpoint else None)
        result = train(model, method, data, cfg.teacher.train, device, stage="teacher", seed=cfg.teacher_seed,
                       on_epoch=run.log_metrics if run else None,
                       checkpoint=(lambda state: atomic_torch_save(path, {**state, "config": cfg.to_dict()}))
                       if path else None,
                       resume=resume, progress=progress)
        meta = {"arch": p.arch, "init": init, "init_reason": p.reason, "loss": p.loss,
                "recipe": dataclasses.asdict(cfg.teacher.train), "data_fingerprint": data.fingerprint,
                "cache_key": p.key, "train_seconds": round(result.seconds, 1),
                "renormalize": isinstance(model, models.Renormalize)}
        if run is not None:
            save_weights(model, weights)
            write_json(meta_path, meta)  # written last: marks the cache entry complete
        source = "trained"
    if run is None:
        return Teacher(freeze(model), {**meta, "source": source})
    link_or_copy(weights, run.file("teacher.safetensors"))
    provenance = {**meta, "source": source, "trained_here": True, "weights_sha256": sha256_file(weights),
                  "cache_path": str(entry)}
    write_json(run.file("teacher.json"), provenance)
    return Teacher(freeze(model), provenance)


def _wrap_like(model: nn.Module, meta: dict[str, Any], data: LTData) -> nn.Module:
    """Rebuild the Renormalize wrapper a cached pretrained teacher was trained inside."""
    if not meta.get("renormalize"):
        return model
    cfg = model.pretrained_cfg
    return models.Renormalize(model, data.spec.mean, data.spec.std, cfg["mean"], cfg["std"])
