"""Exact teacher-logit cache (`--teacher-cache`): the teacher's logits at every position of every epoch's sample
stream, one safetensors file per epoch, so a later run with the same teacher, data, transforms, sampler, seed and
batch layout skips the teacher's forward pass and still trains the bit-identical student.

It is exact because a batch's augmentation depends only on the seed and the batch's position in the stream: the
loop draws it from the same generator whether the teacher runs or not, and the cache was filled from those very
batches. Keyed by everything the logits depend on; a file whose key or shape does not match is rebuilt, never
used. Methods that need the teacher's features (krdistill) run the teacher as usual.
"""

from __future__ import annotations

import hashlib
import json
import logging
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ltcompress.config import CompressConfig, TrainConfig
from ltcompress.data import LTData
from ltcompress.rundir import atomic_save_file, entry_lock

log = logging.getLogger("ltcompress")
FORMAT = 2  # 2: each file carries the sha256 of its data (files of format 1 have none and are not read)


@dataclass(frozen=True)
class LogitCache:
    folder: Path
    key: str

    @classmethod
    def open(cls, root: Path, spec: dict[str, Any]) -> LogitCache:
        """`spec`: teacher sha256, data fingerprint, input spec and augmentation, sampler, seed, rank layout,
        device and precision, torch version."""
        key = hashlib.sha256(json.dumps({"format": FORMAT, **spec}, sort_keys=True).encode()).hexdigest()
        return cls(root / "teacher-logits" / key[:24], key)

    def _path(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch + 1:04d}.safetensors"

    def load(self, epoch: int, rows: int) -> torch.Tensor | None:
        """The epoch's logits, or None when absent, unreadable or made for something else (then rebuilt)."""
        path = self._path(epoch)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                logits: torch.Tensor = fh.get_tensor("logits")
        except Exception as exc:
            log.warning("teacher-logit cache %s is unreadable (%s); rebuilding it", path, exc)
            return None
        if meta.get("key") != self.key or logits.shape[0] != rows:
            log.warning("teacher-logit cache %s does not match this run; rebuilding it", path)
            return None
        if meta.get("sha256") != _checksum(logits):  # damage safetensors cannot see: the bytes of the data
            log.warning("teacher-logit cache %s is damaged (checksum mismatch); rebuilding it", path)
            return None
        return logits

    def save(self, epoch: int, logits: torch.Tensor) -> None:
        """Written under a unique temporary name and renamed, under the folder's lock: two runs filling the
        same entry never share a file, and each file carries its key and the checksum of its data."""
        logits = logits.detach().cpu().contiguous()
        with entry_lock(self.folder):
            atomic_save_file({"logits": logits}, self._path(epoch), {"key": self.key, "sha256": _checksum(logits)})


def _checksum(logits: torch.Tensor) -> str:
    return hashlib.sha256(logits.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def for_run(
    cfg: CompressConfig, recipe: TrainConfig, data: LTData, device: torch.device, teacher_sha: str
) -> LogitCache | None:
    """The teacher-logit cache for the exact sample stream of the student's `recipe`, or None when not asked for."""
    if not cfg.run.teacher_cache:
        return None
    from ltcompress import dist
    from ltcompress.rundir import cache_root

    spec = {
        "teacher_sha256": teacher_sha,
        "data": data.fingerprint,
        "input": dataclasses.asdict(data.spec),
        "augmentation": augmentation(data),
        "sampler": recipe.sampler,
        "seed": cfg.run.seed,
        "batch_size": recipe.batch_size,
        "rank": dist.rank(),
        "world": dist.world(),
        "device": device.type,
        "torch": torch.__version__,
    }
    return LogitCache.open(cache_root(cfg.run.cache_dir), spec)


def augmentation(data: LTData) -> str:
    """What the training augmentation is, as the teacher-logit cache key records it."""
    from ltcompress.data.batches import AUGMENTATION

    opts = data.pipeline.options
    if data.pipeline.augment == "crop_flip" and not (opts.re_prob or opts.mixup or opts.cutmix):
        return AUGMENTATION
    keys = ("auto_augment", "color_jitter", "re_prob", "mixup", "cutmix", "mix_prob", "crop_scale")
    return f"{data.pipeline.augment}, per image seeded by (seed, epoch, rank, position); " + ", ".join(
        f"{k}={getattr(opts, k)}" for k in keys
    )
