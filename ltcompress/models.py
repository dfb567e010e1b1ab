"""timm model creation, the short aliases users type, where a model's training starts (pretrained weights
through timm / huggingface_hub cache semantics, a local file, or scratch), and the re-normalisation wrapper."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import torch
from torch import nn

from ltcompress import hub
from ltcompress.errors import UsageError
from ltcompress.registry import Registry, closest

log = logging.getLogger("ltcompress")

# Short names users type -> the timm variant they get (documented in the README).
ALIASES: Registry[str] = Registry("model alias")
ALIASES.register("mobilenetv3", "mobilenetv3_small_100", summary="MobileNetV3-Small, width 1.0")
ALIASES.register("mobilenetv3_large", "mobilenetv3_large_100", summary="MobileNetV3-Large, width 1.0")
ALIASES.register("resnet", "resnet50", summary="ResNet-50")

# the files timm's hub loader reads for a repo without hf_hub_filename, in its order (safetensors first)
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_name(name: str) -> str:
    """An alias or a timm architecture name -> the timm name; exit 2 naming the closest valid names."""
    if name in ALIASES:
        return ALIASES.get(name)
    import timm

    if timm.is_model(name):
        return name
    candidates = ALIASES.names() + timm.list_models()
    hits = closest(name, candidates, n=5)
    hint = f" Did you mean: {', '.join(hits)}?" if hits else ""
    raise UsageError(f"unknown model {name!r}.{hint} Any timm architecture name works (timm.list_models()).")


def create(name: str, num_classes: int, in_chans: int = 3, pretrained: bool = False) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)


def timm_api(model: nn.Module) -> Any:
    """The model as timm's API (forward_features, forward_head, get_classifier, pretrained_cfg), which
    nn.Module's type does not declare."""
    return model


def classifier(model: nn.Module) -> nn.Module:
    """The classifier timm would replace for another class count."""
    head: nn.Module = timm_api(model).get_classifier()
    return head


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate (pre-logits) features and logits in one pass, through timm's forward_features /
    forward_head(pre_logits=True) / classifier; models are never edited for this."""
    pre = timm_api(model).forward_head(timm_api(model).forward_features(x), pre_logits=True)
    return pre, classifier(model)(pre)


# ---------------------------------------------------------------- where pretrained weights come from
def _pretrained_cfg(arch: str) -> Any | None:
    """timm's default pretrained_cfg for the arch (or arch.tag), None when timm knows no weights for it."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return None
    return cfg


def _hub_repo(cfg: Any) -> tuple[str, str | None, tuple[str, ...]]:
    """(repo id, revision, candidate file names) exactly as timm's hub loader would ask for them."""
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _HUB_FILES
    if names[0].endswith("pytorch_model.bin") and len(names) == 1:
        names = (names[0].replace("pytorch_model.bin", "model.safetensors"), names[0])
    return repo, revision or None, names


def cached_weights(arch: str) -> str | None:
    """The local file timm would load the arch's pretrained weights from without the network, if any:
    the Hugging Face cache (HF_HUB_CACHE / HF_HOME) for hub weights, torch.hub's folder for URL weights."""
    cfg = _pretrained_cfg(arch)
    if cfg is None or cfg.file:
        return cfg.file if cfg is not None and Path(cfg.file).is_file() else None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, revision, names = _hub_repo(cfg)
        for name in names:
            found = try_to_load_from_cache(repo, name, revision=revision)
            if isinstance(found, str):
                return found
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
    return str(path) if path.is_file() else None


def pretrained_preprocessing(arch: str) -> dict[str, Any] | None:
    """Mean, std, crop_pct and interpolation the arch's default pretrained weights were trained with (no weights
    are created or fetched), or None when timm knows no pretrained weights for it."""
    cfg = _pretrained_cfg(resolve_name(arch))
    if cfg is None:
        return None
    from timm.data.config import resolve_data_config

    d = resolve_data_config(pretrained_cfg=cfg.to_dict())
    return {
        "mean": tuple(d["mean"]),
        "std": tuple(d["std"]),
        "crop_pct": d["crop_pct"],
        "interpolation": d["interpolation"],
    }


def pretrained_input_size(arch: str) -> int | None:
    """The square input size timm's default pretrained configuration of the arch was trained at, if any."""
    size = _default_cfg(resolve_name(arch)).get("input_size")
    return int(size[-1]) if size else None


def resolve_init(requested: str, arch: str, role: str = "teacher") -> tuple[str, str]:
    """(scratch | pretrained | file, why), decided without touching the network (milliseconds): offline
    (HF_HUB_OFFLINE) only cached weights count; online, auto tries the hub (HF_ENDPOINT) and `build` falls back."""
    if requested == "scratch":
        return "scratch", "requested"
    if requested not in ("auto", "pretrained"):
        if not Path(requested).expanduser().is_file():
            raise UsageError(
                f"--{role}-init {requested!r} must be auto, pretrained, scratch or an existing weights file"
            )
        return "file", f"weights file {Path(requested).expanduser()}"
    arch = resolve_name(arch)
    cfg = _pretrained_cfg(arch)
    if cfg is None:
        if requested == "pretrained":
            raise UsageError(
                f"--{role}-init pretrained: timm has no pretrained weights for {arch}; pass "
                f"--{role}-weights FILE, or --{role}-init scratch"
            )
        return "scratch", f"timm has no pretrained weights for {arch}"
    offline = hub.offline_reason(probe=bool(cfg.hf_hub_id))  # before the cache: no network check of cached files
    cached = cached_weights(arch)
    if cached:
        return "pretrained", f"cached: {cached}"
    where = cfg.hf_hub_id or cfg.url
    if offline:
        if requested == "pretrained":
            from huggingface_hub import constants

            raise UsageError(
                f"--{role}-init pretrained: {offline} and {where} is not in the Hugging "
                f"Face cache ({constants.HF_HUB_CACHE}); pass --{role}-weights FILE, or "
                f"--{role}-init scratch"
            )
        return "scratch", f"{offline} and {where} is not in the Hugging Face cache"
    return "pretrained", f"{where} from {hub.endpoint() if cfg.hf_hub_id else 'its URL'}"


# ---------------------------------------------------------------- weights files
def read_state_dict(path: Path, option: str) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors or a torch file loaded with weights_only=True (never unsafe unpickling);
    `option` (e.g. --teacher-weights) names the setting in errors."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise UsageError(f"{option} {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise UsageError(f"{option} {path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"{option} {path} cannot be loaded safely (weights_only=True): {reason}. "
            f"Save a plain state_dict (torch.save(model.state_dict(), ...)) or .safetensors"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{option} {path} does not hold a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier timm would replace for another class count."""
    head = {id(p) for p in classifier(model).parameters()}
    return {n for n, p in model.named_parameters() if id(p) in head}


def _from_file(arch: str, num_classes: int, in_chans: int, path: Path, option: str) -> tuple[nn.Module, dict[str, Any]]:
    """The file's backbone through timm's own loader (pretrained_cfg_overlay: input-conv adaptation, the model's
    checkpoint filter, head dropped when its class count differs); the head is kept when it fits. The tensors
    handed to timm are the ones read safely here, so what is checked is what is loaded. Exit 2 for another arch."""
    import timm

    from ltcompress.rundir import sha256_file

    state = read_state_dict(path, option)
    classifier = _default_cfg(arch).get("classifier") or ""
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    rows = [state[f"{c}.weight"].shape[0] for c in names if f"{c}.weight" in state]
    file_classes = rows[0] if rows else -1
    try:
        model = timm.create_model(
            arch,
            pretrained=True,
            num_classes=num_classes,
            in_chans=in_chans,
            pretrained_cfg_overlay={"file": str(path), "state_dict": state, "num_classes": file_classes},
        )
    except RuntimeError as exc:
        raise UsageError(f"{option} {path} does not fit {arch}: {str(exc).strip().splitlines()[0]}") from None
    timm_api(model).pretrained_cfg.pop("state_dict", None)  # recorded as the file, not held in memory
    own, heads = model.state_dict(), head_keys(model)
    missing = sorted(k for k in own if k not in state and k not in heads and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    if missing or unexpected:
        raise UsageError(
            f"{option} {path} does not fit {arch}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected tensors (e.g. {(missing or unexpected)[0]!r}); check the architecture"
        )
    kept = file_classes == num_classes
    reason = f"weights file {path}" + ("" if kept else f", new {num_classes}-class head")
    return model, {
        "init": "file",
        "reason": reason,
        "source": str(path.resolve()),
        "weights_sha256": sha256_file(path),
        "head": "file" if kept else "new",
    }


def _default_cfg(arch: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}


def _fetch_failed(exc: BaseException) -> bool:
    """True for "could not get the file" (offline, network, HTTP, not on the hub); False for a file that arrived
    but does not load (truncated, corrupt), which must never silently become a scratch run."""
    from huggingface_hub import errors

    fetch: tuple[type[BaseException], ...] = (OSError, errors.HfHubHTTPError, errors.EntryNotFoundError)
    try:
        import httpx

        fetch += (httpx.HTTPError,)
    except ImportError:  # older huggingface_hub on requests: its errors are OSErrors
        pass
    return isinstance(exc, fetch)


def _from_pretrained(
    arch: str, num_classes: int, in_chans: int, requested: str, reason: str, role: str
) -> tuple[nn.Module, dict[str, Any]]:
    """timm.create_model(pretrained=True): huggingface_hub resolves cache / HF_HUB_OFFLINE / HF_ENDPOINT. auto
    falls back to scratch (logged) only when the weights cannot be fetched; a corrupt cached file is exit 2."""
    from ltcompress.rundir import sha256_file

    cfg = _pretrained_cfg(arch)
    if cfg is None:
        raise UsageError(
            f"timm knows no pretrained weights for {arch}; pass --{role}-weights FILE, or --{role}-init scratch"
        )
    before = cached_weights(arch)
    rng = torch.random.get_rng_state()
    try:
        model = create(arch, num_classes, in_chans, pretrained=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        cached = cached_weights(arch)
        if cached and not _fetch_failed(exc):
            raise UsageError(
                f"the cached pretrained weights for {arch} cannot be loaded ({first}): {cached} is "
                f"probably truncated or corrupt; delete it to fetch it again, or pass --{role}-weights "
                f"FILE, or --{role}-init scratch"
            ) from None
        where = f"{cfg.hf_hub_id} from {hub.endpoint()}" if cfg.hf_hub_id else cfg.url
        if requested != "auto":
            raise UsageError(
                f"--{role}-init pretrained: the weights for {arch} could not be fetched ({where}: "
                f"{first}); pass --{role}-weights FILE, or --{role}-init scratch"
            ) from None
        torch.random.set_rng_state(rng)  # the same start as an explicit scratch run
        why = f"pretrained weights could not be fetched ({where}: {first})"
        log.warning("%s init: scratch for %s: %s", role, arch, why)
        return create(arch, num_classes, in_chans), {"init": "scratch", "reason": why, "source": "scratch"}
    path = cached_weights(arch)
    source = ("hf-cache" if before else "hub") if cfg.hf_hub_id else ("torch-hub-cache" if before else "url")
    info = {"init": "pretrained", "reason": reason, "source": source, "repo": cfg.hf_hub_id or cfg.url, "file": path}
    if path:
        info["weights_sha256"] = sha256_file(Path(path))
    return model, info


def build(
    arch: str, num_classes: int, in_chans: int, init: str, weights: str | None = None, role: str = "student"
) -> tuple[nn.Module, dict[str, Any]]:
    """A new model for the dataset's classes and where it started: `weights` (a file) wins over `init`
    (auto | pretrained | scratch | a file). `role` (teacher / student) only names the options in errors.

    Returns (model, info); info: init (pretrained | scratch | file), reason, source (hf-cache, hub, scratch or
    the file's path) and weights_sha256 of the file the start came from. Never wraps in Renormalize."""
    arch = resolve_name(arch)
    if weights:
        return _from_file(arch, num_classes, in_chans, Path(weights).expanduser(), f"--{role}-weights")
    kind, reason = resolve_init(init, arch, role)
    if kind == "file":
        return _from_file(arch, num_classes, in_chans, Path(init).expanduser(), f"--{role}-init")
    if kind == "pretrained":
        return _from_pretrained(arch, num_classes, in_chans, init, reason, role)
    return create(arch, num_classes, in_chans), {"init": "scratch", "reason": reason, "source": "scratch"}


class Renormalize(nn.Module):
    """Runs a model trained with another normalisation on inputs normalised with the run's mean/std.

    One preprocessing serves both models in a run; a pretrained teacher expecting ImageNet statistics gets
    ``(x * data_std + data_mean - model_mean) / model_std`` inside this wrapper.
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        data_mean: Sequence[float],
        data_std: Sequence[float],
        model_mean: Sequence[float],
        model_std: Sequence[float],
    ) -> None:
        super().__init__()
        self.model = timm_api(model)
        scale = torch.tensor(data_std) / torch.tensor(model_std)
        shift = (torch.tensor(data_mean) - torch.tensor(model_mean)) / torch.tensor(model_std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1).float())
        self.register_buffer("shift", shift.view(1, -1, 1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x * self.scale + self.shift)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.forward_features(x * self.scale + self.shift)
        return out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out: torch.Tensor = self.model.forward_head(x, pre_logits=pre_logits)
        return out

    def get_classifier(self) -> nn.Module:
        head: nn.Module = self.model.get_classifier()
        return head
