"""scikit-learn models from `.skops` files, converted exactly into the auditor's own architectures.

A `.skops` file is a zip of a JSON description (`schema.json`) and numpy arrays. Before anything is
loaded, every type the description names is checked against an explicit allow-list (the estimators
below, numpy arrays and plain containers); `skops.io.load` is then called with exactly the
untrusted types that passed (`skops.io.get_untrusted_types`), never with `trusted=True`, and skops
itself never unpickles. A type outside the list is refused in one line naming it.

Supported, and converted exactly (same scores, in float32):

- `LogisticRegression` (binary, or multinomial): an `mlp` with no hidden layer. A binary model keeps
  its one score z (`"single_logit"`), read as the two-class logits `[0, z]` (softmax of them is
  scikit-learn's `[1 - sigmoid(z), sigmoid(z)]`).
- `MLPClassifier` (`relu` -> `mlp`; `tanh`, `logistic`, `identity` -> `sequential`): the binary
  sigmoid output as above, a softmax output as it is.
- a `Pipeline` of a scaler (`StandardScaler`, `MinMaxScaler` without clipping, `MaxAbsScaler`,
  `RobustScaler`: each is (x - mean) / std per column), `OneHotEncoder` or a `ColumnTransformer` of them (and
  `"passthrough"`/`"drop"`) in front of one of those: the preprocessing becomes the spec's stored
  preprocessing (mean/std per numeric column, categories per one-hot column), and a scaler
  over everything they output after them (folded into each numeric column's mean/std and each one-hot
  input's own mean/std), also inside a `ColumnTransformer`'s own `Pipeline`.

An edited model goes back to `.skops` as the same estimator (weights copied into `coef_` /
`intercept_` or `coefs_` / `intercepts_`), or to `.onnx` / `.safetensors` like any native model.
"""
from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import AuditorError
from .files import LOADERS, SAVE_CHECKS, SAVERS, ModelBundle, bundle_from_state
from .spec import ModelSpec

INSTALL_HINT = "scikit-learn models (.skops) need `pip install skops` (or `pip install -e \".[sklearn]\"`)"
CLASSIFIERS = ("LogisticRegression", "MLPClassifier")
UNNAMED = "columns_unnamed"  # provenance flag: fitted on an array, so x0, x1, ... stand in for column names
SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler")  # x -> (x - mean) / std per column
SUPPORTED = ("Pipeline, ColumnTransformer, SimpleImputer (before a scaler or OneHotEncoder, or alone), "
             "StandardScaler, MinMaxScaler (clip=False), MaxAbsScaler, RobustScaler (each also after a OneHotEncoder "
             "or ColumnTransformer), OneHotEncoder, LogisticRegression, MLPClassifier")
# Every type a supported `.skops` file may name: (module, class). Anything else is refused unread.
ALLOWED_TYPES = {
    ("sklearn.pipeline", "Pipeline"),
    ("sklearn.compose._column_transformer", "ColumnTransformer"),
    ("sklearn.preprocessing._data", "StandardScaler"),
    ("sklearn.preprocessing._data", "MinMaxScaler"),
    ("sklearn.preprocessing._data", "MaxAbsScaler"),
    ("sklearn.preprocessing._data", "RobustScaler"),
    # make_column_selector (a fitted ColumnTransformer has resolved it to names) and the dtypes it selects by:
    # types named as values, never called
    ("sklearn.compose._column_transformer", "make_column_selector"),
    *(("builtins", t) for t in ("object", "bool", "int", "float", "str")),
    *(("numpy", t) for t in ("number", "integer", "floating", "signedinteger", "unsignedinteger", "bool")),
    ("sklearn.preprocessing._encoders", "OneHotEncoder"),
    ("sklearn.impute._base", "SimpleImputer"),
    # what a fitted ColumnTransformer keeps for a "passthrough" (func None; a function would be a refused node)
    ("sklearn.preprocessing._function_transformer", "FunctionTransformer"),
    ("sklearn.preprocessing._label", "LabelBinarizer"),  # inside a fitted MLPClassifier
    ("sklearn.linear_model._logistic", "LogisticRegression"),
    ("sklearn.neural_network._multilayer_perceptron", "MLPClassifier"),
    ("sklearn.neural_network._stochastic_optimizers", "AdamOptimizer"),  # training state of an MLPClassifier
    ("sklearn.neural_network._stochastic_optimizers", "SGDOptimizer"),
    ("numpy.random.mtrand", "RandomState"),
    *(("builtins", t) for t in ("dict", "list", "tuple", "str", "int", "float", "bool", "NoneType", "slice")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *(("numpy", t) for t in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8",
                              "bool_", "str_", "object_", "bytes_")),
}
# skops node kinds that only rebuild data and the allowed types (no functions, methods or operators)
ALLOWED_NODES = {"DictNode", "ListNode", "TupleNode", "SliceNode", "JsonNode", "TypeNode", "NdArrayNode",
                 "ObjectNode", "RandomStateNode", "DTypeNode", "NoneNode"}
MAX_SCHEMA_BYTES = 32 * 2**20


def _skops():
    try:
        import skops.io as sio
    except ModuleNotFoundError:
        raise AuditorError(INSTALL_HINT) from None
    return sio


def _schema_types(path: Path) -> tuple[set, set]:
    """(module, class) pairs and node kinds named anywhere in the file's `schema.json`."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("schema.json")
            if info.file_size > MAX_SCHEMA_BYTES:
                raise AuditorError(f"{path.name}: its skops description is {info.file_size / 2**20:.0f} MiB; "
                                   "refused as implausible")
            schema = json.loads(z.read(info))
    except AuditorError:
        raise
    except KeyError:
        raise AuditorError(f"{path.name} is not a skops file (no schema.json inside)") from None
    except (zipfile.BadZipFile, ValueError, RecursionError, OSError) as exc:
        raise AuditorError(f"{path.name} is not a readable skops file ({type(exc).__name__})") from None
    types, nodes = set(), set()
    stack = [schema]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            if "__class__" in n:
                types.add((str(n.get("__module__")), str(n["__class__"])))
            if "__loader__" in n:
                nodes.add(str(n["__loader__"]))
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)
    return types, nodes


def read_skops(path: str | os.PathLike):
    """The estimator in a `.skops` file, after checking every type it names against `ALLOWED_TYPES`."""
    path = Path(path)
    sio = _skops()
    types, nodes = _schema_types(path)
    bad = sorted(t for t in types if t not in ALLOWED_TYPES)
    if bad:
        mod, cls = bad[0]
        raise AuditorError(f"{path.name} holds type {mod}.{cls}, which the auditor does not load; "
                           f"supported: {SUPPORTED}")
    bad_nodes = sorted(nodes - ALLOWED_NODES)
    if bad_nodes:
        raise AuditorError(f"{path.name} holds a skops {bad_nodes[0]} (a function or operator), which the "
                           f"auditor does not load; supported: {SUPPORTED}")
    try:
        untrusted = sio.get_untrusted_types(file=str(path))
        if any(tuple(t.rsplit(".", 1)) not in ALLOWED_TYPES for t in untrusted):
            first = next(t for t in untrusted if tuple(t.rsplit(".", 1)) not in ALLOWED_TYPES)
            raise AuditorError(f"{path.name} holds type {first}, which the auditor does not load; "
                               f"supported: {SUPPORTED}")
        return sio.load(str(path), trusted=list(untrusted))
    except AuditorError:
        raise
    except Exception as exc:  # noqa: BLE001  (skops raises many kinds on a broken file)
        raise AuditorError(f"{path.name} is not a readable skops file: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


# --- estimator -> spec + weights -------------------------------------------------------------------
def _name(obj) -> str:
    return type(obj).__name__


def _refuse_step(obj, where: str) -> None:
    raise AuditorError(f"{where} is {_name(obj)}, which cannot be converted exactly; supported: {SUPPORTED}")


def _column_names(cols, names_in: list[str] | None, where: str) -> list[str]:
    """A ColumnTransformer's column selection as column names."""
    if isinstance(cols, str):
        cols = [cols]
    if callable(cols):
        raise AuditorError(f"{where} selects its columns with a function; name them (a list of column names)")
    arr = np.asarray(cols)
    if arr.dtype == bool:
        arr = np.flatnonzero(arr)
    out = []
    for c in arr.tolist():
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, int):
            out.append(names_in[c] if names_in else f"x{c}")
        else:
            raise AuditorError(f"{where} selects column {c!r}; select columns by name or position")
    return out


def _affine(scaler, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(M, S) per column of a fitted scaler that computes (x - M) / S."""
    kind, n = _name(scaler), int(scaler.n_features_in_)
    if kind == "StandardScaler":
        M = np.asarray(scaler.mean_, float) if scaler.with_mean and scaler.mean_ is not None else np.zeros(n)
        S = np.asarray(scaler.scale_, float) if scaler.with_std and scaler.scale_ is not None else np.ones(n)
    elif kind == "MinMaxScaler":  # x * scale_ + min_
        if getattr(scaler, "clip", False):
            raise AuditorError(f"{where}: MinMaxScaler(clip=True) clips its output, which the auditor does not "
                               "rebuild; supported: clip=False")
        scale = np.asarray(scaler.scale_, float)
        M, S = -np.asarray(scaler.min_, float) / scale, 1.0 / scale
    elif kind == "MaxAbsScaler":
        M, S = np.zeros(n), np.asarray(scaler.scale_, float)
    elif kind == "RobustScaler":
        M = np.asarray(scaler.center_, float) if scaler.with_centering and scaler.center_ is not None \
            else np.zeros(n)
        S = np.asarray(scaler.scale_, float) if scaler.with_scaling and scaler.scale_ is not None else np.ones(n)
    else:
        _refuse_step(scaler, where)
    if not (np.isfinite(M).all() and np.isfinite(S).all() and (S > 0).all()):
        raise AuditorError(f"{where}: {kind} has a column it cannot scale (a zero or non-finite scale)")
    return M, S


def _scaler_columns(scaler, cols: list[str], where: str) -> list[dict]:
    n = int(scaler.n_features_in_)
    if n != len(cols):
        raise AuditorError(f"{where}: {_name(scaler)} was fitted on {n} columns, not {len(cols)}")
    mean, scale = _affine(scaler, where)
    return [{"name": c, "type": "numeric", "mean": float(m), "std": float(s), "log1p": False}
            for c, m, s in zip(cols, mean, scale)]


def _encoder_columns(enc, cols: list[str], where: str) -> list[dict]:
    if getattr(enc, "drop", None) is not None:
        raise AuditorError(f"{where}: OneHotEncoder(drop={enc.drop!r}) cannot be converted exactly; "
                           "supported: OneHotEncoder with drop=None")
    if getattr(enc, "min_frequency", None) is not None or getattr(enc, "max_categories", None) is not None:
        raise AuditorError(f"{where}: OneHotEncoder with infrequent categories (min_frequency/max_categories) "
                           "cannot be converted exactly; supported: OneHotEncoder without them")
    if len(enc.categories_) != len(cols):
        raise AuditorError(f"{where}: OneHotEncoder was fitted on {len(enc.categories_)} columns, not {len(cols)}")
    out = []
    for c, cats in zip(cols, enc.categories_):
        values = [str(v) for v in np.asarray(cats).tolist()]
        if any(v == "nan" or v == "None" for v in values):
            raise AuditorError(f"{where}: column {c!r} has a missing value as a category; fill it before encoding")
        out.append({"name": c, "type": "categorical", "categories": values})
    return out


def _imputer_fills(imp, cols: list[str], where: str) -> list:
    """The value a fitted SimpleImputer puts in for a missing value of each column (the spec's "fill")."""
    missing = imp.missing_values
    if not (missing is None or (isinstance(missing, float) and np.isnan(missing))):
        raise AuditorError(f"{where}: SimpleImputer(missing_values={missing!r}) cannot be converted exactly; "
                           "supported: missing values as NaN (blank cells)")
    if getattr(imp, "add_indicator", False):
        raise AuditorError(f"{where}: SimpleImputer(add_indicator=True) adds columns the auditor cannot rebuild; "
                           "supported: add_indicator=False")
    stats = np.asarray(imp.statistics_, dtype=object)
    if int(imp.n_features_in_) != len(cols) or len(stats) != len(cols):
        raise AuditorError(f"{where}: SimpleImputer was fitted on {int(imp.n_features_in_)} columns, not {len(cols)}")
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in stats.tolist()):
        raise AuditorError(f"{where}: SimpleImputer has no fill for a column that was empty when it was fitted; "
                           "refit it on rows where every column has values")
    return stats.tolist()


def _with_fills(columns: list[dict], fills: list) -> list[dict]:
    for c, v in zip(columns, fills):
        c["fill"] = str(v) if c["type"] == "categorical" else float(v)
    return columns


def _imputed(steps: list, cols: list[str], where: str) -> list[dict]:
    """Columns for [SimpleImputer] or [SimpleImputer, a scaler / OneHotEncoder] (pipeline steps)."""
    fills = _imputer_fills(steps[0], cols, where)
    if len(steps) == 1:
        if any(isinstance(v, str) for v in fills):
            raise AuditorError(f"{where}: a SimpleImputer that fills text must be followed by a OneHotEncoder")
        return _with_fills(_passthrough(cols), fills)
    if len(steps) > 2 or _name(steps[1]) not in (*SCALERS, "OneHotEncoder"):
        raise AuditorError(f"{where}: after a SimpleImputer, one scaler or OneHotEncoder is converted "
                           f"exactly, not {' then '.join(_name(s) for s in steps[1:])} (supported: {SUPPORTED})")
    return _with_fills(_transformer_columns_for(steps[1], cols, where), fills)


def _passthrough(cols: list[str]) -> list[dict]:
    return [{"name": c, "type": "numeric", "mean": 0.0, "std": 1.0, "log1p": False} for c in cols]


def _transformer_columns(step, cols: list[str], where: str) -> list[dict]:
    """The spec's preprocessing columns for one fitted transformer on the columns `cols` (a ColumnTransformer
    selects among the columns it was fitted on by its own names)."""
    if _name(step) != "ColumnTransformer":
        return _transformer_columns_for(step, cols, where)
    names_in = list(getattr(step, "feature_names_in_", [])) or None
    out: list[dict] = []
    for name, trans, sel in step.transformers_:
        part = f"{where} (transformer {name!r})"
        if isinstance(trans, str) and trans == "drop":
            continue
        chosen = _column_names(sel, names_in, part)
        if not chosen:
            continue
        if _name(trans) == "Pipeline":
            out += _pipeline_columns([s for _, s in trans.steps], chosen, part)
        else:
            out += _transformer_columns_for(trans, chosen, part)
    return out


def _pipeline_columns(steps: list, cols: list[str], where: str) -> list[dict]:
    """Pipeline steps on the columns `cols` (in front of the classifier, or inside a ColumnTransformer): one
    transformer, or a SimpleImputer and the one after it, then optionally a scaler over everything they
    output (folded into each column's mean and std)."""
    if len(steps) > 1 and _name(steps[-1]) in SCALERS:
        return _scaled(_pipeline_columns(steps[:-1], cols, where), steps[-1], where)
    if _name(steps[0]) == "SimpleImputer":
        return _imputed(steps, cols, where)
    if len(steps) == 1:
        return _transformer_columns(steps[0], cols, where)
    raise AuditorError(f"{where}: a pipeline of {' then '.join(_name(s) for s in steps)} cannot be converted "
                       f"exactly (supported: {SUPPORTED}, and a scaler after them)")


def _is_passthrough(trans) -> bool:
    """A "passthrough" as written, or as a fitted ColumnTransformer keeps it (an identity FunctionTransformer)."""
    if isinstance(trans, str):
        return trans == "passthrough"
    return _name(trans) == "FunctionTransformer" and getattr(trans, "func", None) is None


def _transformer_columns_for(trans, cols: list[str], where: str) -> list[dict]:
    if _is_passthrough(trans):
        return _passthrough(cols)
    kind = _name(trans)
    if kind in SCALERS:
        return _scaler_columns(trans, cols, where)
    if kind == "OneHotEncoder":
        return _encoder_columns(trans, cols, where)
    if kind == "SimpleImputer":
        return _imputed([trans], cols, where)
    _refuse_step(trans, where)
    return []


def _front_columns(front: list, name: str) -> list[dict]:
    """The preprocessing columns of a pipeline's (name, step) pairs in front of its classifier, read as a
    ColumnTransformer's own Pipeline is (`_pipeline_columns`), on the columns the first step was fitted on."""
    steps = [s for _, s in front]
    names_in = list(getattr(steps[0], "feature_names_in_", [])) or \
        [f"x{i}" for i in range(int(steps[0].n_features_in_))]
    return _pipeline_columns(steps, names_in, f"{name}: pipeline step {front[0][0]!r}")


def _scaled(cols: list[dict], scaler, where: str) -> list[dict]:
    """`cols` followed by a scaler over every input they make: (z - M) / S of z = (x - m) / s is
    (x - (m + M s)) / (s S), for a numeric column and for each one-hot input of a categorical one."""
    from ..data.tabular import input_width

    width = input_width({"columns": cols})
    if int(scaler.n_features_in_) != width:
        raise AuditorError(f"{where}: {_name(scaler)} was fitted on {int(scaler.n_features_in_)} inputs, but the "
                           f"steps before it make {width}")
    M, S = _affine(scaler, where)
    at = 0
    for c in cols:
        if c["type"] == "categorical":
            k = len(c["categories"])
            m = np.asarray(c.get("mean", np.zeros(k)), float)
            sd = np.asarray(c.get("std", np.ones(k)), float)
            c["mean"] = (m + M[at:at + k] * sd).tolist()
            c["std"] = (sd * S[at:at + k]).tolist()
            at += k
        else:
            c["mean"], c["std"] = float(c["mean"] + M[at] * c["std"]), float(c["std"] * S[at])
            at += 1
    return cols


def _split(est, name: str):
    """(preprocessing columns or None, classifier) of a supported estimator."""
    if _name(est) in CLASSIFIERS:
        return None, est
    if _name(est) != "Pipeline":
        _refuse_step(est, f"{name}: the model")
    steps = [(n, s) for n, s in est.steps if s is not None and not (isinstance(s, str) and s == "passthrough")]
    if not steps or _name(steps[-1][1]) not in CLASSIFIERS:
        last = steps[-1][1] if steps else None
        raise AuditorError(f"{name}: the pipeline ends in {_name(last)}, not a classifier the auditor converts; "
                           f"supported: {', '.join(CLASSIFIERS)}")
    clf = steps[-1][1]
    front = steps[:-1]
    if not front:
        return None, clf
    cols = _front_columns(front, name)
    seen: set = set()
    for c in cols:
        if c["name"] in seen:
            raise AuditorError(f"{name}: column {c['name']!r} is used twice in the pipeline; each raw column "
                               "may feed one transformer")
        seen.add(c["name"])
    return cols, clf


def _convert(est, name: str) -> tuple[dict, dict, list, dict, list | None]:
    """(arch, state, class names, provenance, preprocessing columns or None) of a supported estimator."""
    cols, clf = _split(est, name)
    kind = _name(clf)
    classes = [str(c) for c in np.asarray(clf.classes_).tolist()]
    d = int(clf.n_features_in_)
    state: dict = {}
    prov: dict = {"estimator": _name(est), "classifier": kind, "classes": classes}
    if kind == "LogisticRegression":
        coef, intercept = np.asarray(clf.coef_, float), np.asarray(clf.intercept_, float)
        if len(classes) > 2 and (getattr(clf, "multi_class", "auto") == "ovr"
                                 or (getattr(clf, "multi_class", "auto") == "auto" and clf.solver == "liblinear")):
            raise AuditorError(f"{name}: a one-vs-rest LogisticRegression with {len(classes)} classes cannot be "
                               "converted exactly; supported: binary or multinomial LogisticRegression")
        w, b = coef, intercept  # a binary model keeps its one score z ("single_logit", read as [0, z])
        arch = {"name": "mlp", "in_features": d, "hidden": [], "num_classes": int(w.shape[0])}
        state = {"out.weight": w, "out.bias": b}
        prov["scores"] = ("one score z, audited as two-class logits [0, z]" if coef.shape[0] == 1
                          else "multinomial logits")
    else:
        if clf.out_activation_ not in ("logistic", "softmax") or (
                clf.out_activation_ == "logistic" and clf.coefs_[-1].shape[1] != 1):
            raise AuditorError(f"{name}: an MLPClassifier with output {clf.out_activation_!r} "
                               f"({clf.coefs_[-1].shape[1]} outputs, multi-label) cannot be converted; "
                               "supported: binary (logistic) or multi-class (softmax) outputs")
        act = clf.activation
        acts = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": "identity"}
        if act not in acts:
            raise AuditorError(f"{name}: MLPClassifier activation {act!r} is not supported; supported: {sorted(acts)}")
        weights = [np.asarray(c, float).T for c in clf.coefs_]
        biases = [np.asarray(b, float) for b in clf.intercepts_]
        hidden = [int(w.shape[0]) for w in weights[:-1]]
        if act == "relu":
            arch = {"name": "mlp", "in_features": d, "hidden": hidden, "num_classes": int(weights[-1].shape[0])}
            names = [f"fc{i}" for i in range(1, len(hidden) + 1)] + ["out"]
        else:
            layers: list = []
            names = []
            for w in weights[:-1]:
                names.append(str(len(layers)))
                layers += [{"type": "linear", "in": int(w.shape[1]), "out": int(w.shape[0])}, acts[act]]
            names.append(str(len(layers)))
            layers.append({"type": "linear", "in": int(weights[-1].shape[1]), "out": int(weights[-1].shape[0])})
            arch = {"name": "sequential", "layers": layers, "num_classes": int(weights[-1].shape[0])}
        for n, w, b in zip(names, weights, biases):
            state[f"{n}.weight"], state[f"{n}.bias"] = w, b
        prov["activation"] = act
        prov["scores"] = ("one score z, audited as two-class logits [0, z]" if clf.out_activation_ == "logistic"
                          else "softmax logits")
    state = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in state.items()}
    return arch, state, classes, prov, cols


def bundle_from_estimator(est, name: str = "model", source: str = "") -> ModelBundle:
    """An auditor bundle computing exactly what `est` (a supported estimator) computes."""
    arch, state, classes, prov, cols = _convert(est, name)
    d = arch["in_features"] if "in_features" in arch else arch["layers"][0]["in"]
    if cols is None:
        names_in = list(getattr(est, "feature_names_in_", [])) or [f"x{i}" for i in range(d)]
        features, preprocessing = [str(c) for c in names_in], None
        groups = {f: [i] for i, f in enumerate(features)}
    else:
        from ..data.tabular import describe_inputs, input_width

        preprocessing = {"version": 1, "columns": cols}
        if input_width(preprocessing) != d:
            raise AuditorError(f"{name}: the preprocessing makes {input_width(preprocessing)} inputs but the "
                               f"classifier takes {d}")
        features, groups = describe_inputs(preprocessing)
    import sklearn

    how = "exactly, into the auditor's architecture"
    if cols:
        how += " with the pipeline's preprocessing as its stored preprocessing"
    if getattr(est, "feature_names_in_", None) is None:  # fitted on an array: x0, x1, ... stand in for names
        prov[UNNAMED] = True
    prov = {"name": Path(source).stem if source else name,
            "sklearn": {**prov, "version": sklearn.__version__, "converted": how}}
    spec = ModelSpec.from_dict({"arch": arch, "input": {"kind": "tabular", "features": features,
                                                        "feature_groups": groups, "shape": [d]},
                                "class_names": classes, "preprocessing": preprocessing, "provenance": prov,
                                **({"single_logit": True} if arch["num_classes"] == 1 else {})})
    bundle = bundle_from_state(state, spec, source, "skops")
    bundle.origin = copy.deepcopy(est)
    return bundle


def unnamed_columns(spec: ModelSpec) -> list[str] | None:
    """The stand-in names (x0, x1, ...) of a model converted from an estimator fitted on an array, in input
    order; None when its columns have names."""
    prov = spec.provenance.get("sklearn") if isinstance(spec.provenance, dict) else None
    if not (isinstance(prov, dict) and prov.get(UNNAMED)):
        return None
    if spec.preprocessing:
        return [c["name"] for c in spec.preprocessing["columns"]]
    return list(spec.input.get("features") or [])


def name_columns(spec: ModelSpec, names: list[str] | None, columns, source: str) -> str | None:
    """Give a model fitted on an unnamed array the CSV columns it reads (`names`, in order: --inputs), in
    place; a note saying so, or None when its columns have names (or the data has the x0, x1, ... columns
    themselves). Never guessed from the file's column order (another order would be read silently wrong):
    refuses, naming what to do, without `names` or when their number is not the model's."""
    stand_in = unnamed_columns(spec)
    if stand_in is None:
        return None
    if not names:
        if set(stand_in) <= {str(c) for c in columns}:
            return None
        raise AuditorError(f"the model was fitted on an unnamed array of {len(stand_in)} columns "
                           f"({', '.join(stand_in[:4])}{', ...' if len(stand_in) > 4 else ''}): name the columns of "
                           f"{source} it reads, in its order, with --inputs COL,COL,... (the dashboard: \"Model "
                           "input columns, in the model's order\")")
    if len(names) != len(stand_in):
        raise AuditorError(f"the model reads {len(stand_in)} unnamed columns but --inputs names {len(names)}: "
                           f"give one column of {source} per model column, in its order")
    rename = dict(zip(stand_in, names))
    if spec.preprocessing:
        for c in spec.preprocessing["columns"]:
            c["name"] = rename[c["name"]]
        from ..data.tabular import describe_inputs

        spec.input["features"], spec.input["feature_groups"] = describe_inputs(spec.preprocessing)
    else:
        spec.input["features"] = list(names)
        spec.input["feature_groups"] = {n: [i] for i, n in enumerate(names)}
    spec.provenance["sklearn"][UNNAMED] = False
    spec.provenance["sklearn"]["columns_named_as"] = rename
    return (f"the model was fitted on an unnamed array: its columns {', '.join(stand_in)} are read from "
            f"{', '.join(names)} (--inputs, in that order)")


def load_skops(path: str | os.PathLike, spec: ModelSpec | None = None) -> ModelBundle:
    """Load a `.skops` file (size already checked by `load_model`); `spec` may rename the classes."""
    path = Path(path)
    est = read_skops(path)
    bundle = bundle_from_estimator(est, path.name, str(path))
    if spec is not None and spec.class_names:
        if len(spec.class_names) != len(bundle.spec.class_names):
            raise AuditorError(f"{path.name}: the spec names {len(spec.class_names)} classes but the model has "
                               f"{len(bundle.spec.class_names)}")
        bundle.spec.class_names = list(spec.class_names)
    return bundle


# --- bundle -> estimator ---------------------------------------------------------------------------
def estimator_from_bundle(bundle: ModelBundle):
    """A copy of the bundle's scikit-learn estimator holding the bundle's (edited) weights."""
    if bundle.origin is None:
        raise AuditorError(f"{bundle.name} did not come from a .skops file; write it as .safetensors or .onnx")
    est = copy.deepcopy(bundle.origin)
    _, clf = _split(est, bundle.name)
    layers = [m for m in bundle.model.modules() if isinstance(m, torch.nn.Linear)]
    ws = [m.weight.detach().cpu().double().numpy() for m in layers]
    bs = [(m.bias.detach().cpu().double().numpy() if m.bias is not None else np.zeros(m.out_features))
          for m in layers]
    if _name(clf) == "LogisticRegression":
        if len(ws) != 1 or ws[0].shape != clf.coef_.shape:  # the same rows (one score for a binary model)
            raise AuditorError(f"{bundle.name}: the edited model no longer has a LogisticRegression's shape")
        clf.coef_, clf.intercept_ = ws[0].astype(clf.coef_.dtype), bs[0].astype(clf.intercept_.dtype)
    else:
        if len(ws) != len(clf.coefs_) or any(w.shape[::-1] != c.shape for w, c in zip(ws, clf.coefs_)):
            raise AuditorError(f"{bundle.name}: the edited model no longer has the MLPClassifier's shape")
        clf.coefs_ = [w.T.astype(c.dtype) for w, c in zip(ws, clf.coefs_)]
        clf.intercepts_ = [b.astype(c.dtype) for b, c in zip(bs, clf.intercepts_)]
    return est


def _classifier_inputs(est):
    return _split(est, "model")[1]


def save_skops(bundle: ModelBundle, path: str | os.PathLike, extra_metadata: dict | None = None) -> Path:
    """Write the edited model back as a `.skops` file of the original estimator type, after checking that
    the written estimator's probabilities agree with the PyTorch model's."""
    sio = _skops()
    path = Path(path)
    est = estimator_from_bundle(bundle)
    clf = _classifier_inputs(est)
    x = torch.randn(64, int(clf.n_features_in_), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = torch.softmax(copy.deepcopy(bundle.model).cpu().eval()(x).double(), dim=1).numpy()
    got = clf.predict_proba(x.double().numpy())
    if got.shape != want.shape or float(np.abs(got - want).max()) > 1e-5:
        raise AuditorError(f"{path.name}: the scikit-learn estimator disagrees with the edited model; not written")
    from ..atomic import temp_beside

    tmp = temp_beside(path)
    try:
        sio.dump(est, str(tmp))
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001
        tmp.unlink(missing_ok=True)
        raise AuditorError(f"cannot write {path.name}: {type(exc).__name__}: {exc}") from None
    return path


def _check_saveable(bundle: ModelBundle, path: Path) -> None:
    if path.suffix.lower() == ".skops" and bundle.origin is None:
        raise AuditorError(f"{path.name}: only a model loaded from a .skops file goes back to .skops; "
                           f"write it as .safetensors or .onnx (e.g. --out {path.with_suffix('.onnx').name})")


LOADERS[".skops"] = load_skops
SAVERS[".skops"] = save_skops
SAVE_CHECKS[".skops"] = _check_saveable
