"""Architecture registry: a spec's `arch` dict builds an `nn.Module`.

Each architecture is a function `(**params) -> nn.Module` with named layers so that
attributions and edits can refer to them (`fc1`, `conv2`, `out`, ...).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from ..errors import AuditorError

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def register_architecture(name: str):
    def wrap(fn):
        ARCHITECTURES[name] = fn
        return fn
    return wrap


@register_architecture("mlp")
def mlp(in_features: int, hidden: list[int], num_classes: int) -> nn.Module:
    """Fully connected ReLU network: in -> hidden... -> num_classes logits."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"act{i}"] = nn.ReLU()
        width = h
    layers["out"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


@register_architecture("cnn")
def cnn(in_channels: int = 1, image_size: int = 8, channels: list[int] = (8, 16),
        hidden: int = 32, num_classes: int = 10) -> nn.Module:
    """Small CNN: 3x3 conv blocks, one 2x2 max-pool, then two linear layers."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for i, ch in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c, ch, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        c = ch
    layers["pool"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    side = image_size // 2
    layers["fc1"] = nn.Linear(c * side * side, hidden)
    layers["act_fc1"] = nn.ReLU()
    layers["out"] = nn.Linear(hidden, num_classes)
    return nn.Sequential(layers)


def build_architecture(arch: dict) -> nn.Module:
    """Build from `{"name": ..., **params}`; an unknown name or bad parameter is an AuditorError."""
    if not isinstance(arch, dict) or "name" not in arch:
        raise AuditorError("model spec: 'arch' must be an object with a 'name' "
                           f"(one of {sorted(ARCHITECTURES)})")
    params = {k: v for k, v in arch.items() if k != "name"}
    name = arch["name"]
    if name not in ARCHITECTURES:
        raise AuditorError(f"model spec names unknown architecture {name!r}; "
                           f"known: {', '.join(sorted(ARCHITECTURES))}")
    try:
        return ARCHITECTURES[name](**params)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AuditorError(f"model spec: bad parameters for architecture {name!r}: {exc}") from None


def editable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear and Conv2d layer, in forward order of registration."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    layers = editable_layers(model)
    if not layers:
        raise AuditorError("the model has no Linear or Conv2d layer to inspect")
    return layers[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def predict_logits(model: nn.Module, X: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits for X in eval mode on the model's device, returned on CPU."""
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    outs = [model(X[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)
