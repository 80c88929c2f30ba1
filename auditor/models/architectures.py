"""Architecture registry: a spec's `arch` dict builds an `nn.Module`.

Each architecture is a function `(**params) -> nn.Module` with named layers so that
attributions and edits can refer to them (`fc1`, `conv2`, `out`, ...).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

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


# The generic `sequential` architecture: a chain of layers described in the spec, built as an
# `nn.Sequential` with integer names (`0`, `1`, ...), so the state dict of the user's own
# `nn.Sequential` (`0.weight`, `2.bias`, ...) loads as it is. A layer is a type name ("relu") or an
# object {"type": ..., params}; see spec.schema.json and docs/formats.md ("Model spec").
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
                "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "softplus": nn.Softplus, "identity": nn.Identity}
SEQUENTIAL_LAYERS = ("linear", "conv2d", "flatten", "maxpool2d", "avgpool2d", "adaptive_avgpool2d",
                     "batchnorm1d", "batchnorm2d", "dropout", *_ACTIVATIONS)


def _layer(spec) -> nn.Module:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a layer must be a type name or an object with a 'type'; got {spec!r}")
    p = {k: v for k, v in spec.items() if k != "type"}
    kind = spec["type"]
    if kind == "linear":
        return nn.Linear(int(p["in"]), int(p["out"]), bias=bool(p.get("bias", True)))
    if kind == "conv2d":
        return nn.Conv2d(int(p["in"]), int(p["out"]), p.get("kernel", 3), stride=p.get("stride", 1),
                         padding=p.get("padding", 0), bias=bool(p.get("bias", True)))
    if kind == "flatten":
        return nn.Flatten()
    if kind in ("maxpool2d", "avgpool2d"):
        cls = nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d
        return cls(p.get("kernel", 2), stride=p.get("stride"))
    if kind == "adaptive_avgpool2d":
        return nn.AdaptiveAvgPool2d(p.get("size", 1))
    if kind in ("batchnorm1d", "batchnorm2d"):
        return (nn.BatchNorm1d if kind == "batchnorm1d" else nn.BatchNorm2d)(int(p["features"]))
    if kind == "dropout":
        return nn.Dropout(float(p.get("p", 0.5)))
    if kind in _ACTIVATIONS:
        return _ACTIVATIONS[kind]()
    raise ValueError(f"unknown layer type {kind!r}; known: {', '.join(SEQUENTIAL_LAYERS)}")


@register_architecture("sequential")
def sequential(layers: list, num_classes: int | None = None) -> nn.Module:
    """A chain of layers (Linear, Conv2d, activations, Flatten, pooling, BatchNorm, Dropout)."""
    if not isinstance(layers, list) or not layers:
        raise ValueError("'layers' must be a non-empty list")
    try:
        return nn.Sequential(*(_layer(s) for s in layers))
    except KeyError as exc:
        raise ValueError(f"a layer lacks its parameter {exc}") from None


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
