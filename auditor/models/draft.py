"""`auditor spec init`: draft a model spec from a model file and the data it will be audited on.

What is read off the model: the input width (first layer's weights, or the ONNX graph's input), the
number of classes (last layer, or a probe run), and for a state dict the architecture (a registered
`mlp`/`cnn` when the shapes fit exactly, else a `sequential` chain with the assumptions of
`infer.py`). What is read off the data: the input kind and shape, the class names, and for a CSV
how the columns become inputs: as they are (already numeric, perhaps already standardised) or
standardised and one-hot encoded. When several readings fit the model's width, each is tried on
the data (a probe run) and the most accurate is kept; all of them are reported, so the user can
confirm or correct the guess.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import AuditorError, channels_last_hint
from .architectures import predict_logits
from .reading import DEFAULT_MAX_BYTES, TORCH_SUFFIXES, _check_size, read_weights
from .spec import ModelSpec

STANDARDISED_TOL = 0.15  # |mean| and |std - 1| below this: the column looks already standardised
MAX_GUESSED_CATEGORIES = 50  # a text column with more distinct values is not guessed categorical


@dataclass
class Draft:
    """A drafted spec, what was guessed (with the evidence) and what the user must confirm."""

    spec: dict
    guessed: list[str] = field(default_factory=list)
    confirm: list[str] = field(default_factory=list)
    accuracy: float | None = None


# How image files' 0..255 pixels are usually read for training: tried by a probe run on a folder or .zip
IMAGE_READINGS = [
    ("[0, 1]", {"value_range": [0.0, 1.0]}),
    ("[0, 255]", {"value_range": [0.0, 255.0]}),
    ("[-1, 1] (mean 0.5, std 0.5)", {"value_range": [0.0, 1.0], "normalize": {"mean": [0.5], "std": [0.5]}}),
    ("ImageNet's mean and std", {"value_range": [0.0, 1.0], "normalize": {"mean": [0.485, 0.456, 0.406],
                                                                           "std": [0.229, 0.224, 0.225]}}),
]


def _from_files(data) -> bool:
    """Whether `data` was read from image files (a folder or .zip), whose pixels the spec says how to read."""
    from ..data.folders import is_image_folder

    return data.kind == "image" and bool(data.source) and is_image_folder(data.source) and Path(data.source).exists()


def _all_rows(data):
    splits = [s for s in (data.train, data.val, data.test) if len(s)]
    X = torch.cat([s.X for s in splits])
    y = torch.cat([s.y for s in splits])
    raws = [s.raw for s in splits if s.raw is not None]
    raw = pd.concat(raws, ignore_index=True) if len(raws) == len(splits) and raws else None
    return X, y, raw


def _matched(model, X: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[int, int]] | None:
    """The accuracy with the data's classes matched one to one to the model's outputs as its predictions
    best agree (Hungarian matching of the confusion counts), and the match: class -> output."""
    from scipy.optimize import linear_sum_assignment

    try:
        pred = predict_logits(model, X).argmax(1).numpy()
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None
    labels = y.numpy()
    counts = np.zeros((int(max(pred.max(), labels.max())) + 1,) * 2)
    np.add.at(counts, (labels, pred), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(labels)), {int(r): int(c) for r, c in zip(rows, cols)}


def _single_logit(bundle, X: torch.Tensor, n_classes: int) -> bool:
    """A model with one output on two-class data (BCEWithLogitsLoss): its logit z is read as [0, z].
    Returns whether the model is read so."""
    if bundle.spec.single_logit or n_classes != 2:
        return bundle.spec.single_logit
    try:
        out = predict_logits(bundle.model, X[:2])
    except (RuntimeError, ValueError, TypeError, IndexError):
        return False
    if out.dim() == 2 and out.shape[1] == 1:
        from .custom import read_single_logit

        read_single_logit(bundle.model)
        bundle.spec.single_logit = True
    return bundle.spec.single_logit


def _accuracy(model, X: torch.Tensor, y: torch.Tensor) -> float | None:
    try:
        logits = predict_logits(model, X)
    except (RuntimeError, ValueError, TypeError, IndexError):
        return None
    if logits.dim() != 2:
        return None
    return float((logits.argmax(1) == y).float().mean())


def _sizes_from_weights(path: Path) -> dict:
    """The sizes a model's weights imply, as the constructor arguments classes usually name them: the first
    weight's inputs (`in_features`, or `in_channels` for a convolution) and the last one's outputs
    (`num_classes`). Read without running code."""
    from .reading import read_weights

    try:
        state, _ = read_weights(path)
    except AuditorError:
        return {}
    weights = [t for k, t in state.items() if k.endswith("weight") and getattr(t, "dim", lambda: 0)() in (2, 4)]
    if not weights:
        return {}
    first, last = weights[0], weights[-1]
    out = {"in_features": int(first.shape[1])} if first.dim() == 2 else {"in_channels": int(first.shape[1])}
    if last.dim() == 2:
        out["num_classes"] = int(last.shape[0])
    return out


def _model_from_file(path: Path, data, X, y, *, arch_file, arch_class, trust_code, max_bytes, arch=None):
    """(bundle for probing, arch dict, guessed notes) from the model file alone (+ the data's shape)."""
    from .files import bundle_from_state, load_model
    from .infer import as_registered, infer_candidates

    shape = data.input_shape
    kind = data.kind
    notes: list[str] = []
    suffix = path.suffix.lower()
    if arch_file is not None or arch_class is not None:
        # the class and file are named in the spec (not run from it: loading still needs --arch-file and
        # --trust-code), so a later refusal can say which code the model needs
        arch = {**(arch or {}), "name": "custom", "class": arch_class,
                "file": Path(arch_file).name if arch_file else None}
        from .custom import OutputError

        provisional = {"arch": arch, "input": {"kind": kind, "shape": shape}, "class_names": data.class_names}
        load = lambda a: load_model(path, spec={**provisional, "arch": a}, max_bytes=max_bytes,  # noqa: E731
                                    arch_file=arch_file, arch_class=arch_class, trust_code=trust_code)
        try:
            try:
                bundle = load(arch)
            except OutputError:
                raise
            except AuditorError as exc:  # the constructor's defaults build another size: read it off the weights
                sizes = _sizes_from_weights(path)
                if "do not match" not in str(exc) or not sizes or all(arch.get(k) == v for k, v in sizes.items()):
                    raise
                arch = {**arch, **sizes}
                bundle = load(arch)
                notes.append("constructor arguments read off the weights: "
                             + ", ".join(f"{k}={v}" for k, v in sizes.items()) + " (passed when the class takes them)")
        except OutputError as exc:  # several outputs: the logits are the likely one, said below
            if exc.guess is None:
                raise
            arch = {**arch, "output": exc.guess}
            bundle = load(arch)
            notes.append(f"output: {exc.outputs}; the logits taken from output {exc.guess!r} (\"output\" in "
                         "\"arch\")")
        notes.append(f"architecture: your class {arch_class} from {Path(arch_file).name} (its constructor "
                     "arguments, if any, go into \"arch\")")
        return bundle, arch, notes
    if suffix == ".onnx":
        _check_size(path, max_bytes)
        graph = _onnx_input_shape(path)
        from .onnx_format import channels_last

        last = kind == "image" and channels_last(shape, graph)
        if graph is not None and not last and (len(graph) != len(shape) or (kind == "image" and graph != shape)):
            raise AuditorError(f"{path.name} takes inputs of shape {graph} but {data.name!r} gives "
                               f"{'images of shape ' if kind == 'image' else 'rows of '}{shape}"
                               f"{channels_last_hint(graph, shape) or ': is this the model’s data?'}")
        provisional = {"arch": {"name": "onnx"}, "input": {"kind": kind, "shape": shape if last else graph or shape}}
        bundle = load_model(path, spec=provisional, max_bytes=max_bytes)
        notes.append("architecture: the ONNX graph itself (\"arch\": {\"name\": \"onnx\"})")
        if last:
            notes.append(f"inputs: the graph reads images channels last {graph} (as TensorFlow exports do): the "
                         f"auditor feeds its (C, H, W) images {shape} through a transpose (\"layout\": "
                         "\"channels_last\"), and writes the file back with the graph's own input")
        opset = bundle.spec.provenance.get("onnx_opset_converted")
        if opset:
            notes.append(f"operators: the graph is opset {opset['from']}; read as opset {opset['to']} (ONNX's version "
                         "converter: the same computation), as onnx2torch converts some operators only in older "
                         "versions")
        left_out = bundle.spec.provenance.get("onnx_outputs_left_out")
        if left_out:
            notes.append(f"outputs: the logits are output {bundle.spec.provenance.get('onnx_logits', '?')!r}; left out "
                         f"{', '.join(map(repr, left_out))} (an edited model is written with the logits only; "
                         "\"output\" in \"arch\" picks another)")
        return bundle, {"name": "onnx"}, notes
    from .export_format import OutputChoice, exported_input_shape

    if _exported_program(path):
        _check_size(path, max_bytes)
        graph = exported_input_shape(path, max_bytes)
        if graph is not None and graph != list(shape) and (kind == "image" or len(graph) != 1):
            raise AuditorError(f"{path.name} was exported with inputs of shape {graph} but {data.name!r} gives "
                               f"{'images of shape ' if kind == 'image' else 'rows of '}{shape}"
                               f"{channels_last_hint(graph, shape) or ': is this the model’s data?'}")
        provisional = {"arch": {"name": "pt2"}, "input": {"kind": kind, "shape": shape}}
        arch = {"name": "pt2"}
        try:
            bundle = load_model(path, spec=provisional, max_bytes=max_bytes)
        except OutputChoice as exc:  # several outputs: the logits are the one with a column per class
            want = {len(data.class_names), 1 if len(data.class_names) == 2 else len(data.class_names)}
            fits = []
            for i in range(exc.count):
                try:
                    candidate = load_model(path, spec={**provisional, "arch": {"name": "pt2", "output": i}},
                                           max_bytes=max_bytes)
                except AuditorError:
                    continue
                if candidate.spec.arch.get("num_classes") in want:
                    fits.append((i, candidate))
            if not fits:
                raise AuditorError(f"{exc}; none of them has one column per class of {data.name!r} "
                                   f"({len(data.class_names)})") from None
            (i, bundle), arch = fits[0], {"name": "pt2", "output": fits[0][0]}
            notes.append(f"outputs: the program returns {exc.count} tensors; the logits taken from output {i} (the "
                         f"first with one column per class; \"output\" in \"arch\" picks another)")
        notes.append("architecture: the exported program itself (\"arch\": {\"name\": \"pt2\"}); its layers "
                     f"keep the names they had in the exported module ({', '.join(_layer_names(bundle.model)[:4])}"
                     f"{', ...' if len(_layer_names(bundle.model)) > 4 else ''})")
        return bundle, arch, notes
    if suffix != ".safetensors" and suffix not in TORCH_SUFFIXES:
        raise AuditorError(f"spec init reads .safetensors, .onnx, .pt2 or a state dict "
                           f"({', '.join(sorted(TORCH_SUFFIXES))}); got {path.name}")
    _check_size(path, max_bytes)
    state, _ = read_weights(path)
    _check_first_layer(state, data)
    arch = as_registered(state, shape if kind == "image" else None)
    if arch is not None and arch["name"] == "mlp" and kind == "image":
        arch["flatten"] = True  # an MLP over the flattened pixels (nn.Flatten() first, no weights)
        notes.append(f"the first Linear layer takes {arch['in_features']} inputs: the images' pixels, flattened "
                     "(\"flatten\": true)")
    if arch is not None:
        what = ("a chain of Linear layers with a ReLU after each but the last" if arch["name"] == "mlp" else
                "3x3 same-size convolutions with ReLUs, one 2x2 max-pool, two Linear layers")
        notes.append(f"architecture: registered {arch['name']!r} (the weights' shapes fit it exactly; "
                     f"assumed {what})")
    else:
        candidates = infer_candidates(state, shape if kind == "image" else [int(np.prod(shape))])
        tried = []
        for layers, assumed in candidates:
            arch = {"name": "sequential", "layers": layers}
            bundle = bundle_from_state(state, ModelSpec(arch=arch, input={"kind": kind, "shape": shape}), str(path))
            acc = _accuracy(bundle.model, X, y) if len(candidates) > 1 else None
            tried.append((-1.0 if acc is None else acc, bundle, arch, assumed))
        acc, bundle, arch, assumed = max(tried, key=lambda t: t[0])  # first (preferred) on a tie
        notes.append("architecture: 'sequential', read off the weights' shapes; assumed " + "; ".join(assumed))
        if len(tried) > 1:
            notes.append(f"  probe: {len(tried)} arrangements of the layers fit the weights; kept the most "
                         f"accurate on the data ({acc:.3f}; the others: "
                         f"{', '.join(f'{t[0]:.3f}' for t in tried if t[1] is not bundle)})")
        return bundle, arch, notes
    bundle = bundle_from_state(state, ModelSpec(arch=arch, input={"kind": kind, "shape": shape}), str(path))
    return bundle, arch, notes


def _layer_names(model) -> list[str]:
    from .architectures import editable_layers

    return [name for name, _ in editable_layers(model)]


def _onnx_input_shape(path: Path) -> list[int] | None:
    """The graph's input shape without the batch axis, or None when some axis is symbolic."""
    from .onnx_format import _input_dims, _onnx

    try:
        proto = _onnx().load_model(str(path), load_external_data=False)
        dims = _input_dims(proto)
    except AuditorError:
        raise
    except Exception:  # a broken file: load_model below says what is wrong with it
        return None
    return [int(d) for d in dims[1:]] if len(dims) > 1 and all(dims[1:]) else None


def _check_first_layer(state: dict, data) -> None:
    """The first layer's tensor against the data's kind and width, named in one line."""
    from .infer import weight_layers

    first = next(x for x in weight_layers(state) if x["type"] != "batchnorm")
    tensor = f"{first['name']}.weight"
    pixels = int(np.prod(data.input_shape)) if data.kind == "image" else 0
    if data.kind == "image" and first["type"] == "linear" and first["in"] != pixels:
        raise AuditorError(f"tensor {tensor!r} is a Linear layer taking {first['in']} inputs, but {data.name!r} holds "
                           f"images of shape {data.input_shape} ({pixels} pixels when flattened): an image model "
                           "starts with a convolution or reads the flattened pixels (give the model's tabular data "
                           "as a CSV with --target, or your class with --arch-file)")
    if data.kind == "tabular" and first["type"] == "conv2d":
        raise AuditorError(f"tensor {tensor!r} is a convolution over images with {first['in']} channels, but "
                           f"{data.name!r} is tabular: give the model's images as an .npz case")
    if data.kind == "image" and first["type"] == "conv2d" and first["in"] != data.input_shape[0]:
        raise AuditorError(f"tensor {tensor!r} takes {first['in']} channels but {data.name!r} has images of shape "
                           f"{data.input_shape}")


def guess_schema(frame: pd.DataFrame, schema) -> tuple[object, list[str]]:
    """The schema `spec init` reads a CSV with: inputs with missing values get a fill (`fill_missing`), and
    an input column of text with few distinct values (not an identifier) is read as categorical. Returns
    the schema and what was guessed, in words."""
    from ..data.tabular import as_text

    said, guessed = [], []
    for col in schema.input_columns(frame):
        if col in schema.categorical or col not in frame:
            continue
        values = frame[col].dropna()
        if values.empty or pd.to_numeric(values, errors="coerce").notna().any():
            continue  # numbers (or some): the numeric reading names what is wrong
        distinct = as_text(values).str.strip().nunique()
        if distinct <= min(MAX_GUESSED_CATEGORIES, max(2, len(values) // 2)):
            guessed.append(col)
            said.append(f"{col} ({distinct} values)")
    schema = dataclasses.replace(schema, categorical=[*schema.categorical, *guessed], fill_missing=True)
    lines = [f"categorical (text with few values; --categorical to choose): {', '.join(said)}"] if said else []
    return schema, lines


def _tabular_readings(data, raw: pd.DataFrame | None) -> list[tuple[str, dict | None, list[str], np.ndarray | None]]:
    """(label, preprocessing or None, input names, X) for every way the CSV's columns can become inputs."""
    from ..data.tabular import as_text, describe_inputs, numeric_inputs, transform

    prep = data.preprocessing
    if prep is None or raw is None:  # the data came already as model inputs
        return [("the data's inputs as they are", None, list(data.feature_names), None)]
    cols = prep["columns"]
    numeric = [c["name"] for c in cols if c["type"] == "numeric"]
    readings = []
    if len(numeric) == len(cols) and not any(c.get("fill") is not None for c in cols):
        readings.append(("numeric columns as they are (no standardising)", None, numeric,
                         numeric_inputs(raw, numeric)))
    else:
        plain = copy.deepcopy(prep)
        for c in plain["columns"]:
            if c["type"] == "numeric":
                c.update(mean=0.0, std=1.0, log1p=False)
        readings.append(("categorical columns one-hot encoded, numeric ones as they are", plain,
                         describe_inputs(plain)[0], transform(raw, plain)))
    readings.append(("numeric columns standardised with the mean/std of the data's training rows"
                     + (", categorical ones one-hot encoded" if len(numeric) < len(cols) else ""),
                     prep, describe_inputs(prep)[0], transform(raw, prep)))
    # a vendor may have one-hot encoded the categories of every row, rarer ones that no training row holds too
    extra = {c["name"]: sorted(set(as_text(raw[c["name"]]).unique()) - set(c["categories"]))
             for c in cols if c["type"] == "categorical"}
    if any(extra.values()):
        said = "; ".join(f"{k}: {', '.join(map(repr, v[:3]))}{' ...' if len(v) > 3 else ''}"
                         for k, v in extra.items() if v)
        for label, base in list(zip([r[0] for r in readings], [r[1] for r in readings])):
            if base is None:
                continue
            wide = copy.deepcopy(base)
            for c in wide["columns"]:
                if c["type"] == "categorical":
                    c["categories"] = sorted(set(c["categories"]) | set(extra[c["name"]]))
            readings.append((f"{label}, with the categories of every row (also {said}, in no training row)",
                             wide, describe_inputs(wide)[0], transform(raw, wide)))
    return readings


def _looks_standardised(raw: pd.DataFrame, numeric: list[str]) -> list[str]:
    out = []
    for c in numeric:
        x = pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64)
        if len(x) > 1 and abs(x.mean()) < STANDARDISED_TOL and abs(x.std() - 1) < STANDARDISED_TOL:
            out.append(c)
    return out


def model_input_shape(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[int] | None:
    """The input shape (without the batch) a `.pt2` or `.onnx` file says its model takes, when fixed: `[3, 224,
    224]`; None for other files, or sizes the file leaves open. An ONNX graph that reads images channels last
    gives them channels first."""
    try:
        if _exported_program(path):
            from .export_format import exported_input_shape

            shape = exported_input_shape(path, max_bytes)
        elif path.suffix.lower() == ".onnx" and path.stat().st_size <= max_bytes:
            shape = _onnx_input_shape(path)
            if shape and len(shape) == 3 and shape[2] in (1, 3, 4) and shape[0] not in (1, 3, 4):
                shape = [shape[2], shape[0], shape[1]]  # (H, W, C): a channels-last graph
        else:
            return None
    except Exception:  # noqa: BLE001 - a file that does not say: the caller's own error stands
        return None
    return [int(v) for v in shape] if shape and all(isinstance(v, int) and v > 0 for v in shape) else None


def reading_at_input_size(path: Path, max_bytes: int = DEFAULT_MAX_BYTES):
    """For image files of several sizes and no spec: (a spec that reads them at the input size the model file
    fixes, the shorter side to it then the centre; `draft_spec`'s keywords saying so), or None when the file
    does not fix its input size."""
    from .spec import ModelSpec

    shape = model_input_shape(Path(path), max_bytes)
    if shape is None or len(shape) != 3:
        return None
    resize = min(shape[1], shape[2])
    reading = ModelSpec(arch={"name": "custom"}, input={"kind": "image", "shape": shape, "resize": resize})
    return reading, {"resize": resize, "resize_from": f"the model file's input size ({shape[0]}x{shape[1]}x{shape[2]})"}


def _exported_program(path: Path) -> bool:
    """A torch.export archive: a `.pt2`, or one saved under a state dict's name (read by content)."""
    from .export_format import is_pt2_archive

    suffix = path.suffix.lower()
    return suffix == ".pt2" or (suffix in TORCH_SUFFIXES and is_pt2_archive(path))


def draft_spec(model_path: str | os.PathLike, data, *, arch_file=None, arch_class=None, trust_code: bool = False,
               max_bytes: int = DEFAULT_MAX_BYTES, arch: dict | None = None, resize=None,
               resize_from: str = "the spec given") -> Draft:
    """Draft a spec for the model at `model_path` audited on `data` (an `AuditData`).

    `arch`: constructor arguments for a custom class (`arch_file`/`arch_class`), kept in the draft. `resize`:
    the `input.resize` image files of several sizes were read with, kept in the draft; `resize_from` says where
    it came from (the spec the user gave, or the model file's own input size: a guess to confirm)."""
    path = Path(model_path)
    X, y, raw = _all_rows(data)
    bundle, arch, notes = _model_from_file(path, data, X, y, arch_file=arch_file, arch_class=arch_class,
                                           trust_code=trust_code, max_bytes=max_bytes, arch=arch)
    draft = Draft(spec={}, guessed=notes)
    if data.kind == "image":  # tabular inputs are tried in every reading below
        try:
            predict_logits(bundle.model, X[:2])
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            hint = channels_last_hint(None, data.input_shape)
            raise AuditorError(f"{path.name} cannot run on {data.name!r} (images of shape {data.input_shape}): "
                               f"{str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}{hint}") from None
        _single_logit(bundle, X, len(data.class_names))
    input_block: dict = {"kind": data.kind}
    preprocessing = None
    class_order: list[str] | None = None  # the model's output order of the class folders, when matched
    if data.kind == "tabular":
        readings = _tabular_readings(data, raw)
        tried = []
        for label, prep, names, Xr in readings:
            Xr = X if Xr is None else torch.from_numpy(np.asarray(Xr, dtype=np.float32))
            _single_logit(bundle, Xr, len(data.class_names))
            acc = _accuracy(bundle.model, Xr, y)
            tried.append((acc, label, prep, names, Xr))
        fitting = [t for t in tried if t[0] is not None]
        if not fitting:
            widths = sorted({len(t[3]) for t in tried})
            wants = (_sizes_from_weights(path).get("in_features") if path.suffix.lower() not in (".onnx", ".pt2")
                     else None)
            wants = f" but the model's first layer takes {wants} (from its weights)" if wants else ""
            raise AuditorError(f"the model does not take the data's inputs: the data gives {widths} inputs{wants} "
                               f"(columns: {', '.join(map(str, data.schema.get('inputs') or [])) or 'see --inputs'}); "
                               "choose the model's input columns with --inputs (and --categorical)")
        numeric = [c["name"] for c in (data.preprocessing or {"columns": []})["columns"] if c["type"] == "numeric"]
        already = _looks_standardised(raw, numeric) if raw is not None else []
        # the most accurate reading wins; on a tie, the one that leaves the columns as they are
        acc, label, preprocessing, names, X = max(fitting, key=lambda t: (round(t[0], 3), t[2] is None))
        draft.accuracy = acc
        draft.guessed.append(f"inputs: {len(names)} ({label})")
        for a, lab, *_ in tried:
            draft.guessed.append(f"  probe: accuracy {'-' if a is None else f'{a:.3f}'} with {lab}")
        if already:
            draft.guessed.append(f"columns that already look standardised (mean ~0, std ~1): {', '.join(already)}")
        input_block.update(features=list(names), shape=[len(names)])
        if preprocessing is None:
            input_block["standardized"] = bool(numeric) and len(already) == len(numeric)
            draft.confirm.append("the model reads these columns exactly as they are in the CSV (preprocessing "
                                 "null); if it was trained on standardised values, put its own mean/std in "
                                 "\"preprocessing\"")
        else:
            names_, groups = _groups(preprocessing)
            input_block.update(feature_groups=groups, raw_features=[c["name"] for c in preprocessing["columns"]])
            if any(c["type"] == "numeric" and (c["mean"], c["std"]) != (0.0, 1.0) for c in preprocessing["columns"]):
                draft.confirm.append("the mean/std in \"preprocessing\" were fitted on YOUR data's training rows; "
                                     "replace them with the ones the model was trained with if you have them")
            draft.confirm.append("the order of the inputs (and of the one-hot categories) must be the order "
                                 "the model was trained with")
            filled = [c for c in preprocessing["columns"] if c.get("fill") is not None]
            for c in filled:
                how = "median" if c["type"] == "numeric" else "commonest value"
                draft.guessed.append(f"missing values of {c['name']} are read as {c['fill']!r} (the {how} of the "
                                     "training rows), as a SimpleImputer would fill them")
            if filled:
                draft.confirm.append("each \"fill\" in \"preprocessing\" must be the value the model's own pipeline "
                                     "puts in for a missing value (e.g. its SimpleImputer's statistics_); with no "
                                     "fill, a missing value is refused")
        if arch.get("name") in ("onnx", "pt2", "custom"):
            arch["in_features"] = len(names)
    elif _from_files(data):  # pixels the auditor reads itself: each usual scaling tried, the most accurate kept
        from ..data.folders import read_onto

        shape = data.input_shape
        tried = []
        for label, reading in IMAGE_READINGS:  # `data` was read without a spec: its pixels are in [0, 1]
            norm = reading.get("normalize", {"mean": [0.0], "std": [1.0]})
            if len(norm["mean"]) not in (1, shape[0]):
                continue
            Xr = read_onto(X, *reading["value_range"], norm["mean"], norm["std"])
            tried.append((_accuracy(bundle.model, Xr, y), _matched(bundle.model, Xr, y), label, reading, Xr, y))
        # the reading whose predictions agree best with the folders, the classes matched to outputs (a folder
        # order that is not the model's output order would leave every reading at chance); a tie: the first
        acc, (matched, match), label, reading, X, y = max(
            (t for t in tried if t[1] is not None), key=lambda t: (t[1][0], -1.0 if t[0] is None else t[0]))
        input_block.update(shape=shape, **copy.deepcopy(reading))
        draft.accuracy = acc
        draft.guessed.append(f"inputs: images of shape {shape} read from image files as {label}")
        if resize is not None:
            input_block["resize"] = resize
            draft.guessed.append(f"  resized as {resize_from} says (input.resize {resize}: the shorter side to "
                                 f"{resize}), then the centre cropped to {shape[1]}x{shape[2]}")
            if resize_from != "the spec given":
                draft.confirm.append(f"input.resize {resize}: the images have several sizes and are read at the "
                                     "model's input size (the shorter side to it, then the centre); the model's "
                                     "training must have read them so, else give input.resize as it did (--spec)")
        for a, m, lab, *_ in tried:
            draft.guessed.append(f"  probe: accuracy {'-' if a is None else f'{a:.3f}'} with pixels read as {lab}"
                                 + (f" ({m[0]:.3f} with the classes matched to outputs)" if m and m[0] > (a or 0)
                                    else ""))
        draft.confirm.append("input.value_range (and input.normalize) must be how the model's training read its "
                             "images' pixels: the most accurate of the usual readings was kept")
        chance = float(np.bincount(y.numpy()).max() / len(y))
        if matched >= max((acc or 0) + 0.2, chance + 0.5 * (1 - chance)):  # the folders are in another order
            n_out = max(match.values()) + 1
            order = [str(i) for i in range(n_out)]
            for cls, out in match.items():
                if cls < len(data.class_names):
                    order[out] = data.class_names[cls]
            draft.guessed.append(f"classes: the folders' order ({', '.join(data.class_names[:10])}) gives "
                                 f"accuracy {acc or 0:.3f}; matched to the outputs by the predictions, "
                                 f"{matched:.3f}: output order {order[:10]}")
            draft.confirm.append("class_names were ordered by matching the model's predictions to the class "
                                 "folders: check them against the model's documented output order")
            draft.accuracy = matched
            class_order = order
    else:
        shape = data.input_shape
        input_block["shape"] = shape
        lo, hi = float(X.min()), float(X.max())
        input_block["value_range"] = [round(lo, 4), round(hi, 4)]
        draft.guessed.append(f"inputs: images of shape {shape}, values in [{lo:.3g}, {hi:.3g}] (from the data)")
        draft.accuracy = _accuracy(bundle.model, X, y)
        if lo < -0.05:  # standardised ((x - mean) / std per channel) or otherwise signed
            draft.confirm.append(f"the images hold negative values (from {lo:.3g} to {hi:.3g}), as standardised "
                                 "images do: the auditor does not rescale them, so the model must have been trained "
                                 "on images standardised with the same mean and std (and the trigger or cue "
                                 "pattern must be given in that same scale)")
        elif hi > 1.5:
            draft.confirm.append("the images hold values above 1: the auditor does not rescale them, so the model "
                                 "must have been trained on the same 0..255 (or other) scale")
    logits = predict_logits(bundle.model, X[:2])
    n_out = int(logits.shape[1])
    single = bundle.spec.single_logit
    arch.setdefault("num_classes", 1 if single else n_out)
    if single:
        draft.guessed.append("one output: read as the logit z of the second class, i.e. two-class logits [0, z] "
                             "(a model trained with BCEWithLogitsLoss; \"single_logit\": true)")
    names = list(class_order or data.class_names)
    if n_out < len(names):
        raise AuditorError(f"the model gives {n_out} output{'s' if n_out != 1 else ''} but the data has "
                           f"{len(names)} classes "
                           f"({', '.join(names[:10])})")
    if n_out > len(names):
        names += [str(i) for i in range(len(names), n_out)]
        draft.confirm.append(f"the model has {n_out} outputs but the data names {len(data.class_names)} classes; "
                             "the others were named by their index")
    draft.guessed.append(f"classes: {n_out} outputs named {names[:10]}{' ...' if len(names) > 10 else ''} "
                         + ("(the class folders, matched to the outputs)" if class_order else
                            "(from the data's labels, in sorted order)"))
    draft.confirm.append("class_names must follow the model's output order (logit 0 first)")
    if draft.accuracy is not None:
        draft.guessed.append(f"probe run: accuracy {draft.accuracy:.3f} on all {len(y)} rows with this spec")
        chance = float(np.bincount(y.numpy()).max() / len(y)) if len(y) else 0.0
        # far nearer chance than a trained model gets: a quarter of the way from chance to perfect
        if draft.accuracy < chance + 0.25 * (1 - chance) and draft.accuracy < 0.9:
            how = ("the input columns (--inputs: the ones the model was trained on, in order) or the "
                   "preprocessing are probably wrong" if arch_class else
                   "the guessed architecture or input reading is probably wrong: write arch.layers / "
                   "preprocessing, or pass your class with --arch-file")
            draft.confirm.insert(0, f"LOW ACCURACY: {draft.accuracy:.3f} (always predicting the commonest class "
                                    f"gives {chance:.3f}); {how}")
    if bundle.spec.input.get("layout"):  # a graph that reads images channels last (the loader saw it)
        input_block["layout"] = bundle.spec.input["layout"]
    spec = {"arch": arch, "task": "classification", "input": input_block, "class_names": names,
            "preprocessing": preprocessing, "data": data.name,
            "provenance": {"name": path.stem, "drafted_by": "auditor spec init", "model_file": path.name},
            **({"single_logit": True} if single else {})}
    ModelSpec.from_dict(spec)  # the draft is a valid spec
    draft.spec = spec
    return draft


def _groups(prep: dict):
    from ..data.tabular import describe_inputs

    return describe_inputs(prep)
