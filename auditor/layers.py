"""A layer as a linear associative memory: hooks, keys and values, second moments.

Keys are a layer's inputs (for a convolution, the unfolded input patch at every output position),
values its outputs. Shared by localization (`auditor.localize`) and the rank-one editors.
Every function here leaves no hook behind, also when it raises (`hook_guard`).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import AuditorError
from .models.architectures import editable_layers

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")

# ---------------------------------------------------------------------------------------------
# Hooks, layers and keys


@contextmanager
def hook_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Remove, on exit (also after an exception), every hook added to any module of `model` inside."""
    before = {id(m): {name: set(getattr(m, name, {}) or {}) for name in _HOOK_DICTS} for m in model.modules()}
    try:
        yield model
    finally:
        for m in model.modules():
            old = before.get(id(m), {})
            for name in _HOOK_DICTS:
                hooks = getattr(m, name, None)
                if not hooks:
                    continue
                for key in [k for k in hooks if k not in old.get(name, ())]:
                    del hooks[key]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called `name` in `model.named_modules()`; a clear error listing valid names."""
    modules = dict(model.named_modules())
    if name not in modules:
        valid = [n for n, _ in editable_layers(model)]
        raise AuditorError(f"model has no layer {name!r}; editable layers: {', '.join(valid) or '(none)'}")
    return modules[name]


def check_editable(layer: nn.Module, name: str = "") -> None:
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise AuditorError(f"layer {name!r} is a {type(layer).__name__}; only Linear and Conv2d layers are "
                           "keys-to-values memories that can be localized and edited")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise AuditorError(f"layer {name!r} is a grouped convolution (groups={layer.groups}); "
                           "pick an ordinary Conv2d or Linear layer")


def layer_keys(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Keys of `layer` for a batch of its inputs: (N, P, D) with P positions per example.

    Linear: P = 1 (or the product of leading dims), D = in_features. Conv2d: the unfolded input
    patch at each output position (F.unfold), D = in_channels * kh * kw, P = output positions in
    row-major order (the order of `layer(inputs).flatten(2)`). A bias adds a constant 1 to every key.
    """
    if isinstance(layer, nn.Linear):
        keys = inputs.reshape(inputs.shape[0], -1, layer.in_features)
    elif isinstance(layer, nn.Conv2d):
        x, padding = inputs, layer.padding
        if isinstance(padding, str) or layer.padding_mode != "zeros":
            mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
            x, padding = F.pad(x, list(layer._reversed_padding_repeated_twice), mode=mode), 0
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
        keys = cols.transpose(1, 2)
    else:
        raise AuditorError(f"no keys for a {type(layer).__name__}; only Linear and Conv2d")
    if layer.bias is not None:
        keys = torch.cat([keys, torch.ones_like(keys[..., :1])], dim=-1)
    return keys


def layer_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer as one matrix acting on `layer_keys` (weight flattened, bias as the last column)."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    if layer.bias is not None:
        w = torch.cat([w, layer.bias.detach()[:, None]], dim=1)
    return w


def layer_values(layer: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """Outputs of `layer` laid out like its keys: (N, P, out)."""
    if isinstance(layer, nn.Conv2d):
        return outputs.flatten(2).transpose(1, 2)
    return outputs.reshape(outputs.shape[0], -1, outputs.shape[-1])


@contextmanager
def capture_inputs(model: nn.Module, layers: dict[str, nn.Module]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the inputs of the given layers during forward passes; hooks are always removed."""
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with hook_guard(model):
        handles = []
        try:
            for name, layer in layers.items():
                handles.append(layer.register_forward_pre_hook(
                    lambda mod, args, _n=name: store[_n].append(args[0].detach())))
            yield store
        finally:
            for h in handles:
                h.remove()


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def layer_io(model: nn.Module, layer_name: str, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys, values) of one layer for inputs X, each (N, P, dim), on the model's device."""
    layer = resolve_layer(model, layer_name)
    check_editable(layer, layer_name)
    was_training = model.training
    model.eval()
    try:
        with capture_inputs(model, {layer_name: layer}) as store:
            model(X.to(model_device(model)))
        inp = store[layer_name][0]
        keys = layer_keys(layer, inp)
        return keys, keys @ layer_matrix(layer).T
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Second moment of keys (cached per model hash and layer)

_MOMENTS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_MOMENT_CACHE_SIZE = 64  # entries, and at most this many bytes of matrices per cache:
_MOMENT_CACHE_BYTES = 512 * 2**20


def _bound(cache: OrderedDict, size) -> None:
    """Evict the oldest entries until `cache` holds at most _MOMENT_CACHE_SIZE entries and
    _MOMENT_CACHE_BYTES bytes (`size(value)` in bytes); the newest entry always stays."""
    total = sum(size(v) for v in cache.values())
    while len(cache) > 1 and (len(cache) > _MOMENT_CACHE_SIZE or total > _MOMENT_CACHE_BYTES):
        total -= size(cache.popitem(last=False)[1])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def clear_moment_cache() -> None:
    """Forget every cached second moment and its inverse (benchmarks time cold edits with this)."""
    _MOMENTS.clear()
    _INVERSES.clear()


def _fingerprint(X: torch.Tensor) -> str:
    h = hashlib.sha1(str(tuple(X.shape)).encode())
    h.update(X.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _model_hash(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def second_moments(model: nn.Module, layer_names: Sequence[str], X: torch.Tensor, *, max_rows: int = 4096,
                   max_keys: int = 16384, batch_size: int = 1024,
                   model_hash: str | None = None) -> dict[str, torch.Tensor]:
    """Uncentred second moments E[k k^T] of several layers' keys over clean inputs X (float64, D x D
    each), from one pass over the data.

    At most `max_rows` rows of X and `max_keys` keys per layer are used (the first ones: for a
    convolution, every patch position of the first examples), so the result is deterministic.
    Cached per (weights hash, layer, data fingerprint). Computed on the model's device.
    """
    X = X[:max_rows]
    mh, fp = model_hash or _model_hash(model), _fingerprint(X)
    out: dict[str, torch.Tensor] = {}
    todo: dict[str, nn.Module] = {}
    for name in layer_names:
        key = (mh, name, fp)
        if key in _MOMENTS:
            _MOMENTS.move_to_end(key)
            out[name] = _MOMENTS[key]
        else:
            layer = resolve_layer(model, name)
            check_editable(layer, name)
            todo[name] = layer
    if not todo:
        return out
    if len(X) == 0:
        raise AuditorError("no clean inputs to estimate the keys' second moment from")
    dev = model_device(model)
    acc = torch.float32 if dev.type == "mps" else torch.float64
    totals: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(todo, 0)
    was_training = model.training
    model.eval()
    try:
        with capture_inputs(model, todo) as store:
            for i in range(0, len(X), batch_size):
                for v in store.values():
                    v.clear()
                model(X[i:i + batch_size].to(dev))
                for name, layer in todo.items():
                    inp = store[name][0]
                    left = max_keys - counts[name]
                    if left <= 0:
                        continue
                    positions = layer_keys(layer, inp[:1]).shape[1]
                    # the first examples' keys up to the budget (a convolution has many per example)
                    k = layer_keys(layer, inp[:int(np.ceil(left / positions))])
                    k = k.reshape(-1, k.shape[-1])[:left]
                    k = k if k.dtype in (torch.float32, torch.float64) else k.float()
                    kk = (k.T @ k).to(acc)
                    totals[name] = totals[name] + kk if name in totals else kk
                    counts[name] += k.shape[0]
    finally:
        model.train(was_training)
    for name in todo:
        C = totals[name] / max(counts[name], 1)
        _MOMENTS[(mh, name, fp)] = C
        out[name] = C
    _bound(_MOMENTS, _nbytes)
    return out


def second_moment(model: nn.Module, layer_name: str, X: torch.Tensor, **kwargs) -> torch.Tensor:
    """Uncentred second moment E[k k^T] of one layer's keys over clean inputs X (see `second_moments`)."""
    return second_moments(model, [layer_name], X, **kwargs)[layer_name]


def regularised(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """C + ridge * mean(diag C) * I: invertible even for keys clean data never spans."""
    scale = float(torch.diagonal(C).mean()) or 1.0
    return C + ridge * scale * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)


_INVERSES: OrderedDict[tuple, torch.Tensor] = OrderedDict()


def inverse_moment(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """(C + ridge * mean(diag C) * I)^-1, cached alongside the cached moment C."""
    key = (id(C), float(ridge))
    hit = _INVERSES.get(key)
    if hit is not None and hit[0] is C:
        return hit[1]
    R = regularised(C, ridge)
    try:
        inv = torch.cholesky_inverse(torch.linalg.cholesky(R))
    except RuntimeError:  # not positive definite numerically (ridge 0): fall back to a solve
        inv = torch.linalg.inv(R)
    _INVERSES[key] = (C, inv)
    _bound(_INVERSES, lambda pair: _nbytes(pair[1]))
    return inv


