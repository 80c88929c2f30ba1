"""A layer as a linear associative memory: hooks, keys and values, second moments.

Keys are a layer's inputs (for a convolution, the unfolded input patch at every output position),
values its outputs. Shared by localization (`auditor.localize`) and the rank-one editors.
Every function here leaves no hook behind, also when it raises (`hook_guard`).
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import AuditorError
from .models.architectures import memory_layers

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
        valid = [n for n, _ in memory_layers(model)]
        raise AuditorError(f"model has no layer {name!r}; editable layers: {', '.join(valid) or '(none)'}")
    return modules[name]


def check_editable(layer: nn.Module, name: str = "") -> None:
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise AuditorError(f"layer {name!r} is a {type(layer).__name__}; only Linear and Conv2d layers are "
                           "keys-to-values memories that can be localized and edited")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise AuditorError(f"layer {name!r} is a grouped convolution (groups={layer.groups}), which rank-one "
                           "edits cannot change; pick an ordinary Conv2d or Linear layer (--layer NAME)")


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
        if not store[layer_name]:
            raise AuditorError(f"layer {layer_name!r} never runs in the model's forward pass; pick a layer the "
                               "model uses")
        inp = store[layer_name][0]
        keys = layer_keys(layer, inp)
        return keys, keys @ layer_matrix(layer).T
    finally:
        model.train(was_training)


@torch.no_grad()
def sibling_layers(model: nn.Module, layer_name: str, X: torch.Tensor) -> list[str]:
    """The other editable layers that read the very tensor `layer_name` reads (e.g. a residual
    block's first convolution and its projection shortcut), in `memory_layers` order."""
    names = [n for n, _ in memory_layers(model)]
    if layer_name not in names:
        return []
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()
    try:
        with capture_inputs(model, {n: modules[n] for n in names}) as store:
            model(X[:1].to(model_device(model)))
    finally:
        model.train(was_training)

    def ident(name):
        t = store[name][0] if store[name] else None
        return None if t is None else (t.data_ptr(), tuple(t.shape), t.stride())

    mine = ident(layer_name)
    return [n for n in names if n != layer_name and mine is not None and ident(n) == mine]


@torch.no_grad()
def output_layer(model: nn.Module, X: torch.Tensor) -> str | None:
    """The Linear layer whose output is the model's output (its logits, nothing applied after it), for
    inputs like `X`; None when the model ends otherwise (a softmax, a scale, a sum of branches)."""
    linear = {n: m for n, m in memory_layers(model) if isinstance(m, nn.Linear)}
    order = [n for n in execution_order(model, X[:1]) if n in linear]
    if not order:
        return None
    name, got = order[-1], []
    was_training = model.training
    model.eval()
    try:
        with hook_guard(model):
            linear[name].register_forward_hook(lambda _m, _a, out: got.append(out))
            out = model(X[:8].to(model_device(model)))
    finally:
        model.train(was_training)
    last = got[-1] if got else None
    ok = (isinstance(out, torch.Tensor) and last is not None and last.shape == out.shape
          and bool(torch.equal(last, out)))
    return name if ok else None


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
    _FACTORS.clear()


def input_fingerprint(X: torch.Tensor) -> str:
    """sha1 of a batch's shape and bytes (what a cache of values computed from the batch is keyed by)."""
    h = hashlib.sha1(str(tuple(X.shape)).encode())
    h.update(X.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _state_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer, as the objects themselves (a `state_dict()` detaches fresh ones,
    whose digests would not be remembered)."""
    return [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]


def model_hash(model: nn.Module) -> str:
    """sha1 of what a model computes: every module's name, class, settings and forward code, and every
    parameter and buffer (names, dtypes, shapes, bytes); each tensor is hashed once per version
    (`inherit_digests` passes the digests on to a copy)."""
    h = hashlib.sha1()
    for name, mod in model.named_modules(remove_duplicate=False):
        cls = type(mod)
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        h.update(f"|{name}:{cls.__module__}.{cls.__qualname__}({mod.extra_repr()})".encode())
        if code is not None:
            h.update(code.co_code)
            h.update(repr(code.co_consts).encode())
    for name, t in _state_tensors(model):
        h.update(name.encode())
        h.update(_tensor_digest(t))
    return h.hexdigest()


def inherit_digests(source: nn.Module, copy: nn.Module) -> None:
    """Let `copy`, just made from `source` (a deep copy, perhaps moved to another device), reuse the
    digests of `source`'s tensors, so hashing the copy does not read its bytes again."""
    pairs = zip(_state_tensors(source), _state_tensors(copy))
    for (name, a), (other, b) in pairs:
        if name != other or a.shape != b.shape or a.dtype != b.dtype:
            return
        try:  # read from `a` when first asked for, if `a` is then still as it was
            _DIGESTS[id(b)] = (weakref.ref(b), b._version, (weakref.ref(a), a._version))
        except TypeError:
            pass


_DIGESTS: dict[int, tuple] = {}  # id(tensor) -> (weakref, version, digest): a tensor is hashed once per version


def _tensor_digest(t: torch.Tensor) -> bytes:
    """sha1 of a tensor's dtype, shape and bytes, remembered while the tensor lives and is not modified in place."""
    hit = _DIGESTS.get(id(t))
    if hit is not None and hit[0]() is t and hit[1] == t._version:
        if isinstance(hit[2], bytes):
            return hit[2]
        source = hit[2][0]()  # inherited from the tensor it was copied from
        if source is not None and source._version == hit[2][1]:
            digest = _tensor_digest(source)
            _DIGESTS[id(t)] = (hit[0], hit[1], digest)
            return digest
    h = hashlib.sha1(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.digest()
    if len(_DIGESTS) > 4096:
        for k in [k for k, v in _DIGESTS.items() if v[0]() is None]:
            del _DIGESTS[k]
    try:
        _DIGESTS[id(t)] = (weakref.ref(t), t._version, digest)
    except TypeError:  # not weak-referenceable: not remembered
        pass
    return digest


_ORDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its modules, their order)


def execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules of `model` in the order their forward starts, for one input batch `x`
    (a module called twice is listed at its first call); remembered per model while its modules
    stay the same objects under the same names."""
    modules = tuple((name, id(m)) for name, m in model.named_modules())
    hit = _ORDERS.get(model)
    if hit is not None and hit[0] == modules:
        return hit[1]
    order = _execution_order(model, x)
    try:
        _ORDERS[model] = (modules, order)
    except TypeError:
        pass
    return order


def used_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The editable layers (`memory_layers`, in that order) that the model's forward pass runs, for one input
    row `x` (a layer a model keeps but never calls, such as a head left over from pre-training, is left out)."""
    ran = set(execution_order(model, x[:1]))
    return [n for n, _ in memory_layers(model) if n in ran]


@torch.no_grad()
def _execution_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    seen: set[str] = set()
    was_training = model.training
    model.eval()
    try:
        with hook_guard(model):
            for name, mod in model.named_modules():
                def pre(_m, _a, _n=name):
                    if _n not in seen:
                        seen.add(_n)
                        order.append(_n)
                mod.register_forward_pre_hook(pre)
            model(x.to(model_device(model)))
    finally:
        model.train(was_training)
    return order


def feed_hashes(model: nn.Module, layer_names: Sequence[str], x: torch.Tensor) -> dict[str, str]:
    """Per layer, a hash of everything that can shape its keys: the names, types and settings of the
    modules whose forward starts before the layer's, and their own parameters and buffers (BatchNorm
    running statistics included). A layer's own weights and every module after it are left out, so
    editing a layer keeps the hashes of itself and of every layer below it. `x`: one input row."""
    order = execution_order(model, x[:1])
    modules = dict(model.named_modules())
    wanted = set(layer_names)
    missing = wanted - set(order)
    if missing:
        raise AuditorError(f"layer(s) {sorted(missing)} never run in the model's forward pass; "
                           "pick layers the model uses")
    out: dict[str, str] = {}
    h = hashlib.sha1(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name in order:
        if name in wanted:
            out[name] = h.hexdigest()
        mod = modules[name]
        h.update(f"|{name}:{type(mod).__qualname__}({mod.extra_repr()})".encode())
        for pname, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            h.update(pname.encode())
            h.update(_tensor_digest(t))
    return out


def _key_signature(layer: nn.Module) -> str:
    """What fixes the layout of a layer's keys: its type, settings and whether it has a bias."""
    return f"{type(layer).__name__}({layer.extra_repr()}),bias={layer.bias is not None}"


@torch.no_grad()
def second_moments(model: nn.Module, layer_names: Sequence[str], X: torch.Tensor, *, max_rows: int = 4096,
                   max_keys: int = 16384, batch_size: int = 1024,
                   model_hash: str | None = None) -> dict[str, torch.Tensor]:
    """Uncentred second moments E[k k^T] of several layers' keys over clean inputs X (float64), from one
    pass over the data: C (D x D), or, for a layer with fewer keys N than dimensions D (a wide Linear
    layer over a few thousand rows), its N x D factor F = K / sqrt(N) with C = F^T F, which is smaller
    and is solved with on N x N systems (`solve_moment`; `dense_moment` gives C either way).

    At most `max_rows` rows of X and `max_keys` keys per layer are used (the first ones: for a
    convolution, every patch position of the first examples), so the result is deterministic.
    Cached per (layer, data fingerprint, hash of what feeds the layer: `feed_hashes`), so after an
    edit only the layers above the edited one are recomputed; `model_hash` (a hash of the whole
    model) replaces the per-layer hashes when given. Computed on the model's device.
    """
    X = X[:max_rows]
    if len(X) == 0:
        raise AuditorError("no clean inputs to estimate the keys' second moment from")
    fp = input_fingerprint(X)
    for name in layer_names:
        check_editable(resolve_layer(model, name), name)
    feeds = ({n: model_hash for n in layer_names} if model_hash is not None
             else feed_hashes(model, layer_names, X))
    # the layer's own shape of keys is part of the key: two models may feed a layer of the same name the
    # same values while one has a bias and the other not (BatchNorm folded into it on ONNX export)
    feeds = {n: f"{feeds[n]}|{_key_signature(resolve_layer(model, n))}" for n in layer_names}
    out: dict[str, torch.Tensor] = {}
    todo: dict[str, nn.Module] = {}
    for name in layer_names:
        key = (feeds[name], name, fp, max_keys)
        if key in _MOMENTS:
            _MOMENTS.move_to_end(key)
            out[name] = _MOMENTS[key]
        else:
            todo[name] = resolve_layer(model, name)
    if not todo:
        return out
    dev = model_device(model)
    acc = torch.float32 if dev.type == "mps" else torch.float64
    totals: dict[str, torch.Tensor] = {}
    kept: dict[str, list[torch.Tensor]] = {}  # layers with fewer keys than dimensions keep the keys
    counts = dict.fromkeys(todo, 0)
    was_training = model.training
    model.eval()
    try:
        with capture_inputs(model, todo) as store:
            for i in range(0, len(X), batch_size):
                if all(counts[n] >= max_keys for n in todo):
                    break  # every layer has its keys: the rest of the data is not needed
                for v in store.values():
                    v.clear()
                model(X[i:i + batch_size].to(dev))
                for name, layer in todo.items():
                    left = max_keys - counts[name]
                    if left <= 0:
                        continue
                    for inp in store[name]:  # every call of the layer (a module may run twice)
                        one = layer_keys(layer, inp[:1])
                        positions = one.shape[1]
                        fewer = min(max_keys, len(X) * positions) < one.shape[-1]  # keys than dimensions
                        if name not in totals and name not in kept and fewer:
                            kept[name] = []
                        # the first examples' keys up to the budget (a convolution has many per example)
                        k = layer_keys(layer, inp[:int(np.ceil(left / positions))])
                        k = k.reshape(-1, k.shape[-1])[:left]
                        k = k if k.dtype in (torch.float32, torch.float64) else k.float()
                        if name in kept:
                            kept[name].append(k.to(acc))
                        else:
                            kk = (k.T @ k).to(acc)
                            totals[name] = totals[name] + kk if name in totals else kk
                        counts[name] += k.shape[0]
                        left -= k.shape[0]
                        if left <= 0:
                            break
    finally:
        model.train(was_training)
    for name in todo:
        if name in kept:  # C = K^T K / N kept as the N x D factor K / sqrt(N) (N < D: smaller than C)
            C = torch.cat(kept[name]) / float(np.sqrt(max(counts[name], 1)))
        else:
            C = totals[name] / max(counts[name], 1)
        _MOMENTS[(feeds[name], name, fp, max_keys)] = C
        out[name] = C
    _bound(_MOMENTS, _nbytes)
    return out


def moments_file(model_path: str | Path) -> Path:
    """Where the keys' second moments of the model at `model_path` are kept between runs (beside it)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".moments.safetensors")


def load_moments(path: str | Path) -> int:
    """Read kept second moments (a safetensors file, never a pickle) into the cache; returns how many.
    Entries are keyed by what feeds each layer, so entries of other weights simply never match."""
    import json

    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return 0
    with safe_open(str(path), framework="pt") as f:
        keys = json.loads((f.metadata() or {}).get("keys", "{}"))
        for name, key in keys.items():
            _MOMENTS[tuple(key)] = f.get_tensor(name)
    _bound(_MOMENTS, _nbytes)
    return len(keys)


def save_moments(path: str | Path, layer_names: Sequence[str] | None = None, max_bytes: int = 256 * 2**20,
                 match=None) -> int:
    """Write the cached second moments (of `layer_names`, default all; of keys `match(key)` accepts) to
    `path` (safetensors, replaced atomically); returns how many, 0 when they would pass `max_bytes`
    (nothing is written then)."""
    import json

    from safetensors.torch import save_file

    from .atomic import replacing

    keep = {k: v for k, v in _MOMENTS.items()
            if (layer_names is None or k[1] in layer_names) and (match is None or match(k))}
    if not keep or sum(_nbytes(v) for v in keep.values()) > max_bytes:
        return 0
    tensors, keys = {}, {}
    for i, (key, C) in enumerate(keep.items()):
        tensors[f"m{i}"] = C.detach().cpu().contiguous()
        keys[f"m{i}"] = list(key)
    with replacing(path) as tmp:
        save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys), "format": "auditor-moments/1"})
    return len(keys)


def second_moment(model: nn.Module, layer_name: str, X: torch.Tensor, **kwargs) -> torch.Tensor:
    """Uncentred second moment E[k k^T] of one layer's keys over clean inputs X (see `second_moments`)."""
    return second_moments(model, [layer_name], X, **kwargs)[layer_name]


def is_factor(C: torch.Tensor) -> bool:
    """Whether a moment from `second_moments` is kept as its N x D factor F (C = F^T F) rather than C."""
    return C.shape[0] != C.shape[1]


def dense_moment(C: torch.Tensor) -> torch.Tensor:
    """The D x D second moment, from C or its factor."""
    return C.T @ C if is_factor(C) else C


def _ridge_scale(C: torch.Tensor, ridge: float) -> float:
    """ridge * mean(diag C) (the factor's squared norm over D)."""
    mean = float(C.pow(2).sum()) / C.shape[1] if is_factor(C) else float(torch.diagonal(C).mean())
    return ridge * (mean or 1.0)


def regularised(C: torch.Tensor, ridge: float) -> torch.Tensor:
    """C + ridge * mean(diag C) * I: invertible even for keys clean data never spans."""
    a = _ridge_scale(C, ridge)
    C = dense_moment(C)
    return C + a * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)


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




_FACTORS: OrderedDict[tuple, tuple] = OrderedDict()


def moment_factor(C: torch.Tensor, ridge: float) -> tuple[str, torch.Tensor]:
    """A factorisation of C + ridge * mean(diag C) * I, cached alongside the cached moment C:
    ("cholesky", L) or, where that fails numerically (ridge 0 on a singular C), ("lu", LU, pivots); for a
    moment kept as its factor F, the same of the N x N system a I + F F^T, as ("woodbury-cholesky", L, a)
    or ("woodbury-lu", LU, pivots, a)."""
    key = (id(C), float(ridge))
    hit = _FACTORS.get(key)
    if hit is not None and hit[0] is C:
        return hit[1]
    if is_factor(C):  # Woodbury: (a I + F^T F)^-1 = (I - F^T (a I + F F^T)^-1 F) / a, an N x N system
        a = _ridge_scale(C, ridge)
        if a <= 0:
            raise AuditorError(f"ridge must be above 0 for a layer with fewer clean keys ({C.shape[0]}) than "
                               f"dimensions ({C.shape[1]}): their second moment is singular")
        inner = C @ C.T + a * torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
        L, info = torch.linalg.cholesky_ex(inner)
        factor = (("woodbury-cholesky", L) if int(info) == 0 else ("woodbury-lu", *torch.linalg.lu_factor(inner)))
        factor = (*factor, torch.tensor(a, dtype=C.dtype))
    else:
        R = regularised(C, ridge)
        L, info = torch.linalg.cholesky_ex(R)
        factor = ("cholesky", L) if int(info) == 0 else ("lu", *torch.linalg.lu_factor(R))
    _FACTORS[key] = (C, factor)
    _bound(_FACTORS, lambda pair: sum(_nbytes(t) for t in pair[1][1:]))
    return factor


def solve_moment(C: torch.Tensor, ridge: float, B: torch.Tensor) -> torch.Tensor:
    """(C + ridge * mean(diag C) * I)^-1 B for a few columns B (D x S), from the cached factor of C
    (no inverse is formed: O(D^2 S) per call once C is factored)."""
    factor = moment_factor(C, ridge)
    kind, *parts = factor
    parts = [p.to(B.device, B.dtype) if p.is_floating_point() else p.to(B.device) for p in parts]
    if kind.startswith("woodbury-"):  # the factor F of C and ridge a: (B - F^T (a I + F F^T)^-1 F B) / a
        F, a = C.to(B.device, B.dtype), float(parts[-1])
        return (B - F.T @ _factor_solve(kind.removeprefix("woodbury-"), parts[:-1], F @ B)) / a
    return _factor_solve(kind, parts, B)


def _factor_solve(kind: str, parts: list, B: torch.Tensor) -> torch.Tensor:
    if kind == "cholesky":  # two triangular solves (torch.cholesky_solve copies the factor on every call)
        L = parts[0]
        return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True)
    return torch.linalg.lu_solve(parts[0], parts[1], B)


# ---------------------------------------------------------------------------------------------
# The part of a model above one layer (the dynamic loop's checks rerun only that part)


class ModelSplit:
    """A model split just below some of its layers (torch.fx trace sharing the model's modules, so
    in-place edits are seen). `capture(X)` runs the whole model once and also returns, per layer, the
    values that cross the cut below it (its input, and any skip connection or other value computed
    below the layer and read above it); `run(layer, cut)` recomputes the output from those values
    alone. Editing a layer leaves its own cut values valid; `depends(layer, edited)` says whether an
    edit of `edited` changes the cut values of `layer`. Built by `split_model`."""

    def __init__(self, gm, nodes, above: dict, cuts: dict):
        import torch.fx as fx

        self._above, self._cuts, self.layers = above, cuts, list(cuts)
        output = nodes[-1]
        needed = list(dict.fromkeys(c for cut in cuts.values() for c in cut))
        self._index = {n: i for i, n in enumerate(needed)}
        g, env = fx.Graph(), {}
        for n in nodes[:-1]:
            env[n] = g.node_copy(n, lambda a: env[a])
        g.output((fx.graph.map_arg(output.args[0], lambda a: env[a]), *[env[c] for c in needed]))
        self._root, self._nodes = gm, nodes
        self._capture = fx.GraphModule(gm, g)
        self._tails = {}  # built on first use: most checks touch one or two layers

    def _tail(self, layer: str):
        import torch.fx as fx

        if layer not in self._tails:
            above, nodes = self._above[layer], self._nodes
            g, env = fx.Graph(), {}
            for i, c in enumerate(self._cuts[layer]):
                env[c] = g.placeholder(f"cut_{i}")
            for n in nodes[:-1]:
                if n in above or (n.op == "get_attr" and any(u in above for u in n.users)):
                    env[n] = g.node_copy(n, lambda a: env[a])
            g.output(fx.graph.map_arg(nodes[-1].args[0], lambda a: env[a]))
            self._tails[layer] = fx.GraphModule(self._root, g)
        return self._tails[layer]

    def tail(self, layer: str):
        """The part of the model from `layer` on, as a module taking the values crossing the cut below it
        (`cut_values(layer)` of them) and sharing the model's modules under their own names."""
        return self._tail(layer)

    def cut_values(self, layer: str) -> int:
        """How many values cross the cut below `layer` (1: its input alone)."""
        return len(self._cuts[layer])

    def capture(self, X: torch.Tensor, layers=None) -> tuple[object, dict[str, tuple]]:
        out = self._capture(X)
        values = out[1:]
        return out[0], {layer: tuple(values[self._index[c]] for c in self._cuts[layer])
                        for layer in (self.layers if layers is None else layers)}

    def run(self, layer: str, cut: tuple) -> object:
        return self._tail(layer)(*cut)

    def depends(self, layer: str, edited: str) -> bool:
        """Whether an edit of `edited` changes the values crossing the cut below `layer`."""
        if edited not in self._above:
            return True
        return any(c in self._above[edited] for c in self._cuts[layer])

    def chain(self, layer: str) -> list[nn.Module | object] | None:
        """The steps from `layer`'s output to the model's output when they are a plain chain of Linear
        layers and elementwise 1-Lipschitz functions (ReLU, Tanh, ...; `lipschitz_one`), each reading
        the step before alone, ending in a Linear layer; else None. Each step is a module or a
        one-argument function."""
        if layer not in self._above:
            return None
        nodes = [n for n in self._nodes[:-1] if n in self._above[layer]]
        root = dict(self._root.named_modules())
        if not nodes or nodes[0].op != "call_module" or nodes[0].target != layer or len(nodes[0].users) != 1:
            return None
        steps, prev = [], nodes[0]
        for n in nodes[1:]:
            if n.all_input_nodes != [prev] or len(n.users) != 1:
                return None
            step = lipschitz_one(n, root)
            if step is None:
                return None
            steps.append(step)
            prev = n
        output = self._nodes[-1]
        if output.args[0] is not prev or not steps or not isinstance(steps[-1], nn.Linear):
            return None
        return steps


_LIPSCHITZ_ONE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Identity,
                          nn.Dropout, nn.Flatten)
_LIPSCHITZ_ONE_FUNCTIONS = {torch.relu, F.relu, torch.tanh, torch.sigmoid, torch.flatten}
_LIPSCHITZ_ONE_METHODS = {"relu", "tanh", "sigmoid"}


def lipschitz_one(node, modules: dict[str, nn.Module]):
    """The step a traced `node` computes on its one input, when it is a Linear layer or a function of
    each entry alone that changes no entry by more than its input changed (1-Lipschitz: ReLU, Tanh,
    Sigmoid, Dropout in eval mode, LeakyReLU or ELU of slope <= 1, ...); else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        ok = (isinstance(m, nn.Linear) or (isinstance(m, _LIPSCHITZ_ONE_MODULES) and not (isinstance(
            m, nn.Dropout) and m.training)) or (isinstance(m, nn.LeakyReLU) and abs(m.negative_slope) <= 1)
            or (isinstance(m, nn.ELU) and 0 <= m.alpha <= 1))
        return m if ok and (not isinstance(m, nn.Flatten) or m.start_dim == 1) else None
    kwargs_ok = all(k == "inplace" and v is False for k, v in node.kwargs.items())
    if node.op == "call_function" and node.target is F.leaky_relu:
        slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
        rest = {k: v for k, v in node.kwargs.items() if k != "negative_slope"}
        ok = isinstance(slope, (int, float)) and abs(slope) <= 1 and len(node.args) <= 2 and all(
            k == "inplace" and v is False for k, v in rest.items())
        return (lambda t, _s=slope: F.leaky_relu(t, _s)) if ok else None
    if node.op == "call_function" and node.target in _LIPSCHITZ_ONE_FUNCTIONS and kwargs_ok:
        if node.target is torch.flatten:
            return (lambda t: torch.flatten(t, 1)) if tuple(node.args[1:]) == (1,) else None
        return node.target if len(node.args) == 1 else None
    if node.op == "call_method" and node.target in _LIPSCHITZ_ONE_METHODS and len(node.args) == 1 and not node.kwargs:
        return lambda t, _name=node.target: getattr(t, _name)()
    return None


_TRACE_LOCK = threading.Lock()


def _trace(model: nn.Module):
    """The torch.fx graph of `model`, safe while other threads run models: fx patches
    `nn.Module.__call__` and `__getattr__` for the whole process while it traces, so the tracer lets
    calls from any other thread through untouched, and one trace runs at a time."""
    import torch.fx as fx

    class ThreadTracer(fx.Tracer):
        def __init__(self):
            super().__init__()
            self.thread = threading.get_ident()

        def call_module(self, m, forward, args, kwargs):
            if threading.get_ident() != self.thread:
                return forward(*args, **kwargs)
            return super().call_module(m, forward, args, kwargs)

        def getattr(self, attr, attr_val, parameter_proxy_cache):
            if threading.get_ident() != self.thread:
                return attr_val
            return super().getattr(attr, attr_val, parameter_proxy_cache)

    with _TRACE_LOCK:
        return ThreadTracer().trace(model)


def split_model(model: nn.Module, layers: Sequence[str]) -> ModelSplit | None:
    """A `ModelSplit` of `model` below each of `layers` (those that are module calls of the trace),
    or None where torch.fx cannot trace the model (data-dependent control flow) or no layer is a
    module call of the trace; the caller then runs the whole model."""
    import torch.fx as fx

    try:  # the graph alone (symbolic_trace would also compile a module for it)
        graph = (model.graph if isinstance(model, fx.GraphModule) else  # a graph kept by its own class (not
                 type(model).__dict__.get("fx_graph") or _trace(model))    # a swapped subclass): `graph_as_module`
    except Exception:  # noqa: BLE001 - any tracing failure means: run the whole model instead
        return None
    gm = model
    nodes = list(graph.nodes)
    if not nodes or nodes[-1].op != "output":
        return None
    above, cuts = {}, {}
    for layer in layers:
        if not any(n.op == "call_module" and n.target == layer for n in nodes):
            continue
        up: set = set()  # the layer's calls and every node that depends on them
        for n in nodes[:-1]:
            if (n.op == "call_module" and n.target == layer) or any(a in up for a in n.all_input_nodes):
                up.add(n)
        rerun = up | {nodes[-1]}
        above[layer] = up
        cuts[layer] = [n for n in nodes if n not in rerun and n.op != "get_attr" and any(u in rerun for u in n.users)]
    if not cuts:
        return None
    try:
        return ModelSplit(gm, nodes, above, cuts)
    except Exception:  # noqa: BLE001
        return None


class LayerTail:
    """The part of a model above one layer (see `ModelSplit`): `capture(X) -> (output, cut)`,
    `run(cut) -> output`."""

    def __init__(self, split: ModelSplit, layer: str):
        self.split, self.layer = split, layer

    def capture(self, X: torch.Tensor) -> tuple[object, tuple[torch.Tensor, ...]]:
        out, cuts = self.split.capture(X, [self.layer])
        return out, cuts[self.layer]

    def run(self, cut: tuple) -> object:
        return self.split.run(self.layer, cut)


def layer_tail(model: nn.Module, layer_name: str) -> LayerTail | None:
    """A `LayerTail` of `model` at `layer_name`, or None where the model cannot be split there."""
    split = split_model(model, [layer_name])
    return LayerTail(split, layer_name) if split is not None else None
