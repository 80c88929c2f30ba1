"""One user's audit, independent of any UI: the model as loaded (never edited), the current
model (a private copy), the data, the requirements, localization results and the edits applied,
each revertible bit for bit.

The dashboard keeps one `AuditSession` per browser session; the model and data it starts from
may be shared (cached) objects, which is why nothing here ever edits `pristine` in place.

    >>> from auditor import load_model, load_data
    >>> from auditor.session import AuditSession
    >>> bundle = load_model("sample_models/digits_cnn_trojan.safetensors")
    >>> s = AuditSession(bundle, load_data("digits-trojan"))
    >>> [r.expr for r in s.requirements]
    ['attack_success_rate <= 0.02', 'accuracy >= 0.95']
    >>> record = s.run_edit("dynamic-rank-one", {"samples": 1})  # doctest: +SKIP
    >>> s.revert(0); s.current.sha256 == bundle.sha256  # doctest: +SKIP
    True
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import math
import re
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .backend import describe_device, pick_device
from .data.base import SPLITS, AuditData
from .errors import AuditorError
from .evaluate import Evaluation, evaluate
from .models.architectures import editable_layers
from .models.files import ModelBundle, save_model
from .requirements import METRICS, Requirement, parse_requirement

Callback = Callable[[float, str], None]

# Requirements a newcomer gets for the built-in data sets (edit them on the Requirements page).
DEFAULT_REQUIREMENTS: dict[str, list[str]] = {
    "digits-trojan": ["attack_success_rate <= 0.02", "accuracy >= 0.95"],
    "digits-spurious": ["cue_gap <= 0.05", "accuracy >= 0.95"],
    "digits": ["accuracy >= 0.95"],
    "adult": ["demographic_parity <= 0.05", "accuracy >= 0.82"],
    "compas": ["demographic_parity <= 0.1", "accuracy >= 0.64"],
}
# Metrics whose value is a count, not a fraction, and gap metrics (a difference of two rates).
_COUNTS = {m for m, info in METRICS.items() if info.unit == "count"}
_GAPS = {"demographic_parity", "equalized_odds", "cue_gap", "drawdown"}
# Where a metric belongs, for grouping the "add a requirement" choices.
CATEGORIES = {
    "accuracy": "utility floor", "balanced_accuracy": "utility floor", "drawdown": "utility floor",
    "changed_predictions": "utility floor", "demographic_parity": "fairness", "equalized_odds": "fairness",
    "worst_group_accuracy": "worst-group accuracy", "sparsity": "sparsity", "features_used": "data minimisation",
    "attack_success_rate": "backdoor (attack success)", "cue_gap": "spurious cue", "cue_accuracy": "spurious cue",
    "edit_success": "fixes", "generality": "fixes",
}


FIX_METRICS = {"edit_success", "generality"}


def base_metric(key: str) -> str:
    """`demographic_parity[sex]` -> `demographic_parity`."""
    return key.split("[", 1)[0]


def metric_label(key: str) -> str:
    """A readable name: `demographic_parity[race]` -> `Demographic parity (race)`."""
    name = base_metric(key).replace("_", " ")
    label = name[:1].upper() + name[1:]
    m = re.search(r"\[(.+)\]", key)
    return f"{label} ({m.group(1)})" if m else label


def metric_help(key: str) -> str:
    """One line saying what a metric means (from the METRICS registry)."""
    info = METRICS.get(base_metric(key))
    return info.description if info else ""


def format_value(key: str, value: float | None) -> str:
    """A metric value with its unit: fractions as percent (gaps in percentage points), counts as-is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    metric = base_metric(key)
    if metric in _COUNTS:
        return f"{value:.0f}"
    if metric in _GAPS:
        return f"{100 * value:.2f} pp"
    return f"{100 * value:.2f} %"


def default_requirements(data: AuditData, bundle: ModelBundle | None = None) -> list[Requirement]:
    """Sensible starting requirements: the built-in data sets' own, else one for the data's
    misbehaviour (trigger, cue, protected groups) plus a utility floor 2 points under today's accuracy."""
    if data.name in DEFAULT_REQUIREMENTS:
        return [parse_requirement(t) for t in DEFAULT_REQUIREMENTS[data.name]]
    out = []
    if data.trigger is not None:
        out.append("attack_success_rate <= 0.02")
    elif data.cue is not None:
        out.append("cue_gap <= 0.05")
    elif data.protected and len(data.class_names) == 2:
        out.append("demographic_parity <= 0.05")
    if bundle is not None:
        acc = evaluate(bundle, data).metrics["accuracy"]
        out.append(f"accuracy >= {math.floor(100 * (acc - 0.02)) / 100:.2f}")
    return [parse_requirement(t) for t in out]


# ---------------------------------------------------------------------------------------------
# Editor settings as plain data (a UI renders each as a widget)


@dataclass
class Setting:
    """One field of an editor's `Hyper` dataclass: `kind` is int, float, bool, str or choice;
    `optional` means None is allowed (shown as "auto"); `help` is the comment beside the field."""

    name: str
    kind: str
    default: Any
    optional: bool = False
    help: str = ""
    choices: list | None = None


def _field_comments(cls: type) -> dict[str, str]:
    """`name: type = default  # comment` -> {name: comment}, over the dataclass and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            m = re.match(r"\s+([A-Za-z_]\w*)\s*:[^#]*#\s*(.+)$", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def editor_settings(editor_cls: type, bundle: ModelBundle | None = None,
                    data: AuditData | None = None) -> list[Setting]:
    """The settings of an editor (its `Hyper` fields) with types, defaults, choices and help
    (layer names from `bundle`, protected attributes from `data`)."""
    hyper = getattr(editor_cls, "Hyper", None)
    if hyper is None:
        return []
    try:
        hints = typing.get_type_hints(hyper)
    except Exception:  # an annotation that cannot be resolved: fall back to the default's type
        hints = {}
    comments = _field_comments(hyper)
    defaults = hyper()
    layers = [n for n, _ in editable_layers(bundle.model)] if bundle is not None else None
    out = []
    for f in dataclasses.fields(hyper):
        default = getattr(defaults, f.name)
        hint = hints.get(f.name, type(default))
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        if base not in (int, float, bool, str):
            base = type(default) if default is not None else str
        if base not in (int, float, bool, str):
            continue  # lists, dicts: not settable from a form; the default is used
        kind = {int: "int", float: "float", bool: "bool", str: "str"}[base]
        choices = None
        if f.name == "layer" and layers:
            kind, choices = "choice", layers
        elif f.name.endswith("split"):
            kind, choices = "choice", list(SPLITS)
        elif f.name == "attribute" and data is not None and data.protected:
            kind, choices = "choice", list(data.protected)
        elif f.name == "attribution":
            from .localize import METHODS
            kind, choices = "choice", list(METHODS)
        out.append(Setting(f.name, kind, default, optional, comments.get(f.name, ""), choices))
    return out


# ---------------------------------------------------------------------------------------------
# Localization results


@dataclass
class Localization:
    """What the Localize step found: `ranking` (layers, best first; for a fairness audit from
    `fairness_layers`), `features` (per raw feature, tabular), `pixels` (per-pixel maps for image pairs)."""

    kind: str  # "trigger", "cue", "twins", "fairness" or "features"
    ranking: pd.DataFrame | None = None
    features: pd.DataFrame | None = None
    pixels: dict | None = None
    clean: torch.Tensor | None = None
    corrupted: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)
    model_sha256: str = ""

    @property
    def top_layer(self) -> str | None:
        return None if self.ranking is None or self.ranking.empty else str(self.ranking.iloc[0]["layer"])

    def to_dict(self) -> dict:
        return {"kind": self.kind, "settings": self.settings, "model_sha256": self.model_sha256,
                "ranking": None if self.ranking is None else _records(self.ranking),
                "features": None if self.features is None else _records(self.features)}


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            for row in df.to_dict("records")]


def localize(bundle: ModelBundle, data: AuditData, *, samples: int = 1, seed: int = 0,
             method: str = "integrated_gradients", n_steps: int = 32, max_rows: int = 1000,
             show_pairs: int = 3) -> Localization:
    """Run the localization that fits the data: layer ranking on (clean, corrupted) pairs for a
    trigger, cue or twins, with pixel maps for images; for tabular data, attributions per raw
    feature and, with protected groups, the layers that carry the score gap between groups."""
    from . import localize as loc

    model = bundle.model
    settings = {"samples": samples, "seed": seed, "method": method, "n_steps": n_steps}
    has_pairs = data.stamp is not None or data.train.corrupted is not None
    if has_pairs:
        kind = "trigger" if data.trigger is not None else "cue" if data.cue is not None else "twins"
        clean, corrupted, labels = data.pairs(samples, seed, split="train")
        ranking = loc.rank_layers(model, corrupted, clean, target=labels, reference=data.train.X, method=method,
                                  n_steps=n_steps)
        pixels = None
        if data.kind == "image":
            k = min(show_pairs, len(clean))
            pixels = loc.pixel_attributions(model, clean[:k], corrupted[:k], n_steps=n_steps)
        return Localization(kind, ranking, None, pixels, clean, corrupted, labels, settings, bundle.sha256)
    if data.kind != "tabular":
        raise AuditorError(f"data set {data.name!r} shows no misbehaviour to localize: it has no trigger, cue, "
                           "corrupted twins or protected groups (try digits-trojan or digits-spurious)")
    X = _sample_rows(data.test.X, max_rows, seed)
    features = loc.feature_attributions(model, X, data.feature_groups, n_steps=n_steps)
    ranking = None
    kind = "features"
    if data.protected and len(data.class_names) == 2:
        attr = data.primary_protected
        ranking = loc.fairness_layers(model, data.test.X, data.test.groups[attr], seed=seed, method=method,
                                      n_steps=n_steps)
        kind = "fairness"
        settings["attribute"] = attr
    return Localization(kind, ranking, features, None, settings=settings, model_sha256=bundle.sha256)


def _sample_rows(X: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if len(X) <= n:
        return X
    rows = np.sort(np.random.default_rng(seed).choice(len(X), size=n, replace=False))
    return X[rows]


# ---------------------------------------------------------------------------------------------
# Edits


@dataclass
class EditRecord:
    """One applied edit: the editor's result (with the weight delta that undoes it), the model's
    hash before and after, and the requirement verdicts after."""

    result: Any  # EditResult
    sha_before: str
    sha_after: str
    requirements: list[str]
    metrics_after: dict[str, float] = field(default_factory=dict)
    passed_after: bool = False

    @property
    def editor(self) -> str:
        return self.result.editor

    def to_dict(self) -> dict:
        d = self.result.to_dict()
        d.update(sha_before=self.sha_before, sha_after=self.sha_after, requirements=self.requirements,
                 metrics_after=self.metrics_after, passed_after=self.passed_after)
        return d


class AuditSession:
    """State of one audit. `pristine` is never modified (it may be shared between users);
    `current` is this session's own model, replaced (never edited in place) by each edit or revert."""

    def __init__(self, pristine: ModelBundle, data: AuditData, requirements=None, *,
                 model_label: str = "", data_label: str = ""):
        from .evaluate import check_compatible

        check_compatible(pristine, data)
        self.pristine = pristine
        self.current = pristine.copy()
        self.data = data
        self.model_label = model_label or pristine.name
        self.data_label = data_label or data.name
        self.pristine_sha256 = pristine.sha256
        self.requirements: list[Requirement] = (
            [parse_requirement(r) for r in requirements] if requirements is not None
            else default_requirements(data, pristine))
        self.edits: list[EditRecord] = []
        self.localization: Localization | None = None
        self.chosen_layer: str | None = None  # None: the editor picks the top-ranked layer itself
        self.tradeoff = None  # auditor.tradeoff.Tradeoff of the last comparison run
        self.tradeoff_key: tuple | None = None
        self._attr_key: tuple | None = None
        self._attr: dict = {}
        self._editors_key: tuple | None = None
        self._editors: list[type] = []
        self.fix_specs: list[str] = []  # mistakes to fix, "ROW=LABEL" over the test split
        self.fixes = None  # auditor.requirements.Fixes built from fix_specs
        self.auditor_name = ""
        self.notes = ""
        self._evals: dict[tuple, Evaluation] = {}

    # -- identity ---------------------------------------------------------------------------
    @property
    def edited(self) -> bool:
        return bool(self.edits)

    @property
    def device(self) -> str:
        return describe_device(pick_device())

    def layers(self) -> pd.DataFrame:
        """Every module with parameters: name, type, weight shape, parameter count."""
        rows = []
        for name, mod in self.current.model.named_modules():
            own = list(mod.parameters(recurse=False))
            if not name or not own:
                continue
            w = getattr(mod, "weight", None)
            rows.append({"layer": name, "type": type(mod).__name__,
                         "shape": " x ".join(map(str, w.shape)) if w is not None else "",
                         "parameters": int(sum(p.numel() for p in own))})
        return pd.DataFrame(rows)

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, which: str = "current", split: str = "test") -> Evaluation:
        """Metrics and requirement verdicts of the current (or pristine) model, cached per weights."""
        bundle = self.current if which == "current" else self.pristine
        sha = bundle.sha256 if which == "current" else self.pristine_sha256
        key = (sha, tuple(r.expr for r in self.requirements), split, tuple(self.fix_specs))
        if key not in self._evals:
            if len(self._evals) > 32:
                self._evals.clear()
            ref = self.pristine if which == "current" else None
            ev = evaluate(bundle, self.data, [], split, reference=ref, fixes=self.fixes)
            if which != "current":
                ev.metrics.setdefault("drawdown", 0.0)
                ev.metrics.setdefault("changed_predictions", 0.0)
            ev.requirements = [r.check(ev.metrics) for r in self.requirements]
            self._evals[key] = ev
        return self._evals[key]

    def available_metrics(self) -> list[str]:
        """Metric keys a requirement can use for this model and data (including `[attribute]` forms)."""
        return list(self.evaluate().metrics)

    def requirement_table(self) -> pd.DataFrame:
        """One row per requirement: its text, meaning, value before any edit, now, and whether it holds now."""
        before = self.evaluate("pristine").requirements
        now = self.evaluate().requirements
        rows = []
        for req, b, n in zip(self.requirements, before, now):
            rows.append({"requirement": req.expr, "meaning": metric_help(req.key),
                         "threshold": format_value(req.key, req.threshold),
                         "before edits": format_value(req.key, b.value), "now": format_value(req.key, n.value),
                         "passes": bool(n.passed)})
        return pd.DataFrame(rows, columns=["requirement", "meaning", "threshold", "before edits", "now", "passes"])

    def _shown_metrics(self, metrics: dict) -> list[str]:
        """Metric keys for tables: `demographic_parity` is left out where `demographic_parity[sex]`
        (the same number, for the data's first protected attribute) is shown."""
        attr = self.data.primary_protected
        return [k for k in metrics if not (attr and f"{k}[{attr}]" in metrics)]

    def metrics_table(self, which: str = "current") -> pd.DataFrame:
        m = self.evaluate(which).metrics
        return pd.DataFrame([{"metric": metric_label(k), "value": format_value(k, m[k]), "meaning": metric_help(k)}
                             for k in self._shown_metrics(m)
                             if which == "current" or k not in ("drawdown", "changed_predictions")])

    def compare_table(self) -> pd.DataFrame:
        """Before vs now, every metric, with units."""
        b, n = self.evaluate("pristine").metrics, self.evaluate().metrics
        rows = []
        for k in self._shown_metrics(n):
            if k in ("drawdown", "changed_predictions"):
                continue
            vb, vn = b.get(k), n[k]
            change = None if vb is None else vn - vb
            rows.append({"metric": metric_label(k), "before": format_value(k, vb), "after": format_value(k, vn),
                         "change": "" if change is None else _signed(k, change), "meaning": metric_help(k)})
        return pd.DataFrame(rows)

    def group_table(self, attribute: str) -> pd.DataFrame:
        """Per group of `attribute`: accuracy and selection rate (positive predictions) before and now."""
        b = self.evaluate("pristine").groups.get(attribute, {})
        n = self.evaluate().groups.get(attribute, {})
        rows = []
        for g, vals in n.items():
            row = {attribute: g, "rows": int(vals.get("count", 0)) if "count" in vals else None}
            for metric in ("accuracy", "selection_rate", "true_positive_rate", "false_positive_rate"):
                if metric in vals:
                    label = metric.replace("_", " ")
                    row[f"{label} before"] = f"{100 * b.get(g, {}).get(metric, float('nan')):.2f} %"
                    row[f"{label} after"] = f"{100 * vals[metric]:.2f} %"
            rows.append(row)
        df = pd.DataFrame(rows)
        return df.drop(columns=["rows"]) if "rows" in df and df["rows"].isna().all() else df

    # -- requirements -----------------------------------------------------------------------
    def add_requirement(self, text: str | Requirement) -> Requirement:
        req = parse_requirement(text)
        metrics = self.evaluate().metrics
        if req.key not in metrics:
            req.check(metrics)  # raises with the reason (needs groups, a trigger, ...)
        self.requirements = [r for r in self.requirements if r.key != req.key or r.op != req.op] + [req]
        return req

    def remove_requirement(self, expr_or_index: str | int) -> None:
        if isinstance(expr_or_index, int):
            del self.requirements[expr_or_index]
        else:
            self.requirements = [r for r in self.requirements if r.expr != expr_or_index]

    def set_threshold(self, index: int, threshold: float) -> None:
        r = self.requirements[index]
        self.requirements[index] = dataclasses.replace(r, threshold=float(threshold))

    def reset_requirements(self) -> None:
        self.requirements = default_requirements(self.data, self.pristine)

    @property
    def passed(self) -> bool:
        return self.evaluate().passed

    # -- mistakes to fix ----------------------------------------------------------------------
    def mistakes(self, limit: int = 200) -> pd.DataFrame:
        """Test rows the model as loaded gets wrong (at most `limit`): row, true label, predicted label."""
        from .requirements import predict

        sp = self.data.test
        pred = predict(self.pristine.copy().model, sp.X)
        y = sp.y.numpy()
        rows = np.flatnonzero(pred != y)[:limit]
        cls = self.data.class_names
        return pd.DataFrame({"row": rows, "true": [cls[int(y[r])] for r in rows],
                             "predicted": [cls[int(pred[r])] for r in rows]})

    def set_fixes(self, specs: list[str]) -> None:
        """Mistakes to fix (`ROW=LABEL` over the test split; see `auditor.fixes.parse_fixes`); with
        fixes, `edit_success` and `generality` can be required and fix editors (MEND, ...) can run."""
        from .fixes import parse_fixes

        specs = list(specs)
        self.fixes = parse_fixes(specs, self.data) if specs else None
        self.fix_specs = specs
        if not specs:
            self.requirements = [r for r in self.requirements if r.metric not in FIX_METRICS]
        elif not any(r.metric == "edit_success" for r in self.requirements):
            self.requirements.append(parse_requirement("edit_success >= 1"))

    # -- localization -----------------------------------------------------------------------
    def localize(self, **kwargs) -> Localization:
        """Localize on the current model (see `localize`); the result is kept for the report."""
        self.localization = localize(self.current, self.data, **kwargs)
        return self.localization

    # -- editing ----------------------------------------------------------------------------
    def editors(self) -> list[type]:
        """Editors that can edit this model on this data, those aiming at a failing requirement first."""
        from .editors import list_editors

        key = self.state_key()
        if self._editors_key == key:
            return list(self._editors)
        failing = {base_metric(r.metric) for r in self.evaluate().requirements if not r.passed}
        wanted = {base_metric(r.key) for r in self.requirements}

        def order(cls):
            targets = set(getattr(cls, "targets", ()))
            if self.fixes is None and targets and targets <= FIX_METRICS:
                return (True, True, 9, 1, cls.name)  # they need mistakes to fix: last
            kind = {"learned": 0, "rank-one": 1}.get(getattr(cls, "kind", ""), 2)
            dyn = 0 if cls.name.startswith("dynamic") else 1
            return (not (targets & failing), not (targets & wanted), kind, dyn, cls.name)

        self._editors = sorted(list_editors(self.current, self.data), key=order)
        self._editors_key = key
        return list(self._editors)

    def run_edit(self, editor: str, settings: dict | None = None, *, device: str | None = None,
                 callback: Callback | None = None) -> EditRecord:
        """Edit the current model with a registered editor; the new model becomes current."""
        from .editors import get_editor

        settings = dict(settings or {})
        if "layer" in settings and not settings["layer"]:
            settings["layer"] = None
        ed = get_editor(editor, **settings)
        before = self.current.sha256
        result = ed.edit(self.current, self.data, self.requirements, device=device, callback=callback,
                         fixes=self.fixes)
        previous, self.current = self.current, result.bundle
        try:
            ev = self.evaluate()
        except BaseException:
            self.current = previous  # an edit that cannot be evaluated is not applied
            raise
        record = EditRecord(result, before, self.current.sha256, [r.expr for r in self.requirements],
                            dict(ev.metrics), ev.passed)
        self.edits.append(record)
        return record

    def revert(self, index: int) -> str:
        """Undo edit `index` and every later one (they were made on top of it); bit-exact through the
        edit's weight delta. Returns the hash of the model now current."""
        if not 0 <= index < len(self.edits):
            raise AuditorError(f"there is no edit number {index + 1}; edits made: {len(self.edits)}")
        record = self.edits[index]
        restored = record.result.reverted()
        if restored.sha256 != record.sha_before:
            raise AuditorError("reverting did not restore the weights exactly; the edit history is inconsistent")
        self.current = restored
        del self.edits[index:]
        return restored.sha256

    def weight_change(self):
        """`WeightDelta` between the model as loaded and the current one (all edits together)."""
        from .editors import WeightDelta

        return WeightDelta.between(self.pristine.model, self.current.model)

    def model_bytes(self) -> bytes:
        """The current model as a `.safetensors` file (spec, edit history and original hash in its metadata)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.safetensors"
            save_model(self.current, path, extra_metadata={
                "auditor.history": self.current.history, "auditor.original_sha256": self.pristine_sha256})
            return path.read_bytes()

    @property
    def edited_filename(self) -> str:
        stem = Path(self.current.source).stem if self.current.source else self.model_label
        return f"{stem}_edited.safetensors" if self.edited else f"{stem}.safetensors"

    # -- trade-off against baselines -----------------------------------------------------
    def baseline_choices(self) -> list[str]:
        """What the trade-off can run besides this audit's edit: registered editors that target the
        audited requirement and can edit this model (not the one used), then, for a fairness
        requirement, fairlearn's mitigations that are not weight edits (ThresholdOptimizer, ...)."""
        from .report.audit import alternative_methods
        from .tradeoff import baselines_for, tradeoff_metric

        target = tradeoff_metric(self.requirements)
        if target is None:
            return []
        used = {rec.editor for rec in self.edits[-1:]}
        names = baselines_for(self.pristine, self.data, target.key, exclude=sorted(used))
        if target.metric in ("demographic_parity", "equalized_odds") and self.data.kind == "tabular":
            names += [a for a in alternative_methods() if a not in names]
        return names

    @property
    def edit_label(self) -> str | None:
        return self.edits[-1].editor if self.edits else None  # the report stars the row of this name

    def run_tradeoff(self, baselines: list[str], *, device=None, callback: Callback | None = None):
        """This audit's edit (the current model) and `baselines` (editors, or fairlearn alternatives),
        each run from the model as loaded with the same seed and number of clean samples, evaluated on
        the test split (`auditor.tradeoff.compare`)."""
        from .report.audit import alternative_methods, run_alternative
        from .tradeoff import compare, tradeoff_metric

        alts = alternative_methods()
        methods, results, samples = [], {}, None
        if self.edits:
            rec = self.edits[-1]
            methods.append((self.edit_label, rec.editor, {}))
            results[self.edit_label] = rec.result  # its bundle is the current model
            samples = rec.result.hyperparameters.get("samples")
        methods += [b for b in baselines if b not in alts]
        target = tradeoff_metric(self.requirements)
        alternatives = []
        for name in (b for b in baselines if b in alts):
            if callback:
                callback(0.0, f"{name} (fairlearn)")
            alternatives.append(run_alternative(name, self.pristine, self.data, target, seed=0))
        self.tradeoff = compare(self.pristine, self.data, self.requirements, methods, results=results,
                                samples=samples, seed=0, device=device, callback=callback,
                                alternatives=alternatives, fixes=self.fixes)
        self.tradeoff_key = self.state_key()
        return self.tradeoff

    @property
    def tradeoff_stale(self) -> bool:
        return self.tradeoff is not None and self.tradeoff_key != self.state_key()

    def state_key(self) -> tuple:
        """Changes whenever the current model or the requirements change (for caches of derived views)."""
        return (self.current.sha256, tuple(r.expr for r in self.requirements), tuple(self.fix_specs))

    # -- attributions before vs after -------------------------------------------------------
    def attributions_before_after(self, rows: int = 500, n_steps: int = 32) -> dict:
        """The same attribution on the model as loaded and the current one (each on a private copy):
        images with a trigger/cue: per-pixel maps of one test pair; tabular: per raw feature."""
        key = (self.current.sha256, rows, n_steps)
        if self._attr_key == key:
            return self._attr
        from . import localize as loc

        before, after = self.pristine.copy().model, self.current.copy().model
        data = self.data
        if data.kind == "image" and (data.stamp is not None or data.test.corrupted is not None):
            clean, corrupted, labels = data.pairs(1, seed=0, split="test")
            out = {"kind": "pixels", "clean": clean, "corrupted": corrupted, "labels": labels,
                   "before": loc.pixel_attributions(before, clean, corrupted, n_steps=n_steps),
                   "after": loc.pixel_attributions(after, clean, corrupted, n_steps=n_steps)}
        elif data.kind == "tabular":
            X = _sample_rows(data.test.X, rows, 0)
            out = {"kind": "features",
                   "before": loc.feature_attributions(before, X, data.feature_groups, n_steps=n_steps),
                   "after": loc.feature_attributions(after, X, data.feature_groups, n_steps=n_steps)}
        else:
            out = {"kind": None}
        self._attr_key, self._attr = key, out
        return out

    def focus_metric(self) -> str | None:
        """The requirement the audit is about (the first that is not a utility floor)."""
        for r in self.requirements:
            if CATEGORIES.get(r.metric) != "utility floor":
                return r.key
        return None

    # -- report -----------------------------------------------------------------------------
    def report_localization(self) -> dict | None:
        """The Localize step's results in the report's shape (what the page showed)."""
        loc = self.localization
        if loc is None:
            return None
        out: dict = {"available": True, "layers": None, "layer_method": None, "features": None, "images": None,
                     "note": None if loc.model_sha256 == self.pristine_sha256 else
                     "computed on the model after an earlier edit"}
        if loc.ranking is not None:
            total = float(loc.ranking["score"].sum()) or 1.0
            out["layers"] = [{"layer": str(r["layer"]), "type": str(r["type"]), "score": float(r["score"]),
                              "share": float(r["score"]) / total, "rank": int(r["rank"])}
                             for r in loc.ranking.to_dict("records")]
            out["layer_method"] = (
                f"layer integrated gradients of the score gap between groups of {loc.settings.get('attribute')}"
                if loc.kind == "fairness" else
                f"layer {loc.settings['method'].replace('_', ' ')} from corrupted to clean inputs "
                f"({loc.settings['samples']} pair(s)), projected on the rank-one edit direction")
        if loc.features is not None:
            out["features"] = [{"feature": str(r["feature"]), "attribution": float(r["attribution"]),
                                "importance": float(r["importance"]), "share": float(r["share"]),
                                "rank": int(r["rank"])} for r in loc.features.to_dict("records")]
        if loc.pixels is not None:
            cls = self.data.class_names
            rnd = lambda t: np.round(t.detach().double().mean(0).numpy(), 6).tolist()  # noqa: E731
            out["images"] = [
                {"title": f"clean (predicted {cls[int(loc.pixels['clean_prediction'][0])]})", "kind": "image",
                 "z": rnd(loc.clean[0])},
                {"title": f"corrupted (predicted {cls[int(loc.pixels['corrupted_prediction'][0])]})",
                 "kind": "image", "z": rnd(loc.corrupted[0])},
                {"title": "attribution of the corrupted prediction", "kind": "attribution",
                 "z": np.round(loc.pixels["corrupted"][0].double().sum(0).numpy(), 6).tolist()}]
        return out

    def command(self) -> str:
        """The `auditor audit` command line that re-runs this audit (last edit, default baselines)."""
        model = self.current.source or f"{self.model_label}.safetensors"
        try:
            model = str(Path(model).resolve().relative_to(Path.cwd()))
        except ValueError:
            pass
        parts = ["auditor", "audit", model, self.data.name]
        parts += [f'--require "{r.expr}"' for r in self.requirements]
        parts += [f'--fix "{f}"' for f in self.fix_specs]
        if self.edits:
            rec = self.edits[-1]
            parts.append(f"--editor {rec.editor}")
            defaults = {}
            from .editors import EDITORS
            hyper = getattr(EDITORS.get(rec.editor), "Hyper", None)
            if hyper is not None:
                defaults = dataclasses.asdict(hyper())
            for k, v in rec.result.hyperparameters.items():
                if defaults.get(k, object()) != v:
                    parts.append(f"--set {k}={v}")
        parts += ["--report report.html", "--pdf report.pdf", "--json report.json"]
        return " ".join(parts)

    def build_report(self, *, auditor: str = "", notes: str = "", date: str | None = None):
        """The compliance report (`auditor.report.Report`) of this audit as it stands: verdicts before
        and after every edit, localization, the edits, the trade-off (when run for this model)."""
        from .editors import EDITORS
        from .report import build_report

        last = self.edits[-1] if self.edits else None
        report = build_report(
            bundle=self.pristine, data=self.data, before=self.evaluate("pristine"),
            after=self.evaluate() if last else None, edit=last.result if last else None,
            edited=self.current if last else None, localization=self.report_localization(),
            tradeoff=None if self.tradeoff is None or self.tradeoff_stale else self.tradeoff,
            model_path=self.current.source or None, device=self.device, seed=0, command=self.command(),
            signoff={"auditor": auditor or None, "notes": notes or None, "date": date},
            editor_description=EDITORS[last.editor].description if last and last.editor in EDITORS else None)
        if len(self.edits) > 1:  # every edit, in order (the report model builds the last one)
            earlier = []
            for rec in self.edits[:-1]:
                d = rec.result.to_dict()
                d.pop("model_sha256", None)
                d["description"] = EDITORS[rec.editor].description if rec.editor in EDITORS else None
                d["parameters_changed"] = int(sum(v.numel() for v in rec.result.delta.before.values()))
                d["max_rank"] = max((c["rank"] for c in d["changes"]), default=0)
                earlier.append(d)
            report.edits = earlier + report.edits
        return report

    # -- summary ----------------------------------------------------------------------------
    def status(self) -> dict:
        """What a sidebar shows: model, data, device, requirements."""
        ev = self.evaluate()
        return {"model": self.model_label, "parameters": self.current.n_parameters,
                "sha256": self.current.sha256, "original_sha256": self.pristine_sha256, "edits": len(self.edits),
                "data": self.data_label, "rows": {s: len(self.data.split(s)) for s in SPLITS},
                "device": self.device,
                "requirements": [dict(r.to_dict(), shown=format_value(r.metric, r.value)) for r in ev.requirements],
                "passed": ev.passed}


def _signed(key: str, change: float) -> str:
    text = format_value(key, abs(change))
    if base_metric(key) in _COUNTS:
        return f"{change:+.0f}"
    sign = "+" if change > 0 else "-" if change < 0 else "±"
    return f"{sign}{text.replace(' %', ' pp')}"


def read_upload(data: bytes, filename: str, directory: str | Path) -> Path:
    """Write uploaded bytes to `directory` under a sanitised `filename` (the loaders read files)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name).lstrip(".") or "upload"
    path = directory / name
    path.write_bytes(data)
    return path


def csv_columns(data: bytes) -> pd.DataFrame:
    """The first rows of an uploaded CSV, to offer its columns as schema choices."""
    try:
        return pd.read_csv(io.BytesIO(data), nrows=200, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise AuditorError(f"the uploaded file is not a readable CSV: {str(exc).splitlines()[0][:160]}") from None
