"""The model spec: everything needed to rebuild and interpret a set of weights.

It rides as JSON in the safetensors metadata (key `auditor.spec`), so a model is one file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import AuditorError

SPEC_FORMAT = "auditor-model/1"
# (key, accepted types, how to say it) for the checks on an untrusted spec
_FIELD_TYPES = [("arch", dict, "an object"), ("task", str, "a string"), ("input", dict, "an object"),
                ("class_names", list, "a list"), ("preprocessing", (dict, type(None)), "an object or null"),
                ("provenance", dict, "an object"), ("data", (str, type(None)), "a string or null"),
                ("format", str, "a string")]


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelSpec":
        if not isinstance(d, dict):
            raise AuditorError("model spec must be a JSON object")
        if "arch" not in d:
            raise AuditorError("model spec has no 'arch' (e.g. {\"name\": \"mlp\", \"in_features\": 10, "
                               "\"hidden\": [32], \"num_classes\": 2})")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise AuditorError(f"model spec has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        for key, types, what in _FIELD_TYPES:
            if key in d and not isinstance(d[key], types):
                raise AuditorError(f"model spec: {key!r} must be {what}, not {type(d[key]).__name__}")
        if not all(isinstance(c, str) for c in d.get("class_names", [])):
            raise AuditorError("model spec: 'class_names' must be a list of strings")
        spec = cls(**d)
        if spec.task != "classification":
            raise AuditorError(f"model spec task {spec.task!r} is not supported; only 'classification'")
        return spec

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
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
        return int(self.arch.get("num_classes", len(self.class_names) or 2))
