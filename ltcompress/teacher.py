"""Stage 2: a frozen teacher for the dataset's classes, with its provenance.

Sources: a local weights file (safetensors, or torch files loaded with ``weights_only=True``), or training here
on the long-tailed data with the method's teacher loss, from scratch (recipe teacher.train) or fine-tuned from
pretrained weights or a weights file (recipe teacher.finetune). Trained teachers are cached by a hash of the resolved
teacher-stage config (including the recipe that ran) and the data fingerprint, so the next run reuses them.
With teacher.rebalance, the trained teacher's classifier is then re-balanced (rebalance.py): the teacher before
it keeps its own entry, and the re-balanced one is cached under a key of its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ltcompress import checkpoint, dist, models, rebalance
from ltcompress.config import CompressConfig, TrainConfig, training_recipe
from ltcompress.data import LTData
from ltcompress.loop import LoopOptions, freeze, save_weights, train, used_batch
from ltcompress.errors import UsageError
from ltcompress.logit_cache import augmentation
from ltcompress.methods import METHODS
from ltcompress.methods.base import MethodContext
from ltcompress.plan import TeacherPlan
from ltcompress.role import Leader, Role
from ltcompress.rundir import RunDir, atomic_torch_save, cache_root, entry_lock, link_or_copy, sha256_file, write_json

log = logging.getLogger("ltcompress")
CACHE_FORMAT = 1


@dataclass
class Teacher:
    module: nn.Module
    provenance: dict[str, Any]


# ---------------------------------------------------------------- weights from a file
def load_weights_file(arch: str, path: Path, num_classes: int, in_chans: int = 3) -> nn.Module:
    """A finished teacher for this dataset; exit 2 for a file made for another class count or architecture."""
    state = models.read_state_dict(path, "--teacher-weights")
    model = models.create(arch, num_classes, in_chans)
    for key in sorted(models.head_keys(model)):
        if key in state and key.endswith("weight") and state[key].shape[0] != num_classes:
            raise UsageError(
                f"--teacher-weights {path} is for {state[key].shape[0]} classes but the dataset has "
                f"{num_classes}; pass weights trained on this dataset or leave the option out to "
                f"train the teacher here"
            )
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        example = (missing or unexpected or shapes)[0]
        raise UsageError(
            f"--teacher-weights {path} does not fit {arch}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(shapes)} mis-shaped tensors (e.g. {example!r}); check --teacher"
        )
    model.load_state_dict(state)
    return model


# ---------------------------------------------------------------- trained here, cached
def recipe_for(cfg: CompressConfig, init: str) -> tuple[str, TrainConfig]:
    """A teacher starting from pretrained weights (or a weights file) is fine-tuned with its own recipe."""
    return training_recipe(cfg.teacher, init)


def cache_key(cfg: CompressConfig, arch: str, init: str, loss: str, data: LTData, init_sha256: str = "") -> str:
    """Hash of everything the trained teacher depends on, including which recipe ran and what it started from."""
    recipe_name, train_cfg = recipe_for(cfg, init)
    # options left off (None) stay out of the key, so keys from before an option existed stay valid
    recipe = {k: v for k, v in dataclasses.asdict(train_cfg).items() if v is not None}
    spec = {
        "format": CACHE_FORMAT,
        "arch": arch,
        "init": init,
        "loss": loss,
        "recipe": recipe,
        "input_size": cfg.data.size,
        "input": dataclasses.asdict(data.spec),  # geometry, crop and normalisation: what the teacher sees
        "augmentation": augmentation(data),
        "sampler": recipe.pop("sampler"),
        "seed": cfg.teacher_seed,
        "data": data.fingerprint,
    }
    if recipe_name != "scratch":
        spec["recipe_name"] = recipe_name
    if init_sha256:
        spec["init_sha256"] = init_sha256
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _build_untrained(p: TeacherPlan, cfg: CompressConfig, data: LTData) -> tuple[nn.Module, dict[str, Any]]:
    """The model to train and how its init really happened (online auto may fall back to scratch). A start
    from other weights whose normalisation differs from the data's is wrapped in Renormalize."""
    request = "scratch" if p.init == "scratch" else cfg.teacher.init
    model, info = models.build(p.arch, data.num_classes, data.spec.channels, request, role="teacher")
    if info["init"] == "scratch":
        return model, info
    pretrained_cfg = models.timm_api(model).pretrained_cfg
    mean, std = pretrained_cfg.get("mean"), pretrained_cfg.get("std")
    if mean and std and (tuple(mean) != tuple(data.spec.mean) or tuple(std) != tuple(data.spec.std)):
        model = models.Renormalize(model, data.spec.mean, data.spec.std, mean, std)
    return model, info


def plan(
    cfg: CompressConfig, data: LTData, teacher_loss: str, params: rebalance.TauNorm | rebalance.CRT | None = None
) -> TeacherPlan:
    """Where the teacher comes from; `params`, the re-balancing after its training (resolve_names checked it)."""
    arch = models.resolve_name(cfg.teacher.arch)
    if cfg.teacher.weights:
        path = Path(cfg.teacher.weights).expanduser()
        model = load_weights_file(arch, path, data.num_classes, data.spec.channels)
        provenance = {
            "arch": arch,
            "source": "file",
            "path": str(path.resolve()),
            "weights_sha256": sha256_file(path),
            "trained_here": False,
        }
        given = params if cfg.teacher.rebalance_given else None  # the user's teacher stays as it is, unless asked
        return TeacherPlan(arch, teacher_loss, loaded=model, provenance=provenance, rebalance=given)
    init, reason = models.resolve_init(cfg.teacher.init, arch, "teacher")
    start_sha = sha256_file(Path(cfg.teacher.init).expanduser()) if init == "file" else ""
    base = cache_key(cfg, arch, init, teacher_loss, data, start_sha)
    return TeacherPlan(arch, teacher_loss, init, reason, rebalanced_key(base, params), rebalance=params, base_key=base)


def rebalanced_key(base: str, params: rebalance.TauNorm | rebalance.CRT | None) -> str:
    """The cache key of a teacher re-balanced after training: its base key and the re-balancing (the base key
    itself without one, so keys from before re-balancing existed stay valid)."""
    if params is None:
        return base
    spec = {"base": base, "rebalance": rebalance.describe(params)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def obtain(p: TeacherPlan, cfg: CompressConfig, data: LTData, device: torch.device, role: Role) -> Teacher:
    """The teacher for this run; training here continues from the run's own checkpoint when resuming.

    Under torchrun every rank calls this: the leader decides between cache and training and sends the cached
    weights, the followers train alongside it or receive them."""
    run = role.run if isinstance(role, Leader) else None
    if p.loaded is not None:
        return _given(p, cfg, data, device, run)
    log.info("teacher init: %s (%s, --teacher-init %s)", p.init, p.reason, cfg.teacher.init)
    model, meta, source, p = _trained(p, cfg, data, device, role)
    if run is None:
        return Teacher(freeze(model), {**meta, "source": source})
    entry = _entry(cfg, p.key)
    with entry_lock(entry, shared=True):
        link_or_copy(entry / "teacher.safetensors", run.file("teacher.safetensors"))
    provenance = {
        **meta,
        "source": source,
        "trained_here": True,
        "weights_sha256": sha256_file(run.file("teacher.safetensors")),
        "cache_path": str(entry),
    }
    write_json(run.file("teacher.json"), provenance)
    return Teacher(freeze(model), provenance)


def _given(p: TeacherPlan, cfg: CompressConfig, data: LTData, device: torch.device, run: RunDir | None) -> Teacher:
    """The user's own teacher, as it is; re-balanced only on request (teacher.rebalance_given), and then kept in
    the run as teacher.safetensors, since it is no longer the file's."""
    assert p.loaded is not None
    provenance = dict(p.provenance)
    if p.rebalance is not None:
        recipe = recipe_for(cfg, "file")[1]
        provenance["rebalance"] = rebalance.apply(
            p.loaded, p.rebalance, data, recipe.batch_size, device, cfg.teacher_seed
        )
    if run is not None:
        log.info("teacher: %s from %s (sha256 %s)", p.arch, provenance["path"], provenance["weights_sha256"][:12])
        if p.rebalance is not None:
            save_weights(p.loaded, run.file("teacher.safetensors"))
            provenance["rebalanced_sha256"] = sha256_file(run.file("teacher.safetensors"))
        write_json(run.file("teacher.json"), provenance)
    return Teacher(freeze(p.loaded), provenance)


def _trained(
    p: TeacherPlan, cfg: CompressConfig, data: LTData, device: torch.device, role: Role
) -> tuple[nn.Module, dict[str, Any], str, TeacherPlan]:
    """A teacher trained here: from the cache, or trained (and re-balanced) and stored there. Returns the model,
    its metadata, where it came from (cache | trained) and the plan as it turned out (an online auto init that
    fell back to scratch has the scratch recipe and key)."""
    leads = isinstance(role, Leader)
    hit = _from_cache(p, cfg, data, leads=leads)
    if hit is None and p.rebalance is not None:
        return _rebalanced(p, cfg, data, device, role)
    if hit is None:
        torch.manual_seed(cfg.teacher_seed)  # before building: the head's initial weights depend on it
        model, info = _build_untrained(p, cfg, data)
        info = dist.broadcast_object(info)  # rank 0's start decides (DDP syncs the weights from it)
        if info["init"] != p.init:  # online auto fell back to scratch: the scratch recipe, the scratch key
            p = dataclasses.replace(
                p, init=info["init"], reason=info["reason"], key=cache_key(cfg, p.arch, info["init"], p.loss, data)
            )
            hit = _from_cache(p, cfg, data, leads=leads)
    if hit is not None:
        return hit[0], hit[1], "cache", p
    return model, _train_here(p, model, info, cfg, data, device, role), "trained", p


def _rebalanced(
    p: TeacherPlan, cfg: CompressConfig, data: LTData, device: torch.device, role: Role
) -> tuple[nn.Module, dict[str, Any], str, TeacherPlan]:
    """The teacher before re-balancing (cached under its own key, which runs without a re-balancing share),
    its classifier re-balanced, stored under the re-balanced key."""
    params = p.rebalance
    assert params is not None
    model, meta, source, base = _trained(
        dataclasses.replace(p, key=p.base_key, rebalance=None), cfg, data, device, role
    )
    p = dataclasses.replace(
        p, init=base.init, reason=base.reason, base_key=base.key, key=rebalanced_key(base.key, params)
    )
    batch = recipe_for(cfg, base.init)[1].batch_size
    record = rebalance.apply(model, params, data, batch, device, cfg.teacher_seed)
    meta = {k: v for k, v in meta.items() if k != "weights_sha256"}
    meta.update(cache_key=p.key, base_cache_key=base.key, base_source=source, rebalance=record)
    if isinstance(role, Leader):
        meta["weights_sha256"] = _store(_entry(cfg, p.key), model, meta)
    return model, meta, source if source == "trained" else "cache, re-balanced here", p


def _entry(cfg: CompressConfig, key: str) -> Path:
    return cache_root(cfg.run.cache_dir) / "teachers" / key[:24]


def cached(cfg: CompressConfig, key: str) -> bool:
    """Whether a trained teacher with this key is in the cache (the cost estimate skips its training)."""
    entry = _entry(cfg, key)
    return (entry / "teacher.json").is_file() and (entry / "teacher.safetensors").is_file()


def _from_cache(
    p: TeacherPlan, cfg: CompressConfig, data: LTData, leads: bool
) -> tuple[nn.Module, dict[str, Any]] | None:
    """A teacher trained earlier with the same key: the leader reads it and sends it to the others."""
    meta, state = _read_entry(_entry(cfg, p.key)) if leads else (None, None)
    meta = dist.broadcast_object(meta)
    if meta is None:
        return None
    meta = {"recipe_name": recipe_for(cfg, p.init)[0], **meta}  # entries from before recipes had names
    model = _wrap_like(models.create(p.arch, data.num_classes, data.spec.channels), meta, data)
    if state is not None:
        model.load_state_dict(state)
    dist.broadcast_module(model)
    log.info(
        "teacher: reusing cached %s (key %s, %s recipe, %s)",
        p.arch,
        p.key[:12],
        meta.get("recipe_name", "scratch"),
        _entry(cfg, p.key),
    )
    return model, meta


def _read_entry(entry: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """A complete cache entry's metadata and weights, or (None, None). A damaged entry (metadata that is not
    JSON, weights whose sha256 differs from the recorded one, weights safetensors cannot read) is reported with
    its path and removed, so this run trains the teacher again and rebuilds it instead of failing, as every
    later run with the same settings would."""
    weights, meta_path = entry / "teacher.safetensors", entry / "teacher.json"
    if not (meta_path.is_file() and weights.is_file()):
        return None, None
    with entry_lock(entry, shared=True):
        try:
            meta = json.loads(meta_path.read_bytes().decode("utf-8"))
            recorded = meta.get("weights_sha256")
            if recorded is not None and sha256_file(weights) != recorded:
                raise ValueError(f"{weights.name} does not match its recorded sha256 {recorded[:12]}")
            return meta, load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 - JSON, checksum, SafetensorError and I/O all mean "damaged"
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    log.warning(
        "teacher cache entry %s is damaged (%s); training the teacher again and rebuilding the entry", entry, reason
    )
    with entry_lock(entry):
        for name in ("teacher.json", "teacher.safetensors"):  # the metadata first: it marks an entry complete
            (entry / name).unlink(missing_ok=True)
    return None, None


def _train_here(
    p: TeacherPlan,
    model: nn.Module,
    info: dict[str, Any],
    cfg: CompressConfig,
    data: LTData,
    device: torch.device,
    role: Role,
) -> dict[str, Any]:
    """Train with the recipe the init calls for (finetune from pretrained / a file, else train) and store the
    result in the cache; returns the metadata that records which recipe ran."""
    recipe_name, recipe = recipe_for(cfg, info["init"])
    method_cls = METHODS.get(p.loss)
    method = method_cls(method_cls.make_params({}), MethodContext.for_run(data.class_counts, recipe.epochs, cfg.data))
    log.info(
        "teacher: training %s here (%s init, loss %s, %s recipe, %d epochs, lr %g, cache key %s)",
        p.arch,
        info["init"],
        p.loss,
        recipe_name,
        recipe.epochs,
        recipe.lr,
        p.key[:12],
    )
    run = role.run if isinstance(role, Leader) else None
    path = run.file("checkpoints") / "teacher-last.pt" if run else None
    resume = dist.broadcast_object(checkpoint.load(path) if path and role.resume else None)
    result = train(
        model,
        method,
        data,
        recipe,
        device,
        stage="teacher",
        seed=cfg.teacher_seed,
        on_epoch=run.log_metrics if run else None,
        checkpoint=(lambda state: atomic_torch_save(path, {**state, "config": cfg.to_dict()})) if path else None,
        resume=resume,
        options=LoopOptions(cfg.run.precision, cfg.run.compile, progress=role.progress),
    )
    meta = {
        "arch": p.arch,
        "init": info["init"],
        "init_reason": info["reason"],
        "init_source": info,
        "loss": p.loss,
        "recipe_name": recipe_name,
        "recipe": dataclasses.asdict(recipe),
        "batch_size_used": used_batch(recipe.batch_size, len(data.train)),
        "data_fingerprint": data.fingerprint,
        "cache_key": p.key,
        "train_seconds": round(result.seconds, 1),
        "renormalize": isinstance(model, models.Renormalize),
    }
    if run is not None:
        meta["weights_sha256"] = _store(_entry(cfg, p.key), model, meta)
    return meta


def _store(entry: Path, model: nn.Module, meta: dict[str, Any]) -> str:
    """The trained teacher into its cache entry, one writer at a time (readers wait for a complete entry);
    returns the weights' sha256, which every reuse checks."""
    with entry_lock(entry):
        save_weights(model, entry / "teacher.safetensors")
        sha = sha256_file(entry / "teacher.safetensors")
        write_json(entry / "teacher.json", {**meta, "weights_sha256": sha})  # written last: marks it complete
    return sha


def _wrap_like(model: nn.Module, meta: dict[str, Any], data: LTData) -> nn.Module:
    """Rebuild the Renormalize wrapper a cached pretrained teacher was trained inside."""
    if not meta.get("renormalize"):
        return model
    cfg = models.timm_api(model).pretrained_cfg
    return models.Renormalize(model, data.spec.mean, data.spec.std, cfg["mean"], cfg["std"])
