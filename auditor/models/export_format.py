"""PyTorch 2 export archives (`.pt2`, written by `torch.export.save`), read without running code from them.

`torch.export.load` unpickles parts of an archive with `weights_only=False` and hands shape expressions to
sympy, so it is never called on a user's file. This reader takes the archive apart itself: the graph's
JSON, the weights' raw bytes (a pickled tensor only through `torch.load(weights_only=True)`), and the
auditor's spec from the archive's extra files when the auditor wrote it. It rebuilds the graph with
`torch.fx` from a fixed list of ATen operators (any other is refused by name), as a module whose forward is
that graph's code (`custom.graph_as_module`), with each linear layer, convolution and batch norm a real
`nn.Linear` / `nn.Conv2d` / `nn.BatchNorm` module under the vendor's own name (`head.1`), so attributions,
hooks and editors see the layers the vendor knows. Before it runs on data, the graph runs on meta tensors
(shapes only) against the probe budget. Edited models are written back with `torch.export` (a dynamic
batch axis, the spec and a checksum inside).
"""
from __future__ import annotations

import copy
import io
import json
import operator
import os
import re
import zipfile
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from ..errors import AuditorError
from .bundle import ModelBundle
from .files import LOADERS, SAVE_CHECKS, SAVERS
from .precision import HALF, stored_float_dtype
from .reading import CHECKSUM_KEY, CHECKSUMMED, CHECKSUMMED_KEY, SPEC_KEY, _check_finite, embedded_spec, file_checksum
from .spec import ModelSpec

HISTORY_KEY = "auditor.history"
_DTYPES = {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
           7: torch.float32, 8: torch.float64, 12: torch.bool, 13: torch.bfloat16}
_STRIDED = 7  # the archive's code for an ordinary (strided) tensor layout
_MEMORY_FORMATS = {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d,
                   4: torch.preserve_format}
_MAX_JSON = 64 * 1024 * 1024
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

# ATen operators the rebuilt graph may call, and what it calls for them (the torch function a traced
# PyTorch model shows, where there is one, so that the rest of the auditor reads the graph as it reads others)
_ELEMENTWISE = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}
_OPS = {
    "relu.default", "relu_.default", "tanh.default", "sigmoid.default", "gelu.default", "silu.default",
    "leaky_relu.default", "elu.default", "softplus.default", "hardtanh.default", "hardswish.default",
    "neg.default", "exp.default", "sqrt.default", "rsqrt.default", "pow.Tensor_Scalar", "abs.default",
    "add.Tensor", "add.Scalar", "sub.Tensor", "sub.Scalar", "mul.Tensor", "mul.Scalar", "div.Tensor",
    "div.Scalar", "flatten.using_ints", "view.default", "reshape.default", "permute.default", "transpose.int",
    "t.default", "contiguous.default", "clone.default", "unsqueeze.default", "squeeze.dim", "squeeze.dims",
    "max_pool2d.default", "max_pool2d_with_indices.default", "avg_pool2d.default", "adaptive_avg_pool2d.default",
    "mean.dim", "sum.dim_IntList", "amax.default", "cat.default", "dropout.default", "layer_norm.default",
    "softmax.int", "log_softmax.int", "_softmax.default", "_log_softmax.default", "sym_size.int",
    "matmul.default", "mm.default", "addmm.default", "bmm.default", "linear.default", "conv1d.default",
    "conv2d.default", "conv2d.padding", "batch_norm.default", "_native_batch_norm_legit_no_training.default",
    "constant_pad_nd.default", "slice.Tensor", "select.int", "expand.default", "hardsigmoid.default",
    "convolution.default", "native_layer_norm.default", "lift_fresh_copy.default", "detach.default",
    "detach_.default", "_to_copy.default", "to.dtype", "unflatten.int", "scaled_dot_product_attention.default",
    "split.Tensor", "split_with_sizes.default", "chunk.default", "unbind.int", "baddbmm.default",
    # the in-place forms `inplace=True` layers export (MobileNet's ReLU6, EfficientNet's SiLU), and clamps
    "hardtanh_.default", "silu_.default", "hardswish_.default", "hardsigmoid_.default", "leaky_relu_.default",
    "elu_.default", "sigmoid_.default", "tanh_.default", "add_.Tensor", "mul_.Tensor", "clamp.default",
    "clamp_min.default", "clamp_max.default", "minimum.default", "maximum.default", "adaptive_max_pool2d.default",
    "dropout_.default", "embedding.default",
}
# Python arithmetic on sizes (a symbolic batch size times the tokens, say) and taking one output of several


def metadata_assertion(*_args, **_kwargs) -> None:
    """`aten._assert_tensor_metadata`, which an explicit `.to(dtype)` in a forward exports: a check of the traced
    dtype that the graph, run in float32 here, need not repeat."""
    return None


_FUNCTIONS = {"_operator.getitem": operator.getitem, "_operator.mul": operator.mul, "_operator.add": operator.add,
              "_operator.sub": operator.sub, "_operator.floordiv": operator.floordiv,
              "torch.ops.aten._assert_tensor_metadata.default": metadata_assertion}


def _refuse(name: str, what: str) -> AuditorError:
    return AuditorError(f"{name}: {what}; the auditor reads .pt2 archives of plain ATen operators (torch.export "
                        "of an nn.Module in eval mode); export the model to ONNX instead, or pass its weights and a "
                        "spec")


class OutputChoice(AuditorError):
    """A program with several outputs and no spec saying which is the logits (`count`: how many)."""

    def __init__(self, message: str, count: int):
        super().__init__(message)
        self.count = count


class _Archive:
    """The files of one `torch.export.save` archive (one model), read from the zip without unpickling."""

    def __init__(self, path: Path, max_bytes: int):
        self.name = path.name
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except Exception as exc:  # noqa: BLE001 - zipfile raises many kinds on a damaged file
            raise AuditorError(f"{path.name} is not a readable .pt2 archive ({type(exc).__name__})") from None
        try:
            self._index(path, infos, max_bytes)
        except AuditorError:
            self.zip.close()
            raise

    def _index(self, path: Path, infos: list, max_bytes: int) -> None:
        """Where the archive's files are (`prefix`, `names`) and its one program (`model`), checked."""
        if sum(i.file_size for i in infos) > max_bytes:
            raise AuditorError(f"{path.name}: the archive unpacks to more than {max_bytes >> 20} MiB; refused")
        names = [i.filename for i in infos]
        marker = _format_marker(names)
        if marker is None:
            raise AuditorError(f"{path.name} is no torch.export archive (it has no archive_format entry): "
                               "write it with torch.export.save")
        self.prefix = marker[: -len("archive_format")]
        self.names = set(names)
        if self.read(marker[len(self.prefix):]).strip() != b"pt2":
            raise AuditorError(f"{path.name}: its archive format is not pt2")
        models = [n[len(self.prefix) + len("models/"):-len(".json")] for n in names
                  if n.startswith(self.prefix + "models/") and n.endswith(".json")]
        if len(models) != 1 or not _SAFE_NAME.match(models[0]):
            raise AuditorError(f"{path.name} holds {len(models)} exported programs; the auditor reads an archive "
                               "of one (torch.export.save of one ExportedProgram)")
        self.model = models[0]

    def read(self, rel: str) -> bytes:
        full = self.prefix + rel
        if full not in self.names:
            raise AuditorError(f"{self.name}: the archive lacks {rel}")
        try:
            return self.zip.read(full)  # checked against the record's CRC-32
        except Exception as exc:  # noqa: BLE001 - zipfile raises many kinds on a damaged record
            raise AuditorError(f"{self.name}: its entry {rel} is damaged ({type(exc).__name__}); get a fresh "
                               "copy") from None

    def json(self, rel: str):
        raw = self.read(rel)
        if len(raw) > _MAX_JSON:
            raise AuditorError(f"{self.name}: {rel} is over {_MAX_JSON >> 20} MiB; refused as implausible")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise AuditorError(f"{self.name}: {rel} is not valid JSON; the archive is damaged") from None

    def extra(self) -> dict:
        """The archive's extra files (`torch.export.save(..., extra_files=)`) as text."""
        out = {}
        for n in sorted(self.names):
            if n.startswith(self.prefix + "extra/"):
                rel = n[len(self.prefix):]
                try:
                    out[rel[len("extra/"):]] = self.read(rel).decode("utf-8")
                except UnicodeDecodeError:
                    raise AuditorError(f"{self.name}: extra file {n!r} is not text") from None
        return out

    def tensors(self, folder: str, config: str) -> dict[str, torch.Tensor]:
        """The tensors a payload config lists (weights or constants), each from its raw bytes."""
        entries = self.json(f"data/{folder}/{self.model}_{config}.json").get("config", {})
        if not isinstance(entries, dict):
            raise AuditorError(f"{self.name}: data/{folder} lists no tensors; the archive is damaged")
        out = {}
        for fqn, meta in entries.items():
            file = str(meta.get("path_name", ""))
            if not _SAFE_NAME.match(file) or not file.startswith(("weight_", "tensor_")):
                raise _refuse(self.name, f"{fqn!r} is stored as {file!r}, which is no tensor (a custom object)")
            raw = self.read(f"data/{folder}/{file}")
            if meta.get("use_pickle"):
                try:
                    value = torch.load(io.BytesIO(raw), weights_only=True)
                except Exception as exc:  # noqa: BLE001 - an unpickling refusal names what the file wanted
                    raise AuditorError(f"{self.name}: tensor {fqn!r} needs unpickling arbitrary objects, which "
                                       f"could run code: {str(exc).splitlines()[0][:160]}") from None
                if not isinstance(value, torch.Tensor):
                    raise _refuse(self.name, f"{fqn!r} is no tensor")
            else:
                value = _strided(raw, meta.get("tensor_meta") or {}, f"{self.name}: tensor {fqn!r}")
            out[fqn] = value
        return out


def _format_marker(names: list[str]) -> str | None:
    """The archive's `archive_format` entry (under the folder torch names after the file), or None."""
    return next((n for n in names if n == "archive_format" or n.endswith("/archive_format")), None)


def is_pt2_archive(path: Path) -> bool:
    """Whether `path` is a `torch.export.save` archive, whatever its name."""
    try:
        with zipfile.ZipFile(path) as z:
            marker = _format_marker(z.namelist())
            return marker is not None and z.read(marker).strip() == b"pt2"
    except Exception:  # noqa: BLE001 - unreadable as a zip (damaged, another format): not such an archive
        return False


def _ints(values, what: str) -> list[int]:
    out = []
    for v in values or []:
        if not isinstance(v, dict) or not isinstance(v.get("as_int"), int):
            raise AuditorError(f"{what} has a symbolic size; the archive's weights must have fixed shapes")
        out.append(int(v["as_int"]))
    return out


def _strided(raw: bytes, meta: dict, what: str) -> torch.Tensor:
    dtype = _DTYPES.get(meta.get("dtype"))
    if dtype is None or meta.get("layout", _STRIDED) != _STRIDED:
        raise AuditorError(f"{what}: dtype code {meta.get('dtype')} / layout {meta.get('layout')} is not read "
                           "(floating point, integer or bool tensors of the ordinary layout are)")
    sizes, strides = _ints(meta.get("sizes"), what), _ints(meta.get("strides"), what)
    offset = _ints([meta.get("storage_offset", {"as_int": 0})], what)[0]
    item = torch.empty((), dtype=dtype).element_size()
    if len(raw) % item or len(sizes) != len(strides) or offset < 0 or any(s < 0 for s in sizes + strides):
        raise AuditorError(f"{what}: its bytes do not fit its dtype and shape; the archive is damaged")
    flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
    last = offset + sum((n - 1) * s for n, s in zip(sizes, strides)) if all(sizes) else -1
    if last >= flat.numel():
        raise AuditorError(f"{what}: shape {sizes} reaches past its {flat.numel()} stored values; the archive is "
                           "damaged")
    return torch.as_strided(flat, sizes, strides, offset).clone()


def _aten(target: str, name: str):
    if target in _FUNCTIONS:
        return _FUNCTIONS[target]
    op = target[len("torch.ops.aten."):] if target.startswith("torch.ops.aten.") else None
    if op not in _OPS:
        raise _refuse(name, f"operator {target!r} is not among those the auditor reads")
    packet, overload = op.split(".")
    if overload == "default" and packet in _ELEMENTWISE:
        return _ELEMENTWISE[packet]
    if op == "flatten.using_ints":
        return torch.flatten
    return getattr(getattr(torch.ops.aten, packet), overload)


class _Builder:
    """The archive's graph as a module running a `torch.fx` graph (see the module's docstring)."""

    def __init__(self, program: dict, state: dict[str, torch.Tensor], name: str, output: int | None = None):
        self.name = name
        # a half-precision program runs in float32: its weights read exactly, its casts to half made to float32
        self.widen = stored_float_dtype(state) in (*HALF, "mixed")
        if self.widen:
            state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        gm = program.get("graph_module") or {}
        self.graph_json, signature = gm.get("graph") or {}, gm.get("signature") or {}
        self.state = state
        self.graph = torch.fx.Graph()
        self.root: dict[str, object] = {}
        self.values: dict[str, object] = {}  # value name -> fx Node, or ("tensor", fqn) not yet fetched
        self.users: dict[str, int] = {}
        self.user_input = self.output = None
        for spec in signature.get("input_specs", []):
            kind, body = next(iter(spec.items()))
            if kind in ("parameter", "buffer", "tensor_constant"):
                fqn = body.get("parameter_name") or body.get("buffer_name") or body.get("tensor_constant_name")
                if fqn not in state:
                    raise AuditorError(f"{name}: the graph reads {fqn!r}, which the archive does not hold")
                self.values[body["arg"]["name"]] = ("tensor", fqn)
            elif kind == "user_input" and "as_tensor" in body.get("arg", {}) and self.user_input is None:
                self.user_input = body["arg"]["as_tensor"]["name"]
            else:
                raise _refuse(name, f"the program takes an input of kind {kind!r} (one tensor, the model's "
                                    "input, is read)")
        if _training_mode(self.graph_json, signature):
            raise AuditorError(f"{name}: the program was exported in training mode (its batch norms update their "
                               "statistics, or its dropout drops): call model.eval() before torch.export.export, "
                               "then save it again")
        outputs = []
        for spec in signature.get("output_specs", []):
            kind, body = next(iter(spec.items()))
            if kind != "user_output" or "as_tensor" not in body.get("arg", {}):
                raise _refuse(name, f"the program returns {kind!r} (tensors are read; the logits among them)")
            outputs.append(body["arg"]["as_tensor"]["name"])
        if self.user_input is None or not outputs:
            raise _refuse(name, "the program has no tensor input or no tensor output")
        if len(outputs) > 1 and not (isinstance(output, int) and 0 <= output < len(outputs)):
            shapes = [self.shape_text(o) for o in outputs]
            raise OutputChoice(f"{name}: the program returns {len(outputs)} tensors ({', '.join(shapes)}); say which "
                               "is the logits with \"output\": INDEX in the spec's \"arch\" (`auditor spec init` "
                               "finds it)", len(outputs))
        self.output = outputs[output if len(outputs) > 1 else 0]
        for node in self.graph_json.get("nodes", []):
            for arg in node.get("inputs", []):
                for ref in _tensor_names(arg.get("arg", {})):
                    self.users[ref] = self.users.get(ref, 0) + 1
        # a weight transposed for one matrix product only (`permute(w, [1, 0])` then `addmm`): a linear layer
        self.transposed: dict[str, str] = {}  # the transpose's output -> the weight's name
        for node in self.graph_json.get("nodes", []):
            target, ins, outs = node.get("target"), node.get("inputs", []), node.get("outputs", [])
            if target not in ("torch.ops.aten.permute.default", "torch.ops.aten.t.default") or len(outs) != 1:
                continue
            src = (ins[0].get("arg", {}).get("as_tensor") or {}).get("name") if ins else None
            dims = ins[1].get("arg", {}).get("as_ints") if len(ins) > 1 else [1, 0]
            out = (outs[0].get("as_tensor") or {}).get("name")
            value = self.values.get(src)
            if (isinstance(value, tuple) and value[1].endswith(".weight") and self.state[value[1]].dim() == 2
                    and dims == [1, 0] and self.users.get(src) == 1 and self.users.get(out) == 1):
                self.transposed[out] = value[1]

    def shape_text(self, value: str) -> str:
        meta = (self.graph_json.get("tensor_values") or {}).get(value) or {}
        dims = [d.get("as_int", "batch") if isinstance(d, dict) else "?" for d in meta.get("sizes") or []]
        return f"[{', '.join(map(str, dims))}]" if dims else "?"

    def rank(self, value: str) -> int | None:
        meta = (self.graph_json.get("tensor_values") or {}).get(value) or {}
        return len(meta["sizes"]) if isinstance(meta.get("sizes"), list) else None

    def input_shape(self) -> list[int] | None:
        meta = (self.graph_json.get("tensor_values") or {}).get(self.user_input) or {}
        sizes = meta.get("sizes") or []
        dims = [s.get("as_int") if isinstance(s, dict) else None for s in sizes[1:]]
        return [int(d) for d in dims] if dims and all(isinstance(d, int) for d in dims) else None

    def fetch(self, value):
        if isinstance(value, tuple) and value and value[0] == "transpose":  # not fused after all: compute it
            node = value[1]
            raw = [a.get("arg", {}) for a in node.get("inputs", [])]
            result = self.graph.call_function(_aten(node["target"], self.name), tuple(self.arg(a) for a in raw))
            self.values[node["outputs"][0]["as_tensor"]["name"]] = result
            return result
        if isinstance(value, tuple) and value and value[0] == "tensor":
            fqn = value[1]
            if fqn not in self.root:
                self.root[fqn] = self.state[fqn]
            return self.graph.get_attr(fqn)
        return value

    def arg(self, a: dict):
        if not isinstance(a, dict) or len(a) != 1:
            raise _refuse(self.name, f"an argument {str(a)[:80]} is not read")
        kind, v = next(iter(a.items()))
        if kind in ("as_tensor", "name"):  # a list of tensors holds bare {"name": ...} entries
            name = v.get("name") if kind == "as_tensor" else v
            if name not in self.values:
                raise AuditorError(f"{self.name}: the graph uses {name!r} before it is computed; the archive "
                                   "is damaged")
            return self.fetch(self.values[name])
        if kind in ("as_tensors", "as_optional_tensors"):
            return [None if "as_none" in x else self.arg(x) for x in v]
        if kind in ("as_int", "as_float", "as_bool", "as_string"):
            return v
        if kind == "as_none":
            return None
        if kind in ("as_ints", "as_floats", "as_bools"):
            return list(v)
        if kind == "as_sym_int":
            return self.sym(v)
        if kind == "as_sym_ints":
            return [self.sym(x) for x in v]
        if kind == "as_scalar_type" and v in _DTYPES:
            dtype = _DTYPES[v]
            return torch.float32 if self.widen and dtype in (torch.float16, torch.bfloat16) else dtype
        if kind == "as_memory_format" and v in _MEMORY_FORMATS:
            return _MEMORY_FORMATS[v]
        if kind == "as_layout" and v == _STRIDED:
            return torch.strided
        if kind == "as_device":  # the device it was traced on: the model runs where the auditor puts it
            return None
        raise _refuse(self.name, f"an argument of kind {kind!r} is not read")

    def sym(self, v):
        if "as_int" in v:
            return int(v["as_int"])
        if "as_name" in v and v["as_name"] in self.values:
            return self.values[v["as_name"]]
        raise _refuse(self.name, "a symbolic size is computed in a way the auditor does not read")

    def module_for(self, op: str, raw: list) -> nn.Module | None:
        """A layer module for a linear / convolution / batch norm whose weights only it reads, else None."""
        literal = {i: self.arg(a) for i, a in enumerate(raw) if not any(_tensor_names(a))}
        args = [literal.get(i) for i in range(len(raw))]

        def fqn(i):
            a = raw[i] if i < len(raw) else None
            name = (a or {}).get("as_tensor", {}).get("name")
            value = self.values.get(name)
            ok = isinstance(value, tuple) and value[0] == "tensor" and self.users.get(name, 0) == 1
            return value[1] if ok else None

        if op in ("addmm.default", "mm.default"):  # a linear layer in the decomposed (core ATen) form
            fused = self.transposed.get((raw[-1].get("as_tensor") or {}).get("name"))
            b = fqn(0) if op == "addmm.default" else ""
            if fused is None or b is None or len(raw) != (3 if b else 2) or (b and self.state[b].dim() != 1):
                return None
            weight = self.state[fused]
            bias = self.state[b] if b else None
            return self.holding(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None),
                                fused[: -len(".weight")], {"weight": weight, "bias": bias})
        if op in ("linear.default", "conv1d.default", "conv2d.default", "conv2d.padding", "convolution.default"):
            w, b = fqn(1), (fqn(2) if len(raw) > 2 and "as_none" not in raw[2] else "")
            if not w or b is None or not w.endswith(".weight"):
                return None
            weight = self.state[w]
            bias = self.state[b] if b else None
            if op == "convolution.default":  # (input, weight, bias, stride, padding, dilation, transposed, ...)
                if len(args) < 9 or args[6] or weight.dim() not in (3, 4):
                    return None
                args = args[:6] + [args[8]]
            if op == "linear.default":
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            else:
                stride, padding, dilation, groups = (args + [None] * 7)[3:7]
                cls = nn.Conv1d if weight.dim() == 3 else nn.Conv2d
                layer = cls(weight.shape[1] * (groups or 1), weight.shape[0], tuple(weight.shape[2:]),
                            stride=stride or 1, padding=0 if padding is None else padding, dilation=dilation or 1,
                            groups=groups or 1, bias=bias is not None)
            return self.holding(layer, w[: -len(".weight")], {"weight": weight, "bias": bias})
        if op in ("batch_norm.default", "_native_batch_norm_legit_no_training.default"):
            names = [fqn(i) for i in range(1, 5)]
            rm = names[2]
            if rm is None or not rm.endswith(".running_mean") or None in names[2:]:
                return None
            training = args[5] if op == "batch_norm.default" else False
            if training:
                raise _refuse(self.name, "a batch norm runs in training mode (call model.eval() before "
                                         "torch.export.export)")
            eps = args[7] if op == "batch_norm.default" else args[6]
            rank = self.rank(raw[0].get("as_tensor", {}).get("name")) or 4
            channels = self.state[rm].numel()
            layer = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(channels, eps=float(eps),
                                                                       affine=names[0] is not None)
            return self.holding(layer, rm[: -len(".running_mean")],
                                {"weight": self.state[names[0]] if names[0] else None,
                                 "bias": self.state[names[1]] if names[1] else None,
                                 "running_mean": self.state[rm], "running_var": self.state[names[3]]})
        return None

    def holding(self, layer: nn.Module, name: str, tensors: dict) -> nn.Module | None:
        if not name or name in self.root or any(k.startswith(name + ".") for k in self.root):
            return None
        with torch.no_grad():
            for key, t in tensors.items():
                if t is None:
                    continue
                if tuple(getattr(layer, key).shape) != tuple(t.shape):
                    return None
                getattr(layer, key).copy_(t)
        self.root[name] = layer.eval()
        return layer

    def build(self) -> nn.Module:
        self.values[self.user_input] = self.graph.placeholder(_python_name(self.user_input))
        for node in self.graph_json.get("nodes", []):
            target = str(node.get("target", ""))
            fn = _aten(target, self.name)
            op = target[len("torch.ops.aten."):]
            out = ((node.get("outputs") or [{}])[0].get("as_tensor") or {}).get("name")
            if out in self.transposed:  # computed where its one user needs it (or fused into that layer)
                self.values[out] = ("transpose", node)
                continue
            raw = [a.get("arg", {}) for a in node.get("inputs", []) if a.get("kind", 1) == 1]
            kw_raw = {a.get("name"): a.get("arg", {}) for a in node.get("inputs", []) if a.get("kind", 1) != 1}
            layer = None if kw_raw else self.module_for(op, raw)
            if layer is not None:
                name = next(k for k, v in self.root.items() if v is layer)
                result = self.graph.call_module(name, (self.arg(raw[1] if op == "addmm.default" else raw[0]),))
            else:
                args = [self.arg(a) for a in raw]
                kwargs = {str(k): self.arg(v) for k, v in kw_raw.items()}
                result = self.graph.call_function(fn, tuple(args), kwargs)
            self.bind(node.get("outputs", []), result, many=op == "_native_batch_norm_legit_no_training.default"
                      and layer is not None)
        if self.output not in self.values:
            raise AuditorError(f"{self.name}: the graph never computes its output {self.output!r}")
        self.graph.output(self.fetch(self.values[self.output]))
        self.graph.lint()
        from .custom import graph_as_module, nested_module

        return graph_as_module(torch.fx.GraphModule(nested_module(self.root), self.graph), "ExportedModel")

    def bind(self, outputs: list, result, many: bool) -> None:
        if len(outputs) == 1 and "as_tensors" not in outputs[0]:
            self.bind_one(outputs[0], result)
            return
        items = outputs[0]["as_tensors"] if len(outputs) == 1 else [o.get("as_tensor") for o in outputs]
        for i, item in enumerate(items):
            if item is None or "name" not in item:
                continue
            # a batch norm turned module returns the normalised tensor alone (its other outputs: statistics)
            self.values[item["name"]] = result if many and i == 0 else (
                None if many else self.graph.call_function(operator.getitem, (result, i)))

    def bind_one(self, out: dict, result) -> None:
        kind, v = next(iter(out.items()))
        if kind == "as_tensor":
            self.values[v["name"]] = result
        elif kind == "as_sym_int" and "as_name" in v:
            self.values[v["as_name"]] = result
        elif kind != "as_none":
            raise _refuse(self.name, f"an operator returns {kind!r}")


def _training_mode(graph: dict, signature: dict) -> bool:
    """Whether the program was exported from a model in training mode: a buffer it writes back (running
    statistics), or a batch norm or dropout whose `training` / `train` argument is true."""
    if any(next(iter(s), None) == "buffer_mutation" for s in signature.get("output_specs", [])):
        return True
    for node in graph.get("nodes", []):
        flags = {"torch.ops.aten.batch_norm.default": "training", "torch.ops.aten.dropout.default": "train",
                 "torch.ops.aten.dropout_.default": "train"}
        key = flags.get(node.get("target"))
        if key and any(a.get("name") == key and a.get("arg", {}).get("as_bool") for a in node.get("inputs", [])):
            return True
    return False


def _tensor_names(a: dict):
    if "as_tensor" in a:
        yield a["as_tensor"].get("name")
    for key in ("as_tensors", "as_optional_tensors"):
        for x in a.get(key, []) or []:
            if isinstance(x, dict) and "as_tensor" in x:
                yield x["as_tensor"].get("name")
            elif isinstance(x, dict) and "name" in x:
                yield x["name"]


def _python_name(name: str) -> str:
    out = re.sub(r"\W", "_", str(name)) or "x"
    return out if not out[0].isdigit() else f"x_{out}"


def check_sizes(module: nn.Module, shape: list[int], batch: int, name: str) -> None:
    """Run the graph on meta tensors (shapes only, nothing allocated) for a probe of `batch` rows: a value over
    the probe budget is refused (BudgetError) before the model runs on real data. A 10 KB archive can say
    `expand(x, [100000, 100000])`."""
    from ..budgets import BudgetError, limit_bytes, size_text

    cap = limit_bytes("AUDITOR_PROBE_MEMORY_MB")
    over: list[str] = []

    class Sizes(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.numel() * t.element_size() > cap:
                    over.append(f"{name}: its value {node.name!r} (shape {list(t.shape)}) would need "
                                f"{size_text(t.numel() * t.element_size())} on a probe input, over the limit of "
                                f"{size_text(cap)}; raise it with AUDITOR_PROBE_MEMORY_MB=MB if you trust the model")
                    raise BudgetError(over[0])
            return out

    meta = copy.deepcopy(module).to("meta")
    try:
        with torch.no_grad():
            Sizes(meta, graph=type(module).fx_graph).run(torch.empty(batch, *shape, device="meta"))
    except BudgetError:
        raise BudgetError(over[0]) from None  # without the notes torch.fx adds to the message


def _open(path: Path, max_bytes: int) -> tuple[dict, dict, dict]:
    """(its program's JSON, its tensors by name, its extra files), the archive closed again."""
    archive = _Archive(path, max_bytes)
    with archive.zip:
        program = archive.json(f"models/{archive.model}.json")
        if not isinstance(program, dict):
            raise AuditorError(f"{path.name}: the exported program is not a JSON object; the archive is damaged")
        state = archive.tensors("weights", "weights_config")
        constants_file = f"data/constants/{archive.model}_constants_config.json"
        if archive.prefix + constants_file in archive.names:
            state.update(archive.tensors("constants", "constants_config"))
        extra = archive.extra()
    _check_finite(state, path)
    return program, state, extra


def _build(program: dict, state: dict, name: str, output: int | None) -> tuple[nn.Module, list[int] | None]:
    """(the program as a module returning its logits output, the input shape it was exported with)."""
    builder = _Builder(program, state, name, output)
    try:
        return builder.build(), builder.input_shape()
    except AuditorError:
        raise
    except Exception as exc:  # noqa: BLE001 - the graph's JSON in a shape this reader did not expect
        raise _refuse(name, f"its graph could not be rebuilt ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None


def read_pt2(path: Path, max_bytes: int, output: int | None = None) -> tuple[nn.Module, dict, dict, list[int] | None]:
    """(module, its state as stored, the archive's extra files, the input shape it was exported with)."""
    program, state, extra = _open(path, max_bytes)
    module, shape = _build(program, state, path.name, output)
    return module, state, extra, shape


def exported_input_shape(path: Path, max_bytes: int) -> list[int] | None:
    """The input shape (without the batch) the archive's program was exported with, or None."""
    program, state, _ = _open(path, max_bytes)
    try:
        return _Builder(program, state, path.name, 0).input_shape()
    except AuditorError:
        return None


def load_pt2(path: str | os.PathLike, spec: ModelSpec | None = None,
             max_bytes: int | None = None) -> ModelBundle:
    """Load a `torch.export` archive as an editable bundle (size already checked by `load_model`)."""
    from .onnx_format import _as_registered, _check_input_matches, _probe_shape
    from .reading import DEFAULT_MAX_BYTES

    path = Path(path)
    program, state, extra = _open(path, max_bytes or DEFAULT_MAX_BYTES)
    meta = {k: v for k, v in extra.items() if k.startswith("auditor.")}
    spec, history = embedded_spec(meta, spec, path.name, "its extra files", file_checksum(state, meta))
    output = spec.arch.get("output")
    if output is not None and (not isinstance(output, int) or isinstance(output, bool)):
        raise AuditorError(f'"output" in the spec\'s "arch" of a .pt2 program is the index of its logits output, '
                           f"got {output!r}")
    module, shape = _build(program, state, path.name, output)
    dims = [None, *shape] if shape else []
    _check_input_matches(spec, dims, path.name)
    if shape and len(shape) == 1 and "in_features" not in spec.arch:
        spec.arch["in_features"] = int(shape[0])
    probe_shape = _probe_shape(spec, dims)
    module.eval()
    from ..budgets import BudgetError

    try:
        check_sizes(module, probe_shape, 3, path.name)
    except BudgetError:
        raise
    except Exception:  # noqa: BLE001 - an operator without shape rules on meta tensors: the probe below says
        pass
    for batch in (2, 3):  # a graph exported with a fixed batch size runs at that size alone
        # values in [0, 1): a column a model reads as a category code (`x[:, 0].long()` into an embedding) is a
        # valid index, as random normal values (negative ones) are not
        probe = torch.rand(batch, *probe_shape, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                logits = module(probe)
        except Exception as exc:  # noqa: BLE001 - the vendor's graph on the auditor's input
            hint = ("; export it with a dynamic batch axis: torch.export.export(model, (x,), dynamic_shapes="
                    "{'x': {0: torch.export.Dim('batch')}})" if batch == 3 else "")
            raise AuditorError(f"{path.name}: the model fails on an input of shape {list(probe.shape)}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}{hint}") from None
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != batch:
            raise AuditorError(f"{path.name}: the model must return one (batch, classes) tensor of logits; on "
                               f"{batch} inputs it returned {type(logits).__name__} "
                               f"{list(logits.shape) if isinstance(logits, torch.Tensor) else ''}")
    model = _as_registered(module, spec, probe)
    if spec.arch.get("name") == "pt2":
        spec.arch.setdefault("num_classes", int(logits.shape[1]))
    elif model is module:
        spec.provenance["arch_in_spec"] = dict(spec.arch)
        spec.arch = {"name": "pt2", "num_classes": spec.num_classes,
                     **{k: spec.arch[k] for k in ("in_features", "output") if k in spec.arch}}
    spec.weights_dtype = stored_float_dtype(state)
    return ModelBundle(model.eval(), spec, str(path), "pt2", history)


def export_pt2(bundle: ModelBundle, path: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write `bundle` as a `torch.export` archive (batch axis dynamic; spec, history and a checksum in its
    extra files), read back here before it replaces `path`: it must compute what the model computes."""
    from .onnx_format import _input_shape

    path = Path(path)
    model = copy.deepcopy(bundle.model).cpu().eval()
    if bundle.spec.single_logit:  # the vendor's one logit, not the [0, z] the audit reads
        from .custom import single_logit_base

        single_logit_base(model)
    shape = _input_shape(bundle)
    example = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    from ..atomic import replacing

    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        state = {k: v.detach() for k, v in program.state_dict.items()}
        state.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
        spec = copy.deepcopy(bundle.spec)
        if "output" in spec.arch:  # the program written returns the logits alone
            spec.provenance["pt2_logits_output"] = spec.arch.pop("output")
        meta = {SPEC_KEY: spec.to_json(), CHECKSUMMED_KEY: CHECKSUMMED,
                HISTORY_KEY: json.dumps(bundle.history, sort_keys=True, default=str)}
        for k, v in (extra_metadata or {}).items():
            meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
        meta[CHECKSUM_KEY] = file_checksum(state, meta)
        buffer = io.BytesIO()  # torch names the archive's folder after a file's name; a buffer gets "archive"
        torch.export.save(program, buffer, extra_files=meta)
        with replacing(path) as tmp:  # replaces `path` only once the written archive is read back and agrees
            tmp.write_bytes(buffer.getvalue())
            back, _, _, _ = read_pt2(tmp, 1 << 40)
            with torch.no_grad():
                want, got = model(example), back(example)
            if want.shape != got.shape or (want - got).abs().max() > 1e-4 * max(1.0, float(want.abs().max())):
                raise AuditorError(f"the .pt2 archive of {bundle.name} does not compute what the model computes; "
                                   "not written")
    except AuditorError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export's own errors, said in one line
        raise AuditorError(f"cannot export {bundle.name} with torch.export: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    return path


def _check_saveable(bundle: ModelBundle, path: Path) -> None:
    if PurePosixPath(path.name).suffix.lower() != ".pt2":
        raise AuditorError(f"torch.export archives end in .pt2; got {path.name}")


LOADERS[".pt2"] = load_pt2
SAVERS[".pt2"] = export_pt2
SAVE_CHECKS[".pt2"] = _check_saveable
