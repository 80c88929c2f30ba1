"""The model spec: everything needed to rebuild and interpret a set of weights.

It rides as JSON in the safetensors metadata (key `auditor.spec`), so a model is one file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuditorError

SPEC_FORMAT = "auditor-model/1"
# (key, accepted types, how to say it) for the checks on an untrusted spec
_FIELD_TYPES = [("arch", dict, "an object"), ("task", str, "a string"), ("input", dict, "an object"),
                ("class_names", list, "a list"), ("preprocessing", (dict, type(None)), "an object or null"),
                ("provenance", dict, "an object"), ("data", (str, type(None)), "a string or null"),
                ("format", str, "a string"), ("adapters", list, "a list"),
                ("weights_dtype", str, "a string")]


SCHEMA_PATH = Path(__file__).with_name("spec.schema.json")
DOCS = "see docs/formats.md#model-spec"
_VALIDATOR = None


def spec_schema() -> dict:
    """The JSON Schema of a model spec (`spec.schema.json`, every field explained, with examples)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _validator():
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema

        _VALIDATOR = jsonschema.Draft202012Validator(spec_schema())
    return _VALIDATOR


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(the spec)"


def _pick(errors: list):
    """The error to report: the deepest in the spec, a concrete one before an any/oneOf."""
    return max(errors, key=lambda e: (len(e.absolute_path), e.validator not in ("oneOf", "anyOf")))


def _meant_branch(context: list) -> list:
    """The errors of the oneOf branches whose discriminator fits (the value's JSON type, a layer's or
    column's "type"): a layer object is not reported as "not one of ['relu', ...]"."""
    branches: dict = {}
    for e in context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    meant = [errs for errs in branches.values()
             if not any(e.validator in ("type", "enum", "const") and list(e.relative_path) in ([], ["type"])
                        for e in errs)]
    return [e for errs in meant for e in errs] or context


def validate_spec(d: dict) -> None:
    """Check a spec dict against `spec.schema.json`; the first error names its key in one line."""
    errors = list(_validator().iter_errors(d))
    if not errors:
        _check_scaled_categories(d.get("preprocessing"))
        return
    err = _pick(errors)
    while err.context:  # a oneOf/anyOf: say what failed in the branch meant for this kind of value
        err = _pick(_meant_branch(err.context))
    where = _where(err.absolute_path)
    message = err.message if len(err.message) <= 160 else err.message[:157] + "..."
    arch = d.get("arch") if isinstance(d.get("arch"), dict) else {}
    if err.absolute_path and err.absolute_path[0] == "arch" and arch.get("name") in ("mlp", "cnn", "sequential"):
        raise AuditorError(f"model spec: bad parameters for architecture {arch['name']!r}: {where!r}: {message} "
                           f"({DOCS})")
    raise AuditorError(f"model spec: {where!r}: {message} ({DOCS})")


def _check_scaled_categories(prep) -> None:
    """A categorical column's 'mean' and 'std' give one number per category (the schema cannot say so)."""
    for i, c in enumerate((prep or {}).get("columns", [])):
        for key in ("mean", "std"):
            if c.get("type") == "categorical" and key in c and len(c[key]) != len(c["categories"]):
                raise AuditorError(f"model spec: 'preprocessing.columns.{i}.{key}': column {c['name']!r} has "
                                   f"{len(c['categories'])} categories but {len(c[key])} values of {key!r}: give "
                                   f"one per category, in the order of 'categories' ({DOCS})")


MAX_SPEC_DEPTH = 32  # nesting of a spec's JSON (real ones: about 5); deeper is refused before any use


def _nesting(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in `value` (counted without recursion; stops past `limit`)."""
    stack, deepest = [(value, 1)], 0
    while stack and deepest <= limit:
        v, depth = stack.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is not None:
            deepest = max(deepest, depth)
            stack.extend((x, depth + 1) for x in items)
    return deepest


@dataclass
class ModelSpec:
    """Architecture, task and input description of a model.

    `input` holds `kind` ("tabular" or "image"), `features` (model input names, in order),
    `feature_groups` (raw feature -> input indices, for one-hot inputs) and `shape`.
    `preprocessing` is the fitted transform from raw columns to inputs (None: the data is
    already numeric, taken in the order of `input.features`).
    """

    arch: dict
    task: str = "classification"
    input: dict = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    preprocessing: dict | None = None
    provenance: dict = field(default_factory=dict)
    data: str | None = None
    format: str = SPEC_FORMAT
    adapters: list = field(default_factory=list)  # e.g. a retrieval codebook (`auditor.models.adapters`)
    # the model returns one logit z of a binary task (BCEWithLogitsLoss): read as two-class logits [0, z]
    single_logit: bool = False
    # the precision the file stores its weights in when not float32 (set on loading; `stored_float_dtype`)
    weights_dtype: str | None = None

    def to_json(self) -> str:
        d = asdict(self)
        if not d["adapters"]:
            del d["adapters"]  # a spec without adapters is written as before they existed
        for key in ("single_logit", "weights_dtype"):
            if not d[key]:
                del d[key]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> ModelSpec:
        if not isinstance(d, dict):
            raise AuditorError("model spec must be a JSON object")
        if _nesting(d, MAX_SPEC_DEPTH) > MAX_SPEC_DEPTH:  # would fail later, deep inside an edit or a report
            raise AuditorError(f"model spec is nested more than {MAX_SPEC_DEPTH} levels deep: not a spec ({DOCS})")
        if "arch" not in d:
            raise AuditorError("model spec has no 'arch' (e.g. {\"name\": \"mlp\", \"in_features\": 10, "
                               "\"hidden\": [32], \"num_classes\": 2}, or {\"name\": \"onnx\", \"num_classes\": 10} "
                               f"for an ONNX graph; `auditor spec init MODEL DATA` drafts a spec; {DOCS})")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise AuditorError(f"model spec has unknown keys {sorted(unknown)}; known: {sorted(known)} ({DOCS})")
        for key, types, what in _FIELD_TYPES:
            if key in d and not isinstance(d[key], types):
                raise AuditorError(f"model spec: {key!r} must be {what}, not {type(d[key]).__name__}")
        if not all(isinstance(c, str) for c in d.get("class_names", [])):
            raise AuditorError("model spec: 'class_names' must be a list of strings")
        validate_spec(d)
        spec = cls(**d)
        if spec.task != "classification":
            raise AuditorError(f"model spec task {spec.task!r} is not supported; only 'classification'")
        return spec

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AuditorError(f"model spec is not valid JSON: {exc}") from None
        except RecursionError:
            raise AuditorError("model spec is nested too deeply to be a spec") from None
        return cls.from_dict(d)

    @property
    def input_kind(self) -> str:
        return self.input.get("kind", "tabular")

    @property
    def num_classes(self) -> int:
        if self.single_logit:
            return 2
        return int(self.arch.get("num_classes", len(self.class_names) or 2))
