"""How the audit is shown to people: metric labels and units, number formatting, and editor settings
as plain widget data. No state, no UI library: the dashboard, the CLI and the report all read these.

    >>> from auditor.present import format_value, metric_label
    >>> metric_label("demographic_parity[race]"), format_value("demographic_parity", 0.152)
    ('Demographic parity (race)', '15.20 pp')
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from typing import Any

from .requirements import METRICS

# Metrics whose value is a count, not a fraction, and gap metrics (a difference of two rates).
COUNT_METRICS = frozenset(m for m, info in METRICS.items() if info.unit == "count")
GAP_METRICS = frozenset({"demographic_parity", "equalized_odds", "cue_gap", "drawdown"})
# Where a metric belongs, for grouping the "add a requirement" choices.
CATEGORIES = {
    "accuracy": "utility floor", "balanced_accuracy": "utility floor", "drawdown": "utility floor",
    "changed_predictions": "utility floor", "demographic_parity": "fairness", "equalized_odds": "fairness",
    "worst_group_accuracy": "worst-group accuracy", "sparsity": "sparsity", "features_used": "data minimisation",
    "attack_success_rate": "backdoor (attack success)", "cue_gap": "spurious cue", "cue_accuracy": "spurious cue",
    "edit_success": "fixes", "generality": "fixes",
}
FIX_METRICS = frozenset({"edit_success", "generality"})


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
    if metric in COUNT_METRICS:
        return f"{value:.0f}"
    if metric in GAP_METRICS:
        return f"{100 * value:.2f} pp"
    return f"{100 * value:.2f} %"


def format_change(key: str, change: float) -> str:
    """A signed difference in the metric's unit (percentage points for rates)."""
    if base_metric(key) in COUNT_METRICS:
        return f"{change:+.0f}"
    sign = "+" if change > 0 else "-" if change < 0 else "±"
    return f"{sign}{format_value(key, abs(change)).replace(' %', ' pp')}"


# ---------------------------------------------------------------------------------------------
# Editor settings as plain data (a UI renders each as a widget)


@dataclass
class Setting:
    """One field of an editor's `Hyper` dataclass: `kind` is int, float, bool, str or choice;
    `optional` means None is allowed (shown as "auto"); `help` and `choices` come from the field's
    metadata (`field(default=..., metadata={"help": ..., "choices": ...})`)."""

    name: str
    kind: str
    default: Any
    optional: bool = False
    help: str = ""
    choices: list | None = None


def _choices(token, bundle, data) -> list | None:
    """A field's `choices` metadata: a list, or a token resolved against the model and data."""
    if token is None or isinstance(token, (list, tuple)):
        return None if token is None else list(token)
    if token == "layer":
        if bundle is None:
            return None
        from .models.architectures import editable_layers
        return [n for n, _ in editable_layers(bundle.model)] or None
    if token == "split":
        from .data.base import SPLITS
        return list(SPLITS)
    if token == "protected":
        return list(data.protected) if data is not None and data.protected else None
    if token == "attribution":
        return ["integrated_gradients", "conductance"]
    raise ValueError(f"unknown choices token {token!r} in an editor setting's metadata")


def setting_fields(editor_cls: type, bundle=None, data=None) -> list[Setting]:
    """The settings of an editor (its `Hyper` fields) with types, defaults, choices and help
    (layer names from `bundle`, protected attributes from `data`). Lists and dicts are left out:
    a form cannot set them, the default is used."""
    hyper = getattr(editor_cls, "Hyper", None)
    if hyper is None:
        return []
    try:
        hints = typing.get_type_hints(hyper)
    except Exception:  # noqa: BLE001 (an annotation that cannot be resolved: use the default's type)
        hints = {}
    defaults = hyper()
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
            continue
        kind = {int: "int", float: "float", bool: "bool", str: "str"}[base]
        choices = _choices(f.metadata.get("choices"), bundle, data)
        if choices:
            kind = "choice"
        out.append(Setting(f.name, kind, default, optional, str(f.metadata.get("help", "")), choices))
    return out


# ---------------------------------------------------------------------------------------------
# Tables of evaluations (pandas), as the dashboard shows them


def shown_metrics(metrics: dict, attribute: str | None) -> list[str]:
    """Metric keys for tables: `demographic_parity` is left out where `demographic_parity[sex]`
    (the same number, for the data's first protected attribute) is shown."""
    return [k for k in metrics if not (attribute and f"{k}[{attribute}]" in metrics)]


def requirement_table(requirements, before, now):
    """One row per requirement: its text, meaning, value before any edit, now, and whether it holds now."""
    import pandas as pd

    rows = []
    for req, b, n in zip(requirements, before.requirements, now.requirements):
        rows.append({"requirement": req.expr, "meaning": metric_help(req.key),
                     "threshold": format_value(req.key, req.threshold),
                     "before edits": format_value(req.key, b.value), "now": format_value(req.key, n.value),
                     "passes": bool(n.passed)})
    return pd.DataFrame(rows, columns=["requirement", "meaning", "threshold", "before edits", "now", "passes"])


def metrics_table(evaluation, attribute: str | None, *, with_reference: bool = True):
    """Every metric with its unit and meaning (`drawdown`/`changed_predictions` only with a reference)."""
    import pandas as pd

    m = evaluation.metrics
    return pd.DataFrame([{"metric": metric_label(k), "value": format_value(k, m[k]), "meaning": metric_help(k)}
                         for k in shown_metrics(m, attribute)
                         if with_reference or k not in ("drawdown", "changed_predictions")])


def compare_table(before, now, attribute: str | None):
    """Before vs now, every metric, with units and the signed change."""
    import pandas as pd

    b, n = before.metrics, now.metrics
    rows = []
    for k in shown_metrics(n, attribute):
        if k in ("drawdown", "changed_predictions"):
            continue
        vb, vn = b.get(k), n[k]
        rows.append({"metric": metric_label(k), "before": format_value(k, vb), "after": format_value(k, vn),
                     "change": "" if vb is None else format_change(k, vn - vb), "meaning": metric_help(k)})
    return pd.DataFrame(rows)


def group_table(before, now, attribute: str):
    """Per group of `attribute`: accuracy, selection rate and error rates before and now."""
    import pandas as pd

    b = before.groups.get(attribute, {})
    n = now.groups.get(attribute, {})
    rows = []
    for g, vals in n.items():
        row = {attribute: g, "rows": int(vals["count"]) if "count" in vals else None}
        for metric in ("accuracy", "selection_rate", "true_positive_rate", "false_positive_rate"):
            if metric in vals:
                label = metric.replace("_", " ")
                row[f"{label} before"] = f"{100 * b.get(g, {}).get(metric, float('nan')):.2f} %"
                row[f"{label} after"] = f"{100 * vals[metric]:.2f} %"
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.drop(columns=["rows"]) if "rows" in df and df["rows"].isna().all() else df
