"""The report model: one plain data structure, rendered as JSON, HTML and PDF.

`Report.to_dict()` is the JSON document (validated against `schema.json`); the HTML and PDF
are drawn from the same dict, so all three carry the same numbers. Wall-clock figures (every
`seconds` field and the `generated` section) vary between runs; `stable(report_dict)` drops
them, and what remains is identical when the same audit is re-run with the same seed.
"""
from __future__ import annotations

import math
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

SCHEMA_VERSION = "1.0"
MAX_ARRAY = 10_000  # larger tensors/arrays (e.g. in an editor's extras) are summarised by shape
VOLATILE_KEYS = ("seconds", "generated")
LIBRARIES = ("auditor", "torch", "captum", "numpy", "pandas", "scikit-learn", "fairlearn", "safetensors",
             "plotly", "jinja2")



def shown_source(source: str | None) -> str | None:
    """Where the data came from, as the report shows it: an upload's own file name (its copy in the
    dashboard's temporary folder is deleted after the session), else the path as given."""
    from ..audit.uploads import UPLOAD_PREFIX

    if not source:
        return None
    path = Path(source)
    return f"{path.name} (uploaded)" if any(p.startswith(UPLOAD_PREFIX) for p in path.parts) else source

def jsonable(value: Any) -> Any:
    """Plain JSON types: tensors and arrays become lists, NaN and infinities None, keys strings."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if (value.size if isinstance(value, np.ndarray) else value.numel()) > MAX_ARRAY:
            return {"shape": list(value.shape), "dtype": str(value.dtype)}
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return jsonable(arr.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if value is None or isinstance(value, str):
        return value
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    return str(value)


def stable(report: dict) -> dict:
    """The report without wall-clock fields (`seconds`, `generated`): equal across re-runs with one seed."""
    if isinstance(report, dict):
        return {k: stable(v) for k, v in report.items() if k not in VOLATILE_KEYS}
    if isinstance(report, list):
        return [stable(v) for v in report]
    return report


def environment(device: str, seed: int | None) -> dict:
    """Library versions, Python, platform, device and seed of this run."""
    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {"versions": versions, "python": sys.version.split()[0], "platform": platform.platform(terse=True),
            "device": device, "seed": seed, "threads": torch.get_num_threads()}


def _result(r) -> dict:
    """One requirement on one model: value, its 95 % interval and rows, verdict (pass / fail /
    inconclusive), and whether it counts as met under the verdict mode (`passed`)."""
    return {"value": r.value, "passed": r.passed, "verdict": getattr(r, "verdict", None) or
            ("pass" if r.passed else "fail"), "low": getattr(r, "low", None), "high": getattr(r, "high", None),
            "n": getattr(r, "n", None), "note": getattr(r, "note", None)}


def merge_requirements(before, after=None, change: dict | None = None) -> list[dict]:
    """Per requirement: value, interval and verdict before and (when an edit ran) after; `change`:
    paired-bootstrap differences by metric (`uncertainty.paired_differences`)."""
    after_by = {r.expr: r for r in (after.requirements if after is not None else [])}
    out = []
    for r in before.requirements:
        a = after_by.get(r.expr)
        d = (change or {}).get(r.metric)
        out.append({"expr": r.expr, "metric": r.metric, "op": r.op, "threshold": r.threshold,
                    "before": _result(r), "after": None if a is None else _result(a),
                    "change": None if a is None or d is None else
                    {"value": d["change"], "low": d["low"], "high": d["high"]}})
    return out


@dataclass
class Report:
    """Everything a compliance report says. Build with `build_report`; `to_dict()` is the JSON."""

    title: str
    verdict: dict
    requirements: list[dict]
    model: dict
    data: dict
    metrics: dict
    localization: dict | None = None
    edits: list[dict] = field(default_factory=list)
    tradeoff: dict | None = None
    environment: dict = field(default_factory=dict)
    reproduce: dict = field(default_factory=dict)
    signoff: dict = field(default_factory=dict)
    generated: dict = field(default_factory=dict)
    side_effects: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    uncertainty: dict = field(default_factory=dict)
    audit_log: dict | None = None  # the audit log's anchor (count, head) when the report was built

    @property
    def passed(self) -> bool:
        return bool(self.verdict["passed"])

    def to_dict(self) -> dict:
        return jsonable({"schema_version": SCHEMA_VERSION, "title": self.title, "verdict": self.verdict,
                         "requirements": self.requirements, "model": self.model, "data": self.data,
                         "metrics": self.metrics, "localization": self.localization, "edits": self.edits,
                         "tradeoff": self.tradeoff, "environment": self.environment, "reproduce": self.reproduce,
                         "signoff": self.signoff, "generated": self.generated, "side_effects": self.side_effects,
                         "warnings": self.warnings, "uncertainty": self.uncertainty, "audit_log": self.audit_log})

    @classmethod
    def from_dict(cls, d: dict) -> Report:
        return cls(**{k: v for k, v in d.items() if k != "schema_version"})


def _verdict(before, after, editor: str | None, side_effects=(), forbid_side_effects: bool = False) -> dict:
    from ..present import verdict

    v = verdict(before, after, side_effects, forbid_side_effects=forbid_side_effects,
                editor=None if editor is None else f"{editor} edit")
    return {"passed": v["passed"], "status": v["status"], "summary": v["summary"],
            "before": bool(before.passed), "after": None if after is None else bool(after.passed),
            "edited": after is not None, "met": v["met"], "total": v["total"], "inconclusive": v["inconclusive"],
            "side_effects": v["side_effects"], "mode": v["mode"], "forbid_side_effects": v["forbid_side_effects"],
            "requirement_lines": v["requirement_lines"], "side_effect_lines": v["side_effect_lines"]}


def _evaluation(ev) -> dict:
    """One model's metrics for the report: values, 95 % intervals (with rows and group sizes), groups."""
    return {"overall": ev.metrics, "groups": ev.groups, "intervals": getattr(ev, "intervals", {}) or {},
            "small_groups": getattr(ev, "small_groups", {}) or {}}


def _uncertainty(before, tradeoff, tradeoff_note: str | None) -> dict:
    """How the numbers were judged: interval method, verdict mode, minimum group size; and the
    trade-off's state (run, or why it is absent)."""
    from ..requirements.uncertainty import LEVEL, RESAMPLES, SEED

    return {"level": LEVEL, "method": "stratified bootstrap over rows (label x protected groups), percentile "
            "interval; paired (same resampled rows) for before/after changes", "resamples": RESAMPLES,
            "seed": SEED, "verdict_mode": getattr(before, "verdict_mode", "point"),
            "min_group": getattr(before, "min_group", 0),
            "tradeoff": "included" if tradeoff is not None else (tradeoff_note or "not run")}


def build_report(*, bundle, data, before, after=None, edits=(), edited=None, localization: dict | None = None,
                 tradeoff=None, model_path: str | None = None, edited_path: str | None = None,
                 device: str = "cpu", seed: int | None = None, command: str | None = None,
                 signoff: dict | None = None, side_effects=(), forbid_side_effects: bool = False,
                 changes: dict | None = None, tradeoff_note: str | None = None,
                 command_note: str | None = None) -> Report:
    """Assemble a `Report` from the pieces of an audit (`auditor.audit.AuditSession.build_report`).

    `before`/`after`: `Evaluation`s of the original and edited model; `edits`: every edit in order as
    plain dicts (`EditRecord.to_dict`); `tradeoff`: a `Tradeoff` (`auditor.audit.tradeoff.compare`);
    `localization`: the report's localization section (`Localization.to_report`)."""
    from ..evaluate import warnings_of
    from ..present import stamp_label

    edits = [dict(e) for e in edits]
    spec = bundle.spec
    model = {"name": bundle.name, "path": model_path, "format": bundle.format, "arch": spec.arch,
             "task": spec.task, "classes": list(spec.class_names), "parameters": int(bundle.n_parameters),
             "sha256_before": bundle.sha256, "sha256_after": None if edited is None else edited.sha256,
             "edited_path": edited_path, "provenance": spec.provenance}
    data_d = {"name": data.name, "kind": data.kind, "split": before.split, "rows": int(before.rows),
              "sha256": data.sha256, "splits": {s: len(data.split(s)) for s in ("train", "val", "test")},
              "protected": list(data.protected), "classes": list(data.class_names),
              "stamp": None if data.stamp is None else data.stamp.kind, "source": shown_source(data.source),
              "stamp_tested": stamp_label(data)}
    data_d.update({k: v for k, v in data.data_block(before.split).items() if k in ("audited", "partition", "editors")})
    metrics = {"before": _evaluation(before), "after": None if after is None else _evaluation(after)}
    title = f"Audit of {bundle.name} on {data.name}"
    verdict = _verdict(before, after, edits[-1]["editor"] if edits else None, side_effects, forbid_side_effects)
    if data_d["stamp_tested"]:  # which trigger/cue the verdict is about (a built-in one is named as the sample's)
        verdict["summary"] += f" Tested with {data_d['stamp_tested']}."
    return Report(title=title, verdict=verdict,
                  requirements=merge_requirements(before, after, changes), model=model, data=data_d, metrics=metrics,
                  localization=localization, edits=edits,
                  tradeoff=None if tradeoff is None else tradeoff.to_dict(),
                  environment=environment(device, seed),
                  reproduce={"command": command, "seed": seed, "note": command_note},
                  signoff={"auditor": None, "notes": None, "date": None, **(signoff or {})},
                  generated={"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "tool": "auditor"},
                  side_effects=[dict(e) for e in side_effects],
                  warnings=warnings_of(before, after),
                  uncertainty=_uncertainty(before, tradeoff, tradeoff_note))
