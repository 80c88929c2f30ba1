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
def mlp(in_features: int, hidden: list[int], num_classes: int, flatten: bool = False) -> nn.Module:
    """Fully connected ReLU network: in -> hidden... -> num_classes logits.

    `flatten`: a parameter-free `flatten` layer first, so the MLP reads images (C x H x W) as
    rows of `in_features` pixels; the weight names (`fc1.weight`, ...) are the same either way."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if flatten:
        layers["flatten"] = nn.Flatten()
    width = in_features
    for i, h in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(width, h)
        layers[f"act{i}"] = nn.ReLU()
        width = h
    layers["out"] = nn.Linear(width, num_classes)
    return nn.Sequential(layers)


@register_architecture("cnn")
def cnn(in_channels: int = 1, image_size: int = 8, channels: list[int] = (8, 16),
        hidden: int = 32, num_classes: int = 10, batchnorm: bool = False) -> nn.Module:
    """Small CNN: 3x3 conv blocks, one 2x2 max-pool, then two linear layers.

    `batchnorm`: a BatchNorm2d `bn{i}` between each `conv{i}` and its ReLU (without it the layer
    names and the state dict are those of the plain CNN)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for i, ch in enumerate(channels, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c, ch, 3, padding=1, bias=not batchnorm)
        if batchnorm:
            layers[f"bn{i}"] = nn.BatchNorm2d(ch)
        layers[f"relu{i}"] = nn.ReLU()
        c = ch
    layers["pool"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    side = image_size // 2
    layers["fc1"] = nn.Linear(c * side * side, hidden)
    layers["act_fc1"] = nn.ReLU()
    layers["out"] = nn.Linear(hidden, num_classes)
    return nn.Sequential(layers)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or a strided 1x1 convolution (`shortcut`, with `shortcut_bn`)
    where the block changes width or resolution. Every ReLU is its own module (`relu1`, `relu2`),
    so hooks and attributions can read each activation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batchnorm)
        self.bn1 = norm(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not batchnorm)
        self.bn2 = norm(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not batchnorm)
            self.shortcut_bn = norm(out_channels)
        else:
            self.shortcut = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
        return self.relu2(out + skip)


class ResNet(nn.Module):
    """A small ResNet: `stem` (3x3 conv, BatchNorm, ReLU), stages of residual blocks (`stage{s}.block{b}`;
    every stage after the first halves the resolution), global average pool, Linear `out`."""

    def __init__(self, in_channels: int = 1, image_size: int = 16, widths=(16, 32, 64), blocks: int = 1,
                 num_classes: int = 10, batchnorm: bool = True):
        super().__init__()
        if not widths or blocks < 1:
            raise ValueError("a resnet needs at least one stage width and one block per stage")
        if image_size < 2 ** (len(widths) - 1):
            raise ValueError(f"image_size {image_size} is too small for {len(widths)} stages "
                             f"(each after the first halves it)")
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=not batchnorm)
        self.stem_bn = nn.BatchNorm2d(widths[0]) if batchnorm else nn.Identity()
        self.stem_relu = nn.ReLU()
        c = widths[0]
        for s, w in enumerate(widths, start=1):
            stage = nn.Sequential(OrderedDict(
                (f"block{b}", ResidualBlock(c if b == 1 else w, w, 2 if (s > 1 and b == 1) else 1, batchnorm))
                for b in range(1, blocks + 1)))
            self.add_module(f"stage{s}", stage)
            c = w
        self.stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.out = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_relu(self.stem_bn(self.stem(x)))
        for s in range(1, self.stages + 1):
            x = getattr(self, f"stage{s}")(x)
        return self.out(self.flatten(self.pool(x)))


@register_architecture("resnet")
def resnet(in_channels: int = 1, image_size: int = 16, widths: list[int] = (16, 32, 64), blocks: int = 1,
           num_classes: int = 10, batchnorm: bool = True) -> nn.Module:
    """A small residual network (`ResNet`): with three stages of one block, 8 weight layers deep
    (a ResNet-8); `blocks` 2 gives a ResNet-14-style stack."""
    return ResNet(int(in_channels), int(image_size), [int(w) for w in widths], int(blocks), int(num_classes),
                  bool(batchnorm))


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


def computed_weight(layer: nn.Module) -> bool:
    """Whether a parametrization (`weight_norm`, `spectral_norm`) computes the layer's weight from tensors of its
    own (`parametrizations.weight.original0`, ...): writing into `layer.weight` then changes a copy."""
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(layer, "weight")


def editable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear and Conv2d layer, in forward order of registration."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def memory_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The editable layers that are keys-to-values memories Localize ranks and rank-one edits change: every
    Linear and every ungrouped Conv2d (a depthwise or grouped convolution mixes no channels, so it has no
    one key per position; it is skipped, not refused)."""
    return [(n, m) for n, m in editable_layers(model) if not (isinstance(m, nn.Conv2d) and m.groups != 1)]


def first_layer(model: nn.Module) -> tuple[str, nn.Module]:
    layers = editable_layers(model)
    if not layers:
        raise AuditorError("the model has no Linear or Conv2d layer to inspect")
    return layers[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def batch_rows(X: torch.Tensor, budget: int = 2**20, most: int = 4096) -> int:
    """Rows per inference batch: up to `most`, fewer for large inputs (about `budget` input values per batch,
    at least 16 rows), so that the activations of a batch of 32x32 colour images stay in hundreds of MB."""
    per_row = max(1, int(X[0].numel())) if len(X) else 1
    return int(min(most, max(16, budget // per_row)))


def predict_logits(model: nn.Module, X: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Logits for X in eval mode on the model's device, returned on CPU (in batches of `batch_rows`)."""
    batch_size = batch_size or batch_rows(X)
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    with torch.no_grad():  # predictions only: no graph kept across batches
        outs = [model(X[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(X), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)
