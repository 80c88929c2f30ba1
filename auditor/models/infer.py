"""Architectures read off a state dict's shapes (for `sequential` specs without `layers`, and for
`auditor spec init`).

Weights say how wide every Linear and Conv2d layer is, not what sits between them. The stated
assumptions (also in docs/formats.md, "Model files"):

- the layers run in the order of the file (names in natural order: `2.weight` before `10.weight`);
- a ReLU follows every Linear and Conv2d layer but the last (after its BatchNorm, when it has one);
- convolutions have stride 1 and either "same" padding (kernel // 2) or none, the same for all;
- the first Linear layer follows a Flatten, with possibly 2x2 max-pools (after the last
  convolution, after each, or after one other) or a global average pool on the way: the
  arrangements whose flattened size equals the Linear layer's input width fit. Loading takes the
  first in `_pool_plans` order; `auditor spec init` tries each on the data and keeps the most
  accurate (a pool after the first convolution gives the same width as one after the last: the
  weights cannot tell them apart).

When a model does anything else (another activation, strides, dropout placement does not matter),
write `arch.layers` by hand; `auditor spec init` prints what it assumed.
"""
from __future__ import annotations

from ..errors import AuditorError
from .reading import module_order

DOCS = "see docs/formats.md#model-files"


def _ordered_modules(state: dict) -> list[tuple[str, dict]]:
    """(module name, {param: tensor}) in the file's order, or natural order for integer names."""
    keys = list(state)
    if all(k.split(".", 1)[0].isdigit() for k in keys):
        keys = sorted(keys, key=module_order)
    modules: dict[str, dict] = {}
    for k in keys:
        mod, _, param = k.rpartition(".")
        modules.setdefault(mod, {})[param] = state[k]
    return list(modules.items())


def weight_layers(state: dict) -> list[dict]:
    """Linear, Conv2d and BatchNorm layers in order: {"type", "name", shapes...}."""
    out = []
    for name, params in _ordered_modules(state):
        w = params.get("weight")
        if w is None:
            raise AuditorError(f"tensor {name + '.' + next(iter(params))!r} belongs to no layer with a weight; "
                               f"only Linear, Conv2d and BatchNorm layers can be read off a state dict ({DOCS})")
        if w.dim() == 2:
            out.append({"type": "linear", "name": name, "in": int(w.shape[1]), "out": int(w.shape[0]),
                        "bias": "bias" in params})
        elif w.dim() == 4:
            if w.shape[2] != w.shape[3]:
                raise AuditorError(f"tensor {name + '.weight'!r} is a {tuple(w.shape[2:])} convolution; only "
                                   f"square kernels are inferred: write arch.layers ({DOCS})")
            out.append({"type": "conv2d", "name": name, "in": int(w.shape[1]), "out": int(w.shape[0]),
                        "kernel": int(w.shape[2]), "bias": "bias" in params})
        elif w.dim() == 1 and "running_mean" in params:
            out.append({"type": "batchnorm", "name": name, "features": int(w.shape[0])})
        else:
            raise AuditorError(f"tensor {name + '.weight'!r} of shape {tuple(w.shape)} is no Linear (2-D), "
                               f"Conv2d (4-D) or BatchNorm weight ({DOCS})")
    if not out or out[-1]["type"] != "linear":
        raise AuditorError(f"the state dict does not end in a Linear layer (its last tensor: {list(state)[-1]!r}); "
                           f"a classifier's last layer gives the logits ({DOCS})")
    return out


def _check_chain(layers: list[dict]) -> None:
    width, prev_type = None, None
    for layer in layers:
        if layer["type"] == "batchnorm":
            if width is not None and layer["features"] != width:
                raise AuditorError(f"tensor {layer['name'] + '.weight'!r} normalises {layer['features']} "
                                   f"features but the layer before it gives {width} ({DOCS})")
            continue
        if width is not None and layer["type"] == "conv2d" and layer["in"] != width:
            raise AuditorError(f"tensor {layer['name'] + '.weight'!r} takes {layer['in']} channels but the "
                               f"layer before it gives {width} ({DOCS})")
        if width is not None and layer["type"] == "linear" and prev_type == "linear" and layer["in"] != width:
            raise AuditorError(f"tensor {layer['name'] + '.weight'!r} takes {layer['in']} inputs but the "
                               f"layer before it gives {width} ({DOCS})")
        if layer["type"] == "linear" and any(lt["type"] == "conv2d" for lt in layers[layers.index(layer) + 1:]):
            raise AuditorError(f"tensor {layer['name'] + '.weight'!r}: a Linear layer before a convolution "
                               f"cannot be inferred; write arch.layers ({DOCS})")
        width, prev_type = layer["out"], layer["type"]


def _conv_out(side: int, kernel: int, padding: int) -> int:
    return side + 2 * padding - kernel + 1


def _pool_plans(n: int):
    """(pool after these conv indices, global average pool, words) in order of preference."""
    yield frozenset(), False, "no pooling"
    yield frozenset({n - 1}), False, "a 2x2 max-pool after the last convolution"
    if n > 1:
        yield frozenset(range(n)), False, "a 2x2 max-pool after each convolution"
    yield frozenset(), True, "a global average pool after the last convolution"
    for i in range(n - 1):
        yield frozenset({i}), False, f"a 2x2 max-pool after convolution {i + 1}"


def _flatten_options(convs: list[dict], shape: list[int]):
    """(same padding?, pool after, global pool, words, flattened width) for every plan of how the convs reduce."""
    _, h, w = shape
    for same in (True, False):
        for pool_after, global_pool, words in _pool_plans(len(convs)):
            hh, ww = h, w
            for i, c in enumerate(convs):
                pad = c["kernel"] // 2 if same else 0
                hh, ww = _conv_out(hh, c["kernel"], pad), _conv_out(ww, c["kernel"], pad)
                if i in pool_after:
                    hh, ww = hh // 2, ww // 2
                if hh < 1 or ww < 1:
                    break
            else:
                width = convs[-1]["out"] * (1 if global_pool else hh * ww)
                yield same, pool_after, global_pool, words, width


def infer_layers(state: dict, input_shape: list[int] | None = None) -> tuple[list, list[str]]:
    """The `sequential` layers of a state dict (see the module's assumptions) and notes on what was assumed."""
    return infer_candidates(state, input_shape)[0]


def infer_candidates(state: dict, input_shape: list[int] | None = None) -> list[tuple[list, list[str]]]:
    """Every chain of layers that fits the state dict under the module's assumptions, the preferred one
    first (several when convolutions and pooling can be arranged in more than one way)."""
    layers = weight_layers(state)
    _check_chain(layers)
    base = ["a ReLU follows every Linear/Conv2d layer but the last"]
    convs = [x for x in layers if x["type"] == "conv2d"]
    first_linear = next(x for x in layers if x["type"] == "linear")
    if not convs:
        if input_shape and len(input_shape) == 1 and int(input_shape[0]) != first_linear["in"]:
            raise AuditorError(f"tensor {first_linear['name'] + '.weight'!r} takes {first_linear['in']} inputs but "
                               f"the spec's input.shape is {list(input_shape)} ({DOCS})")
        return [(_build(layers, convs, first_linear, True, frozenset(), False), base)]
    if not input_shape or len(input_shape) != 3:
        raise AuditorError("the state dict holds convolutions: give the image shape in the spec's "
                           f"input.shape ([channels, height, width]) so the layers can be inferred ({DOCS})")
    if convs[0]["in"] != input_shape[0]:
        raise AuditorError(f"tensor {convs[0]['name'] + '.weight'!r} takes {convs[0]['in']} channels but the "
                           f"input shape {list(input_shape)} has {input_shape[0]} ({DOCS})")
    fits = [o for o in _flatten_options(convs, input_shape) if o[4] == first_linear["in"]]
    if not fits:
        raise AuditorError(f"tensor {first_linear['name'] + '.weight'!r} takes {first_linear['in']} inputs, "
                           "which no assumed padding/pooling of the convolutions gives for images of "
                           f"shape {list(input_shape)}; write arch.layers ({DOCS})")
    out = []
    for same, pool_after, global_pool, words, _ in fits:
        notes = [*base, f"convolutions: stride 1, {'padding kernel//2 (same size)' if same else 'no padding'}",
                 f"{words}, then Flatten"]
        if len(fits) > 1:
            notes.append(f"{len(fits) - 1} other arrangement(s) of padding/pooling fit the weights too")
        out.append((_build(layers, convs, first_linear, same, pool_after, global_pool), notes))
    return out


def _build(layers: list[dict], convs: list[dict], first_linear: dict, same: bool, pool_after: frozenset,
           global_pool: bool) -> list:
    conv_index = {id(c): i for i, c in enumerate(convs)}
    last = [x for x in layers if x["type"] != "batchnorm"][-1]
    out: list = []
    for i, x in enumerate(layers):
        if x["type"] == "batchnorm":
            after_conv = layers[i - 1]["type"] == "conv2d" if i else bool(convs)
            out.append({"type": "batchnorm2d" if after_conv else "batchnorm1d", "features": x["features"]})
        else:
            if x is first_linear and convs:
                if global_pool:
                    out.append({"type": "adaptive_avgpool2d", "size": 1})
                out.append("flatten")
            layer = {k: v for k, v in x.items() if k not in ("name", "bias")}
            if not x["bias"]:
                layer["bias"] = False
            if x["type"] == "conv2d":
                layer["padding"] = x["kernel"] // 2 if same else 0
            out.append(layer)
        if i + 1 < len(layers) and layers[i + 1]["type"] == "batchnorm":
            continue  # the ReLU (and pool) come after the BatchNorm
        owner = x if x["type"] != "batchnorm" else (layers[i - 1] if i else None)
        if owner is None:
            continue
        if owner is not last:
            out.append("relu")
        if owner["type"] == "conv2d" and conv_index[id(owner)] in pool_after:
            out.append({"type": "maxpool2d", "kernel": 2})
    return out


def as_registered(state: dict, input_shape: list[int] | None = None) -> dict | None:
    """An `mlp` or `cnn` arch whose tensors (in order) have exactly the state's shapes, else None.

    `mlp` is a chain of Linear layers with ReLUs; `cnn` is 3x3 "same" convolutions with ReLUs, one
    2x2 max-pool, Flatten, one hidden Linear layer and the output layer."""
    try:
        layers = weight_layers(state)
    except AuditorError:
        return None
    kinds = [x["type"] for x in layers]
    if set(kinds) == {"linear"} and all(x["bias"] for x in layers):
        return {"name": "mlp", "in_features": layers[0]["in"], "hidden": [x["out"] for x in layers[:-1]],
                "num_classes": layers[-1]["out"]}
    convs = [x for x in layers if x["type"] == "conv2d"]
    if (convs and kinds == ["conv2d"] * len(convs) + ["linear", "linear"] and input_shape
            and len(input_shape) == 3 and input_shape[1] == input_shape[2] and input_shape[1] % 2 == 0
            and all(x["kernel"] == 3 and x["bias"] for x in layers if x["type"] == "conv2d")
            and all(x["bias"] for x in layers) and convs[0]["in"] == input_shape[0]):
        side = input_shape[1] // 2
        if layers[-2]["in"] == convs[-1]["out"] * side * side:
            return {"name": "cnn", "in_channels": input_shape[0], "image_size": input_shape[1],
                    "channels": [c["out"] for c in convs], "hidden": layers[-2]["out"],
                    "num_classes": layers[-1]["out"]}
    return None
