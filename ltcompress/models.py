"""timm model creation, the short aliases users type, and the pretrained-teacher re-normalisation wrapper."""
from __future__ import annotations

import os
import socket

import torch
from torch import nn

from ltcompress.errors import UsageError
from ltcompress.registry import Registry, closest

# Short names users type -> the timm variant they get (documented in the README).
ALIASES: Registry[str] = Registry("model alias")
ALIASES.register("mobilenetv3", "mobilenetv3_small_100", summary="MobileNetV3-Small, width 1.0")
ALIASES.register("mobilenetv3_large", "mobilenetv3_large_100", summary="MobileNetV3-Large, width 1.0")
ALIASES.register("resnet", "resnet50", summary="ResNet-50")


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


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate (pre-logits) features and logits in one pass, through timm's forward_features /
    forward_head(pre_logits=True) / classifier; models are never edited for this."""
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    return pre, model.get_classifier()(pre)


def hub_reachable(timeout: float = 1.5) -> bool:
    """False at once when HF_HUB_OFFLINE is set or the hub's host does not resolve/connect quickly.

    Pretrained weights come from the Hugging Face hub; without this check an offline machine waits ~47 s.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy")):
        return True  # a proxy decides; the download itself will tell
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


class Renormalize(nn.Module):
    """Runs a model trained with another normalisation on inputs normalised with the run's mean/std.

    One preprocessing serves both models in a run; a pretrained teacher expecting ImageNet statistics gets
    ``(x * data_std + data_mean - model_mean) / model_std`` inside this wrapper.
    """

    def __init__(self, model: nn.Module, data_mean, data_std, model_mean, model_std) -> None:
        super().__init__()
        self.model = model
        scale = torch.tensor(data_std) / torch.tensor(model_std)
        shift = (torch.tensor(data_mean) - torch.tensor(model_mean)) / torch.tensor(model_std)
        self.register_buffer("scale", scale.view(1, -1, 1, 1).float())
        self.register_buffer("shift", shift.view(1, -1, 1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x * self.scale + self.shift)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(x, pre_logits=pre_logits)

    def get_classifier(self) -> nn.Module:
        return self.model.get_classifier()
