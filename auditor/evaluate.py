"""Evaluate a model against requirements: the numbers every page, report and CLI shows."""
from __future__ import annotations

from dataclasses import dataclass, field

from .data.base import AuditData
from .errors import AuditorError
from .models.architectures import predict_logits
from .models.files import ModelBundle
from .requirements import (Fixes, Requirement, RequirementResult, compute_metrics, parse_requirements)


@dataclass
class Evaluation:
    """Metrics overall and per group, and each requirement's verdict. `to_dict` is the stable JSON shape:
    `{"metrics": {name: value}, "groups": {attribute: {group: {name: value}}},
      "requirements": [{"expr", "metric", "value", "threshold", "op", "passed"}], "passed": bool, ...}`."""

    metrics: dict[str, float]
    groups: dict[str, dict[str, dict[str, float]]]
    requirements: list[RequirementResult] = field(default_factory=list)
    model_sha256: str = ""
    data_sha256: str = ""
    data_name: str = ""
    split: str = "test"
    rows: int = 0

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.requirements)

    def to_dict(self) -> dict:
        return {"metrics": dict(self.metrics), "groups": self.groups,
                "requirements": [r.to_dict() for r in self.requirements], "passed": self.passed,
                "model": {"sha256": self.model_sha256},
                "data": {"name": self.data_name, "sha256": self.data_sha256, "split": self.split, "rows": self.rows}}


def check_compatible(bundle: ModelBundle, data: AuditData) -> None:
    """The model's input size and class count must match the data; a clear error when not."""
    arch = bundle.spec.arch
    expected = arch.get("in_features")
    if expected is not None and data.kind == "tabular" and int(expected) != data.n_inputs:
        raise AuditorError(f"model expects {expected} inputs but data {data.name!r} gives {data.n_inputs}; "
                           "is this the data the model was trained on (same columns and preprocessing)?")
    if data.kind != bundle.spec.input_kind:
        raise AuditorError(f"model takes {bundle.spec.input_kind} inputs but data {data.name!r} is {data.kind}")
    shape = bundle.spec.input.get("shape")
    if data.kind == "image" and shape and list(shape) != data.input_shape:
        raise AuditorError(f"model expects images of shape {shape} but data {data.name!r} has {data.input_shape}")
    n_classes = bundle.spec.num_classes
    if len(data.class_names) > n_classes:
        raise AuditorError(f"model predicts {n_classes} classes but data {data.name!r} has "
                           f"{len(data.class_names)}")
    probe = next((s.X[:2] for s in (data.test, data.val, data.train) if len(s)), None)
    if probe is not None:  # ONNX graphs and custom code say nothing about their input size: try it
        try:
            out = predict_logits(bundle.model, probe)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise AuditorError(f"the model cannot run on data {data.name!r} (inputs of shape "
                               f"{list(probe.shape[1:])}): {str(exc).splitlines()[0][:160]}") from None
        if out.dim() != 2 or out.shape[1] < len(data.class_names):
            raise AuditorError(f"the model returns outputs of shape {list(out.shape[1:])} but data "
                               f"{data.name!r} has {len(data.class_names)} classes")


def evaluate(bundle: ModelBundle, data: AuditData, requirements=(), split: str = "test",
             reference: ModelBundle | None = None, fixes: Fixes | None = None) -> Evaluation:
    """Metrics of `bundle` on `data` and the verdict of every requirement (strings or Requirement)."""
    reqs: list[Requirement] = parse_requirements(requirements)
    check_compatible(bundle, data)
    report = compute_metrics(bundle.model, data, split,
                             reference=None if reference is None else reference.model, fixes=fixes)
    results = [r.check(report.metrics) for r in reqs]
    return Evaluation(report.metrics, report.groups, results, bundle.sha256, data.sha256, data.name, split,
                      len(data.split(split)))
