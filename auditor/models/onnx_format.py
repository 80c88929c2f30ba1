"""ONNX in and out: an `.onnx` file becomes an editable, hookable `nn.Module`; edits go back to ONNX.

Loading parses the protobuf with `onnx` (no code runs), refuses weights stored in external
files, checks the graph, and converts it with onnx2torch. A chain of layers becomes an
`nn.Sequential` with the layer names of the original (`fc1/Gemm` -> `fc1`); when the spec names
a registered architecture (`mlp`, `cnn`) whose weights match, the model is rebuilt as exactly
that architecture, so every editor treats it like a native model. Other graphs stay a
`torch.fx.GraphModule` (their Linear and Conv2d layers are still hookable and editable).

The spec comes from the ONNX metadata (`metadata_props`, key `auditor.spec`) or from `--spec`.

Export uses PyTorch's TorchScript-based exporter (`dynamo=False`): it works offline, keeps the
layer names and emits opset 17, which onnx2torch reads back. The torch.export-based exporter
needs onnxscript, takes seconds per model, renames every layer and writes opset 18+ Reshape
nodes that onnx2torch cannot convert.

onnx2torch declares torchvision as a dependency but needs it only for the NMS and RoIAlign
operators; install it with `pip install --no-deps onnx2torch` (installing torchvision could
replace a CPU or CUDA torch build). Those two operators then fail with a clear message.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import operator
import os
import re
import sys
import threading
import types
import warnings
from collections import OrderedDict
from pathlib import Path, PurePath

import numpy as np
import torch
from torch import nn

from ..errors import AuditorError
from .architectures import ARCHITECTURES, build_architecture
from .files import (
    CHECKSUM_KEY,
    CHECKSUMMED,
    CHECKSUMMED_KEY,
    LOADERS,
    SAVERS,
    SPEC_KEY,
    ModelBundle,
    _check_finite,
    fit_state,
    load_state_into,
)
from .reading import embedded_spec
from .spec import ModelSpec

OPSET = 17
INSTALL_HINT = "ONNX support needs `pip install onnx onnxruntime` and `pip install --no-deps onnx2torch`"
_IMPORT_LOCK = threading.Lock()


def _onnx():
    try:
        import onnx
    except ModuleNotFoundError:
        raise AuditorError(INSTALL_HINT) from None
    return onnx


def _onnx2torch():
    """Import onnx2torch; without torchvision, put in a stand-in module that only its NMS/RoIAlign ops touch."""
    with _IMPORT_LOCK:
        if "onnx2torch" in sys.modules:
            return sys.modules["onnx2torch"]
        if importlib.util.find_spec("onnx2torch") is None:
            raise AuditorError(INSTALL_HINT)
        stand_in = importlib.util.find_spec("torchvision") is None
        if stand_in:
            def missing(*_a, **_k):
                raise AuditorError("this ONNX model uses NMS or RoIAlign, which need torchvision")
            tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
            ops.nms = ops.box_convert = ops.roi_align = missing
            tv.ops = ops
            sys.modules["torchvision"], sys.modules["torchvision.ops"] = tv, ops
        try:
            import onnx2torch
        finally:
            if stand_in:  # nobody else should ever see the stand-in
                sys.modules.pop("torchvision", None)
                sys.modules.pop("torchvision.ops", None)
        return onnx2torch


def onnx_checksum(proto, meta: dict) -> str:
    """sha256 over the graph (weights, operators, attributes), the opsets and every metadata item
    but the checksum: any change to what the model computes or says about itself shows."""
    h = hashlib.sha256(proto.graph.SerializeToString(deterministic=True))
    for op in proto.opset_import:
        h.update(f"{op.domain}:{op.version};".encode())
    h.update(json.dumps({k: v for k, v in meta.items() if k != CHECKSUM_KEY}, sort_keys=True).encode())
    return h.hexdigest()


def _tensors(graph):
    """Every TensorProto in a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _input_dims(proto) -> list:
    """Dims (int or None for symbolic) of the graph's first real input."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise AuditorError(f"the ONNX graph has {len(inputs)} inputs; the auditor takes models with one input")
    shape = inputs[0].type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def channels_last(shape, graph) -> bool:
    """Whether a graph whose input is `graph` (without the batch) reads images of shape `shape` (C, H, W)
    channels last, (H, W, C), as TensorFlow's exports do."""
    shape, graph = [int(s) for s in shape or []], list(graph or [])
    return len(shape) == 3 and shape != graph and graph == [shape[1], shape[2], shape[0]]


def _transpose_input(proto):
    """The graph fed (N, C, H, W) images: a new input, transposed to the graph's own (N, H, W, C) one."""
    onnx = _onnx()
    from onnx import helper

    proto = copy.deepcopy(proto)
    inits = {t.name for t in proto.graph.initializer}
    old = next(i for i in proto.graph.input if i.name not in inits)
    name, dims = old.name, list(old.type.tensor_type.shape.dim)
    inner = f"{name}_channels_last"  # the graph's own input, now the Transpose's output; the input keeps its name
    _rename_value(proto.graph, name, inner)
    new = helper.make_tensor_value_info(name, old.type.tensor_type.elem_type, [
        d.dim_param if not d.HasField("dim_value") else d.dim_value for d in (dims[0], dims[3], dims[1], dims[2])])
    node = helper.make_node("Transpose", [name], [inner], perm=[0, 2, 3, 1], name="auditor_channels_last")
    index = list(proto.graph.input).index(old)
    proto.graph.input.remove(old)
    proto.graph.input.insert(index, new)
    proto.graph.node.insert(0, node)
    onnx.checker.check_model(proto)
    return proto


class ChannelsLastInput(nn.Module):
    """A model that reads (N, C, H, W) images, exported with the vendor's (N, H, W, C) input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.permute(0, 3, 1, 2))


def _clean_name(name: str) -> str:
    """`fc1/Gemm` -> `fc1`, `/layers/0/Gemm` -> `layers_0`, `Gemm_3` -> `Gemm_3`."""
    parts = [p for p in str(name).split("/") if p]
    if len(parts) > 1:
        parts = parts[:-1]
    out = re.sub(r"[^0-9A-Za-z_]", "_", "_".join(parts)).strip("_")
    return out or "layer"


def _module_path(name: str) -> str | None:
    """The PyTorch module a layer of torch's ONNX export came from, from the scopes in its name as onnx2torch
    keeps them (dots made slashes). The exporter scopes a container's child as `<container's scope>.<name>`, so
    `/layer4/layer4.0/downsample/downsample.0/Conv` (read as `layer4/layer4/0/downsample/downsample/0/Conv`) is
    `layer4.0.downsample.0`, and `/features/features.6/features.6.0/Conv` is `features.6.0`: a run of tokens that
    repeats the scope before it is that scope's child. None when the name holds no scope."""
    tokens = [p for p in str(name).split("/") if p][:-1]
    if not tokens:
        return None
    path: list[str] = []
    scope: list[str] = []
    i = 0
    while i < len(tokens):
        if scope and i + len(scope) < len(tokens) and tokens[i:i + len(scope)] == scope:
            scope = [*scope, tokens[i + len(scope)]]  # a container's child: its scope, one name longer
            i += len(scope)
        else:
            scope = [tokens[i]]
            i += 1
        path.append(scope[-1])
    return ".".join(re.sub(r"[^0-9A-Za-z_]", "_", p) for p in path)


def _unique(base: str, taken) -> str:
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name


_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_MODULE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")


def _weight_paths(proto) -> dict[str, str]:
    """onnx2torch's module name for each layer node -> the PyTorch module its weight came from, where the weight
    keeps its state-dict name (`layer1.0.conv1.weight`, as torch's dynamo exporter writes it even with the batch
    norm folded in); the names are made as onnx2torch makes them (the node's name, dots made slashes, a counter
    for repeats)."""
    inits = {t.name for t in proto.graph.initializer}
    out, counters = {}, {}
    for node in proto.graph.node:
        name = (f"{node.domain}/" + (node.name.replace(".", "/") or node.op_type)).lstrip("/")
        seen = counters.setdefault(name, 0)
        counters[name] += 1
        target = name + (f"_{seen}" if seen else "")
        if node.op_type in _WEIGHTED and len(node.input) > 1 and node.input[1] in inits:
            weight = node.input[1]
            if weight.endswith(".weight") and _MODULE_PATH.match(weight[:-len(".weight")]):
                out[target] = weight[:-len(".weight")]
    return out


def _tidy(gm: torch.fx.GraphModule, hints: dict[str, str] | None = None) -> nn.Module:
    """Readable layer names; a plain chain of layers becomes an `nn.Sequential`. Other graphs name each layer
    as the module it was exported from: the state-dict name of its weight where the graph keeps it (`hints`,
    `_weight_paths`), else the scopes in the node's name (`layer4.0.conv1`, for torch's TorchScript export),
    nested as in that module."""
    hints = hints or {}
    nodes = list(gm.graph.nodes)
    calls = [n for n in nodes if n.op == "call_module"]
    names: dict[str, str] = {}
    chain = (len(nodes) == len(calls) + 2 and nodes[0].op == "placeholder" and nodes[-1].op == "output"
             and all(n.args == (prev,) and not n.kwargs for prev, n in zip([nodes[0], *calls], calls))
             and nodes[-1].args in ((calls[-1],), ((calls[-1],),)) if calls else False)
    if chain:  # an nn.Sequential's children cannot hold dots: `features.0.0` becomes `features_0_0`
        for n in calls:
            names[n.target] = _unique((hints.get(n.target) or _module_path(n.target)
                                       or _clean_name(n.target)).replace(".", "_"), names.values())
        return nn.Sequential(OrderedDict((names[n.target], gm.get_submodule(n.target)) for n in calls))
    paths = {n.target: hints.get(n.target) or _module_path(n.target) or _clean_name(n.target).lower()
             for n in calls}
    prefixes = {".".join(p.split(".")[:k]) for p in paths.values() for k in range(1, p.count(".") + 1)}
    for n in calls:  # an operation of a container's own forward (a residual block's Add): under its op's name
        if paths[n.target] in prefixes:
            op = re.sub(r"[^0-9A-Za-z_]", "_", str(n.target).rsplit("/", 1)[-1]).lower() or "op"
            paths[n.target] = f"{paths[n.target]}.{op}"
    for n in calls:
        names[n.target] = _unique(paths[n.target], set(names.values()) | prefixes)
    graph, root = _retargeted(gm.graph, gm, names)
    from .custom import graph_as_module, nested_module

    return graph_as_module(torch.fx.GraphModule(nested_module(root), graph, class_name="OnnxModel"), "OnnxModel")


def _retargeted(graph: torch.fx.Graph, owner: nn.Module, names: dict[str, str]) -> tuple[torch.fx.Graph, dict]:
    """A copy of `graph` whose layers are called under `names` (old target -> new), and the layers and tensors
    it reads (from `owner`), under the names the copy reads them by."""
    graph = copy.deepcopy(graph)
    root: dict = {}
    for n in graph.nodes:
        if n.op == "call_module":
            root[names[n.target]] = owner.get_submodule(n.target)
            n.target = names[n.target]
        elif n.op == "get_attr":
            root[n.target] = operator.attrgetter(n.target)(owner)
    return graph, root


def _probe_shape(spec: ModelSpec, dims: list) -> list[int]:
    shape = spec.input.get("shape")
    if shape:
        return [int(s) for s in shape]
    if spec.arch.get("in_features"):
        return [int(spec.arch["in_features"])]
    if spec.input.get("features"):
        return [len(spec.input["features"])]
    if dims and all(d for d in dims[1:]):
        return [int(d) for d in dims[1:]]
    raise AuditorError("cannot tell the model's input size: give it in the spec (input.shape or arch.in_features)")


def _check_input_matches(spec: ModelSpec, dims: list, name: str) -> None:
    graph = dims[1:]
    if not graph or any(d is None or d == 0 for d in graph):
        return
    want = spec.input.get("shape") or ([spec.arch["in_features"]] if spec.arch.get("in_features") else None)
    if want and [int(w) for w in want] != list(graph):
        raise AuditorError(f"{name}: the ONNX graph takes inputs of shape {list(graph)} but the spec says "
                           f"{list(want)}; fix the spec")


def _as_registered(module: nn.Module, spec: ModelSpec, probe: torch.Tensor) -> nn.Module:
    """The spec's registered architecture holding `module`'s weights, if it computes the same; else `module`."""
    if spec.arch.get("name") not in ARCHITECTURES:
        return module
    state = module.state_dict()
    try:
        with torch.device("meta"):  # names as exported (`0.weight` of an nn.Sequential) fit in order
            state = fit_state(build_architecture(spec.arch), state)
        native = load_state_into(build_architecture(spec.arch), state)
    except AuditorError:
        return module
    with torch.no_grad():
        same = torch.allclose(native(probe), module(probe), atol=1e-5, rtol=1e-4)
    return native if same else module


def _convert(proto, spec: ModelSpec, name: str):
    """The graph as a torch module (onnx2torch). onnx2torch knows some operators only in their older
    versions (AveragePool 19, which torch's exporter writes by default, is not among them): a graph above
    opset `OPSET` that it cannot convert is brought down to `OPSET` with ONNX's own version converter (the
    same computation), which the spec's provenance records."""
    try:
        return _onnx2torch().convert(proto)
    except NotImplementedError as exc:
        first = exc
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > OPSET:
        try:
            from onnx import version_converter

            converted = _onnx2torch().convert(version_converter.convert_version(proto, OPSET))
        except Exception:  # noqa: BLE001 - the first error says what is missing
            pass
        else:
            spec.provenance["onnx_opset_converted"] = {"from": int(opset), "to": OPSET}
            return converted
    hint = (f"; ONNX's version converter could not bring this opset-{opset} graph down to {OPSET} either (an "
            f"operator new after opset {OPSET}, such as Gelu): re-export it with opset_version={OPSET} (PyTorch: "
            f"torch.onnx.export(..., opset_version={OPSET}, dynamo=False)), which writes such operators in older "
            "ones" if opset > OPSET else "")
    if "mean/var output" in str(first):  # BatchNormalization with its training outputs
        hint += "; the graph was exported in training mode: call model.eval() before torch.onnx.export"
    raise AuditorError(f"{name}: an ONNX operator is not supported: {str(first)[:200]}{hint}") from None


def _inline_identities(proto):
    """The graph with every Identity of a weight replaced by a copy of that weight under the Identity's output
    name. torch's exporter shares equal weights that way (two convolutions whose folded biases are both zero),
    and onnx2torch reads a convolution's weights only from the graph's initializers."""
    inputs = {i.name for i in proto.graph.input}

    def of_weight(node) -> bool:
        return (node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in inits
                and node.input[0] not in inputs)

    inits = {t.name: t for t in proto.graph.initializer}
    if not any(of_weight(n) for n in proto.graph.node):
        return proto
    proto = copy.deepcopy(proto)
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if of_weight(node):
            twin = copy.deepcopy(inits[node.input[0]])
            twin.name = node.output[0]
            graph.initializer.append(twin)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    return proto


def _plain_reshapes(proto):
    """The graph with `allowzero=1` dropped from every Reshape whose shape is a constant holding no 0 (where the
    flag changes nothing): torch's dynamo exporter sets it on every Reshape, and onnx2torch reads none."""
    from onnx import numpy_helper

    consts = {t.name: t for t in proto.graph.initializer}
    consts.update({n.output[0]: a.t for n in proto.graph.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})

    def flagged(node) -> bool:
        return node.op_type == "Reshape" and any(a.name == "allowzero" and a.i == 1 for a in node.attribute)

    plain = [i for i, n in enumerate(proto.graph.node) if flagged(n) and len(n.input) > 1 and n.input[1] in consts
             and 0 not in numpy_helper.to_array(consts[n.input[1]]).tolist()]  # by place: names may repeat
    if not plain:
        return proto
    proto = copy.deepcopy(proto)
    for i in plain:
        for a in proto.graph.node[i].attribute:
            if a.name == "allowzero":
                a.i = 0
    return proto


_HALF_TYPES = {10: "float16", 16: "bfloat16"}  # TensorProto.FLOAT16, TensorProto.BFLOAT16


def _as_float32(proto) -> tuple[object, str | None]:
    """A half-precision graph (float16 or bfloat16 weights, inputs and casts) as the same graph in float32
    (its weights read exactly), and the half precision it was stored in (None: nothing to change)."""
    onnx = _onnx()
    from onnx import numpy_helper

    graph = proto.graph
    found = {_HALF_TYPES[t.data_type] for t in graph.initializer if t.data_type in _HALF_TYPES}
    values = [*graph.input, *graph.output, *graph.value_info]
    found |= {_HALF_TYPES[v.type.tensor_type.elem_type] for v in values
              if v.type.tensor_type.elem_type in _HALF_TYPES}
    if not found:
        return proto, None
    single = any(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)  # float32 weights beside them
    proto = copy.deepcopy(proto)
    graph = proto.graph

    def widen(t):
        if t.data_type in _HALF_TYPES:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    for t in graph.initializer:
        widen(t)
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.type.tensor_type.elem_type in _HALF_TYPES:
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i in _HALF_TYPES:
                a.i = onnx.TensorProto.FLOAT
            elif a.type == onnx.AttributeProto.TENSOR:
                widen(a.t)
    return proto, (found.pop() if len(found) == 1 and not single else "mixed")


def _fix_layer_norms(module: nn.Module) -> None:
    """onnx2torch sizes a LayerNorm from the graph's shape information and, where the graph has none (a
    dynamic batch, no value_info), builds it over no dimensions at all (normalized_shape (0,) or ()); the
    weight it carries says the real size, so take it from there."""
    for layer in module.modules():
        if isinstance(layer, nn.LayerNorm) and layer.weight is not None:
            want = tuple(layer.weight.shape)
            if tuple(layer.normalized_shape) != want:
                layer.normalized_shape = want


def _read_external_data(proto, path: Path) -> None:
    """Read the weights a graph keeps in files beside it (torch's default exporter writes `model.onnx.data`), in
    place: each file must be a plain name in the model's own folder (no path), hold every byte range named, and
    all of them together fit the model size budget; else refused naming the file and the fix."""
    from onnx.external_data_helper import load_external_data_for_model

    from .reading import DEFAULT_MAX_BYTES

    one_file = ("(or write the model as one file: PyTorch torch.onnx.export(..., external_data=False), onnx "
                "onnx.save_model(model, path, save_as_external_data=False))")
    total, sizes = 0, {}
    for t in _tensors(proto.graph):
        if t.data_location != _onnx().TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        if not loc or loc in (".", "..") or PurePath(loc).name != loc or "\\" in loc or ":" in loc:
            raise AuditorError(f"{path.name}: tensor {t.name!r} names its weights file as {loc[:80]!r}, not a file "
                               f"in the model's own folder; the auditor reads weights files only from there "
                               f"{one_file}")
        file = path.parent / loc
        if loc not in sizes:
            if not file.is_file() or file.is_symlink():
                raise AuditorError(f"{path.name} keeps its weights in {loc}, which is not beside it: put {loc} in the "
                                   f"same folder {one_file}; the dashboard takes one file")
            sizes[loc] = file.stat().st_size
        try:
            offset = int(info.get("offset", 0))
            length = int(info.get("length", sizes[loc] - offset))
        except ValueError:
            raise AuditorError(f"{path.name}: tensor {t.name!r} gives a byte range that is not a number") from None
        if offset < 0 or length < 0 or offset + length > sizes[loc]:
            raise AuditorError(f"{path.name}: tensor {t.name!r} reads bytes {offset}-{offset + length} of {loc}, which "
                               f"holds {sizes[loc]}: the weights file does not belong to this model, or is cut short")
        total += length
    if total > DEFAULT_MAX_BYTES:
        raise AuditorError(f"{path.name}: its weights files hold {total / 2**20:.1f} MiB, over the limit of "
                           f"{DEFAULT_MAX_BYTES / 2**20:.0f} MiB")
    try:
        load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:  # noqa: BLE001 - onnx's own checks (a file it will not read)
        raise AuditorError(f"{path.name}: its weights files cannot be read ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}) {one_file}") from None


def load_onnx(path: str | os.PathLike, spec: ModelSpec | None = None) -> ModelBundle:
    """Load an `.onnx` file (size already checked by `load_model`) as an editable bundle."""
    onnx = _onnx()
    path = Path(path)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError (and others) on a broken file
        raise AuditorError(f"{path.name} is not a readable ONNX file ({type(exc).__name__})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(proto.graph)):
        _read_external_data(proto, path)
    from .probe import check_declared, probe_in_subprocess, static_plan

    check_declared(_tensors(proto.graph), path.name)  # declared sizes, before conversion allocates them
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise AuditorError(f"{path.name} is not a valid ONNX model: {str(exc).splitlines()[0][:200]}") from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise AuditorError(f"{path.name} is corrupt: its metadata is not text")
    spec, history = embedded_spec(meta, spec, path.name, "its ONNX metadata", onnx_checksum(proto, meta))
    from .onnx_heads import SIGMOID_ONE, keep_logits_output, split_head

    # a network that returns more than its logits (features, auxiliary heads): its logits output alone
    proto, dropped = keep_logits_output(proto, spec.arch.get("output"))
    if dropped:
        spec.provenance["onnx_outputs_left_out"] = dropped
        spec.provenance["onnx_logits"] = proto.graph.output[0].name
    proto, head = split_head(proto, path.name)  # a converter's classifier head: audit the network up to its scores
    if head is not None:
        spec.provenance["onnx_head"] = head
        if head["scores"] == SIGMOID_ONE and not spec.single_logit:  # sigmoid(z): z is one logit, read as [0, z]
            spec.single_logit = True
            spec.arch = {**spec.arch, "num_classes": 1}
    else:
        spec.provenance.pop("onnx_head", None)
    dims = _input_dims(proto)
    if spec.input_kind == "image" and channels_last(spec.input.get("shape"), dims[1:]):  # fed (C, H, W) images
        # through a Transpose in front of the TensorFlow-style graph
        proto = _transpose_input(proto)
        dims = [dims[0], dims[3], dims[1], dims[2]]
        spec.input = {**spec.input, "layout": "channels_last"}
    elif spec.input.get("layout") == "channels_last":
        spec.input = {k: v for k, v in spec.input.items() if k != "layout"}
    _check_input_matches(spec, dims, path.name)
    if len(dims) == 2 and dims[1] and "in_features" not in spec.arch:
        spec.arch["in_features"] = int(dims[1])
    proto = _plain_reshapes(_inline_identities(proto))
    proto, half = _as_float32(proto)  # computed in float32 like every model; written back in float32
    spec.weights_dtype = half
    try:
        converted = _convert(proto, spec, path.name)
    except AuditorError:
        raise
    except Exception as exc:
        raise AuditorError(f"{path.name}: cannot convert the ONNX graph to PyTorch: "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    _check_finite(converted.state_dict(), path)
    _fix_layer_norms(converted)
    module = _tidy(converted, _weight_paths(proto)).eval()
    probe = torch.randn(2, *_probe_shape(spec, dims), generator=torch.Generator().manual_seed(0))
    fixed = (f"; the graph's batch axis is fixed to 1 (input {list(dims)}): export it again with a batch axis, "
             "e.g. torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})"
             if dims and dims[0] == 1 else "")
    if not static_plan(proto, 2, path.name):  # a shape not known in advance: run it first under limits
        import tempfile

        # the graph as read here (its weights files read in, its Reshapes plain, ...), in a file of its own
        with tempfile.TemporaryDirectory(prefix="auditor-probe-") as folder:
            prepared = Path(folder) / "graph.onnx"
            onnx.save_model(proto, str(prepared))
            try:
                probe_in_subprocess(prepared, list(probe.shape[1:]), path.name)
            except AuditorError as exc:
                if not fixed or type(exc) is not AuditorError:
                    raise
                raise AuditorError(f"{exc}{fixed}") from None
    try:
        with torch.no_grad():
            logits = module(probe)
    except Exception as exc:
        raise AuditorError(f"{path.name}: the converted model fails on an input of shape {list(probe.shape)}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}{fixed}") from None
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise AuditorError(f"{path.name}: the model must return one (batch, classes) tensor of logits")
    model = _as_registered(module, spec, probe)
    if model is module and spec.arch.get("name") != "onnx":
        # the graph's own computation (e.g. BatchNorm folded into convolutions), not the spec's architecture:
        # say so, so that it is written back as ONNX and never as weights the architecture cannot load
        spec.provenance["arch_in_spec"] = dict(spec.arch)
        spec.arch = {"name": "onnx", "num_classes": spec.num_classes,
                     **{k: spec.arch[k] for k in ("in_features", "output") if k in spec.arch}}
    if head is None and proto.graph.output:
        inputs = {i.name for i in proto.graph.initializer}
        first = next((i.name for i in proto.graph.input if i.name not in inputs), None)
        if (first, proto.graph.output[0].name) != ("input", "logits"):  # the vendor's own names: written back
            spec.provenance["onnx_io"] = {"input": first, "output": proto.graph.output[0].name}
    return ModelBundle(model.eval(), spec, str(path), "onnx", history)


def _input_shape(bundle: ModelBundle) -> list[int]:
    return _probe_shape(bundle.spec, [])


def _exportable(name: str, role: str) -> str:
    """`name`, or a stand-in torch's TorchScript exporter accepts (it refuses all-digit names)."""
    return f"auditor_{role}_{name}" if name.isdigit() else name


def _rename_value(graph, old: str, new: str) -> None:
    """Rename a value of an ONNX graph everywhere it appears (inputs, outputs, nodes, value infos)."""
    for v in (*graph.input, *graph.output, *graph.value_info):
        if v.name == old:
            v.name = new
    for node in graph.node:
        for field in (node.input, node.output):
            for i, name in enumerate(field):
                if name == old:
                    field[i] = new


_STAND_IN = re.compile(r"^auditor_layer_\d+$")


def _flat_for_export(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """A graph model whose layers sit at dotted names (`layer1.0.conv1`, as read from a vendor's graph) as one
    whose layers sit at stand-in names at its top, and the stand-in -> dotted name map. torch's exporter scopes a
    layer by how it is called, and the graph's code calls every layer from the top, so the written nodes would
    be named by the last part alone (`conv1_1`); with the map, `_name_nodes` gives them their place back."""
    graph = getattr(type(model), "fx_graph", None)
    targets = [n.target for n in graph.nodes if n.op == "call_module"] if graph is not None else []
    if not any("." in t for t in targets):
        return model, {}
    stand = {t: f"auditor_layer_{i}" for i, t in enumerate(dict.fromkeys(targets))}
    graph, root = _retargeted(graph, model, stand)
    return torch.fx.GraphModule(root, graph), {v: k for k, v in stand.items()}


def _name_nodes(proto, places: dict[str, str]) -> None:
    """Name each node a stand-in layer made after the layer's place (`/layer1/layer1.0/layer1.0.conv1/Conv`), as
    `_module_path` reads it back, and its weights after it (`layer1.0.conv1.weight`), as `_weight_paths` does."""
    renamed = {}
    for t in proto.graph.initializer:
        head, dot, rest = t.name.partition(".")
        if dot and _STAND_IN.match(head) and head in places:
            renamed[t.name] = f"{places[head]}.{rest}"
            t.name = renamed[t.name]
    for node in proto.graph.node:
        node.input[:] = [renamed.get(i, i) for i in node.input]
    for node in proto.graph.node:
        parts = node.name.split("/")
        hit = next((p for p in parts if _STAND_IN.match(p) and p in places), None)
        if hit is not None:  # each scope written whole, `/a/a.b/a.b.c/Op`, as `_module_path` reads it back
            pieces = places[hit].split(".")
            node.name = "/" + "/".join(".".join(pieces[:k]) for k in range(1, len(pieces) + 1)) + "/" + parts[-1]


def export_onnx(bundle: ModelBundle, path: str | os.PathLike, extra_metadata: dict | None = None, *,
                verify: bool = True, atol: float = 1e-4) -> Path:
    """Write `bundle` as a self-contained `.onnx` file (spec and history in its metadata).

    With `verify` (and onnxruntime installed) the file is run by onnxruntime on random inputs
    and must agree with the PyTorch model to `atol` (relative to the logits' scale), else
    nothing is written.
    """
    onnx = _onnx()
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise AuditorError(f"ONNX files end in .onnx; got {path.name}")
    model = copy.deepcopy(bundle.model).cpu().eval()
    if bundle.spec.single_logit:  # the vendor's one logit, not the [0, z] the audit reads
        from .custom import single_logit_base

        single_logit_base(model)
    model, places = _flat_for_export(model)
    shape = _input_shape(bundle)
    if bundle.spec.input.get("layout") == "channels_last":  # written back with the vendor's (N, H, W, C) input
        model, shape = ChannelsLastInput(model).eval(), [shape[1], shape[2], shape[0]]
    head = bundle.spec.provenance.get("onnx_head") if isinstance(bundle.spec.provenance, dict) else None
    head = head if isinstance(head, dict) and head.get("outputs") else None
    io = bundle.spec.provenance.get("onnx_io") if isinstance(bundle.spec.provenance, dict) else None
    io = io if isinstance(io, dict) and not head else {}
    input_name = str(head.get("input") or "input") if head else str(io.get("input") or "input")
    output_name = str(io.get("output") or "logits")
    if output_name == input_name:
        output_name = "logits"
    example = torch.zeros(2, *shape)
    # torch's exporter refuses names it numbers its own values with ("29", a graph exported without
    # output names): export under a stand-in, then give the file the vendor's name back
    names = {input_name: _exportable(input_name, "input"), output_name: _exportable(output_name, "logits")}
    from ..atomic import temp_beside

    tmp = temp_beside(path)  # unpredictable O_EXCL name: never follows a planted link
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                              input_names=[names[input_name]], output_names=[names[output_name]],
                              dynamic_axes={names[input_name]: {0: "batch"}, names[output_name]: {0: "batch"}})
        proto = onnx.load_model(str(tmp))
        _name_nodes(proto, places)
        for name, stand_in in names.items():
            if stand_in != name:
                _rename_value(proto.graph, stand_in, name)
        if head:  # the vendor's outputs (label, probabilities, ZipMap) from the edited logits
            from .onnx_heads import attach_head

            proto = attach_head(proto, head)
        meta = {SPEC_KEY: bundle.spec.to_json(), CHECKSUMMED_KEY: CHECKSUMMED,
                "auditor.history": json.dumps(bundle.history, sort_keys=True, default=str)}
        for k, v in (extra_metadata or {}).items():
            meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
        meta[CHECKSUM_KEY] = onnx_checksum(proto, meta)
        del proto.metadata_props[:]
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "auditor"
        onnx.save_model(proto, str(tmp))
        if verify:
            if head:
                from .onnx_heads import head_max_diff

                diff = head_max_diff(model, tmp, shape, head)
            else:
                diff = onnxruntime_max_diff(model, tmp, shape)
            if diff is not None and diff > atol:
                raise AuditorError(f"ONNX export of {bundle.name} disagrees with the PyTorch model "
                                   f"(max difference {diff:.2e}); not written")
        os.replace(tmp, path)
    except AuditorError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise AuditorError(f"cannot export {bundle.name} to ONNX: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return path


def onnxruntime_max_diff(model: nn.Module, onnx_path: str | os.PathLike, shape: list[int],
                         n: int = 64, seed: int = 0) -> float | None:
    """Largest |logit difference| between onnxruntime on the file and `model` on random inputs,
    relative to the logits' scale (divided by max(1, largest |logit|)); None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return None
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model.cpu().eval()(x).numpy()
    return float(abs(got - want).max() / max(1.0, float(abs(want).max())))


LOADERS[".onnx"] = load_onnx
SAVERS[".onnx"] = lambda bundle, path, extra_metadata=None: export_onnx(bundle, path, extra_metadata)
