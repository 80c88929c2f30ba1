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
from pathlib import Path
from typing import Any

import numpy as np

from .requirements import METRICS

# Metrics whose value is a count, not a fraction, and gap metrics (a difference of two rates).
COUNT_METRICS = frozenset(m for m, info in METRICS.items() if info.unit == "count")
GAP_METRICS = frozenset({"demographic_parity", "equalized_odds", "cue_gap", "drawdown"})
# Where a metric belongs, for grouping the "add a requirement" choices.
CATEGORIES = {
    "accuracy": "utility floor", "balanced_accuracy": "utility floor", "drawdown": "utility floor",
    "changed_predictions": "utility floor", "demographic_parity": "fairness", "equalized_odds": "fairness",
    "worst_group_accuracy": "worst-group accuracy", "sparsity": "sparsity", "features_used": "data minimisation",
    "attack_success_rate": "backdoor (attack success)",
    "triggered_accuracy": "backdoor (attack success)", "cue_gap": "spurious cue", "cue_accuracy": "spurious cue",
    "cue_class_accuracy": "spurious cue",
    "edit_success": "fixes", "generality": "fixes",
}
FIX_METRICS = frozenset({"edit_success", "generality"})


def editor_notes(log) -> list[tuple[str, str]]:
    """(kind, message) of what an editor's log asks to be said ("note" or "warning" steps): features dropped,
    zeros kept, an edit rounded to the model file's precision."""
    return [(e["step"], str(e["message"])) for e in log or ()
            if isinstance(e, dict) and e.get("step") in ("note", "warning") and e.get("message")]


def split_words(split: str) -> str:
    """ "all rows" or "test split": the rows metrics are taken on, in words."""
    return "all rows" if split == "all" else f"{split} split"


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


def format_change(key: str, change: float, zero: str = "±") -> str:
    """A signed difference in the metric's unit (percentage points for rates); `zero`: the sign of no change
    ("" for an interval's end: "-1.71 to 0.00 pp")."""
    if base_metric(key) in COUNT_METRICS:
        return f"{change:+.0f}"
    sign = "+" if change > 0 else "-" if change < 0 else zero
    return f"{sign}{format_value(key, abs(change)).replace(' %', ' pp')}"


def _trim(number: str) -> str:
    return number.rstrip("0").rstrip(".") if "." in number else number


def format_threshold(key: str, value: float | None) -> str:
    """A threshold as a person set it: like `format_value` without trailing zeros (0.02 -> `2 %`,
    0.045 -> `4.5 pp` for a gap, 5 -> `5` for a count)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    factor, unit = display_scale(key)
    return f"{_trim(f'{factor * value:.2f}')}{unit}"


def display_scale(key: str) -> tuple[float, str]:
    """How a metric is drawn on a chart axis: (factor to multiply by, unit suffix): fractions in
    percent (`100, " %"`), gaps in percentage points (`100, " pp"`), counts as they are (`1, ""`)."""
    metric = base_metric(key)
    if metric in COUNT_METRICS:
        return 1.0, ""
    if metric in GAP_METRICS:
        return 100.0, " pp"
    return 100.0, " %"


def requirement_sentence(key: str, op: str, threshold: float) -> str:
    """A requirement in words: `attack_success_rate <= 0.02` -> `Attack success rate must be at most 2 %`."""
    word = "at most" if op == "<=" else "at least"
    return f"{metric_label(key)} must be {word} {format_threshold(key, threshold)}"


def format_percent(fraction: float | None, digits: int = 1) -> str:
    """A share that is not a metric (of weights, of a norm) in percent: 0.7694 -> `76.9 %`; tiny
    non-zero shares are shown as `< 0.1 %`, never as `0.0 %`."""
    if fraction is None or (isinstance(fraction, float) and math.isnan(fraction)):
        return "n/a"
    pct = 100 * float(fraction)
    if pct != 0 and abs(pct) < 10 ** -digits:
        return f"< {10 ** -digits:.{digits}f} %"
    return f"{pct:.{digits}f} %"


def format_number(value: float | None, digits: int = 4) -> str:
    """A plain number without a unit (a norm, an attribution score): integers with thousands
    separators, others to `digits` significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    return f"{float(value):.{digits}g}"


def format_group_value(column: str, value: float | None) -> str:
    """One cell of a per-group table: `count` as an integer, rates (accuracy, selection rate,
    true/false positive rate) in percent."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if column in ("count", "n", "rows", "size", "positives", "negatives"):
        return f"{int(value):,}"
    return f"{100 * float(value):.2f} %"


def format_interval(key: str, low: float | None, high: float | None) -> str:
    """A 95 % interval in the metric's unit: `0.40 – 1.90 %` (empty when a bound is missing)."""
    if low is None or high is None:
        return ""
    lo, hi = format_value(key, low), format_value(key, high)
    unit = next((u for u in (" pp", " %") if lo.endswith(u) and hi.endswith(u)), "")
    return f"{lo[:-len(unit)] if unit else lo} – {hi}"


def change_size_text(relative_norm: float | None, changed_fraction: float | None = None) -> str:
    """What an edit's size is, worded as what it is: `size of the change ‖ΔW‖/‖W‖ = 77 %` (a ratio of
    norms, not a share of weights), and, when known, the share of weights that changed at all."""
    text = f"size of the change ‖ΔW‖/‖W‖ = {format_percent(relative_norm, 0 if (relative_norm or 0) >= 0.1 else 1)}"
    if changed_fraction is not None:
        text += f"; {format_percent(changed_fraction)} of the weights changed"
    return text


# ---------------------------------------------------------------------------------------------
# Which trigger or cue an audit tested (a built-in one is never passed off as the model's own)

SAMPLE_STAMP_DATA = frozenset({"digits-trojan", "digits-spurious"})  # built-in data whose stamp is a sample's


def _where(mask) -> str:
    """Where a stamp's mask sits, in words: `9-pixel patch (3×3) in the bottom-right corner`."""
    full = np.asarray(mask, dtype=float)
    m = full.reshape(-1, *full.shape[-2:]).max(axis=0) if full.ndim >= 2 else full.reshape(1, -1)
    rows, cols = np.nonzero(m > 0)
    if not len(rows):
        return "empty mask"
    H, W = m.shape
    strength = m[m > 0]
    blend = (f", blended at {100 * float(strength.mean()):.0f} %" if float(strength.max()) < 0.999 else "")
    channels = ""
    if full.ndim == 3 and full.shape[0] > 1:
        used = [c for c in range(full.shape[0]) if float(np.abs(full[c]).max()) > 0]
        if len(used) < full.shape[0]:
            names = (("red", "green", "blue") if full.shape[0] == 3
                     else tuple(f"channel {c}" for c in range(full.shape[0])))
            channels = f", on the {' and '.join(names[c] for c in used)} channel{'s' if len(used) > 1 else ''} only"
    if len(rows) >= 0.9 * H * W:
        return f"over the whole image ({H}×{W}){blend}{channels}"
    h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    cy, cx = (rows.min() + rows.max() + 1) / 2 / H, (cols.min() + cols.max() + 1) / 2 / W
    vert = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    if (vert, horiz) == ("middle", "centre"):
        place = "in the centre"
    elif vert != "middle" and horiz != "centre":
        place = f"in the {vert}-{horiz} corner"
    else:
        place = f"at the {vert if vert != 'middle' else horiz} edge"
    shape = "patch" if len(rows) == h * w else "pattern"  # a plus or a checkerboard fills part of its box
    box = f"({h}×{w})" if len(rows) == h * w else f"within a {h}×{w} box"
    return f"{len(rows)}-pixel {shape} {box} {place}{blend}{channels}"


def stamp_label(data) -> str | None:
    """Which trigger or cue the audit of `data` tests, and where it came from, in words; None without one.

    Built-in Trojan/cue data tests *the sample's* trigger (the one the sample model was poisoned with),
    an `.npz` case its own (its mask and pattern, or its corrupted twins)."""
    stamp = getattr(data, "stamp", None)
    has_twins = getattr(getattr(data, "test", None), "corrupted", None) is not None
    if stamp is None and not has_twins:
        return None
    kind = stamp.kind if stamp is not None else "trigger"
    cls = list(getattr(data, "class_names", []) or [])
    target = stamp.target if stamp is not None else None
    target_name = cls[target] if target is not None and 0 <= target < len(cls) else str(target)
    arrow = (f"→ class {target_name}" if kind == "trigger" else f"correlated with class {target_name}") \
        if target is not None else ""
    source = str(getattr(data, "source", "") or "")
    from_case = source.lower().endswith((".npz", ".zip")) or Path(source).is_dir()  # the user's own files
    shape = "corrupted twins" if has_twins and (stamp is None or not float(stamp.mask.abs().sum())) \
        else _where(stamp.mask)
    if data.name in SAMPLE_STAMP_DATA and not from_case:
        return f"the sample's {kind} (built-in {data.name}: {shape} {arrow})".replace(" )", ")")
    origin = source.replace("\\", "/").rsplit("/", 1)[-1] if from_case else data.name
    return f"the case's own {kind} ({origin}: {shape} {arrow})".replace(" )", ")")


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
                     "95 % interval now": format_interval(req.key, n.low, n.high) or "none (not a row statistic)",
                     "verdict": n.verdict, "passes": bool(n.passed)})
    return pd.DataFrame(rows, columns=["requirement", "meaning", "threshold", "before edits", "now",
                                       "95 % interval now", "verdict", "passes"])


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


# ---------------------------------------------------------------------------------------------
# Verdicts with their uncertainty, and side effects, in words (dashboard banner, report, terminal)


def format_change_interval(key: str, low: float, high: float) -> str:
    """The 95 % interval of a change, signed: `95 % CI +17.01 to +21.30 pp`."""
    return f"95 % CI {format_change(key, low, '').rsplit(' ', 1)[0]} to {format_change(key, high, '')}"


VERDICT_WORDS = {"pass": "pass", "fail": "fail", "inconclusive": "inconclusive (the interval straddles the threshold)"}


def side_effect_sentence(effect: dict) -> str:
    """`Equalized odds (sex) 5.67 pp → 24.90 pp (+19.23 pp, 95 % CI +17.0 to +21.3 pp); from the true positive
    rate of sex=Male 58.38 % → 42.10 %`."""
    k = effect["metric"]
    text = (f"{metric_label(k)} {format_value(k, effect['before'])} → {format_value(k, effect['after'])} "
            f"({format_change(k, effect['change'])}, {format_change_interval(k, effect['low'], effect['high'])})")
    src = effect.get("groups") or []
    if src:
        parts = [f"{g['rate'].replace('_', ' ')} of {g['attribute']}={g['group']} "
                 f"{100 * g['before']:.1f} % → {100 * g['after']:.1f} %" + (f" (n = {g['n']})" if g.get("n") else "")
                 for g in src[:2]]
        text += "; mostly " + " and ".join(parts)
    return text


def verdict(before, after=None, side_effects=(), *, forbid_side_effects: bool = False,
            editor: str | None = None) -> dict:
    """The audit's verdict from its evaluations (after the edit when one ran):
    `status`: "PASS", "PASS with side effects", "INCONCLUSIVE" (strict mode: nothing fails but an
    interval straddles its threshold) or "FAIL"; `passed` is what an exit code follows (strict mode:
    inconclusive is not met; `forbid_side_effects`: a side effect fails). Also counts, the summary
    sentence, and one line per requirement and per side effect, in words with units and intervals."""
    final = after if after is not None else before
    reqs = final.requirements
    n = len(reqs)
    met = sum(r.passed for r in reqs)
    failing = [r for r in reqs if r.verdict == "fail"]
    unsure = [r for r in reqs if r.verdict == "inconclusive"]
    side_effects = list(side_effects)
    mode = getattr(final, "verdict_mode", "point")
    passed = bool(final.passed) and not (forbid_side_effects and side_effects)
    if not final.passed:
        status = "INCONCLUSIVE" if not failing and unsure and mode == "strict" else "FAIL"
    elif side_effects:
        status = "FAIL" if forbid_side_effects else "PASS with side effects"
    else:
        status = "PASS"
    if n == 0:
        summary = ("no requirement was given, so none was judged: the metrics are the evidence (add one, e.g. "
                   "--require 'accuracy >= 0.9').")
    elif after is not None:
        met_before = sum(r.passed for r in before.requirements)
        summary = f"{met} of {n} requirements met after the {editor or 'edit'} ({met_before} of {n} before)."
    else:
        summary = f"{met} of {n} requirements met (no edit applied)."
    if unsure:
        summary += (f" {len(unsure)} inconclusive: the 95 % interval straddles the threshold"
                    + (" (counted as not met: --verdict strict)." if mode == "strict"
                       else " (decided by the value: --verdict point)."))
    if side_effects:
        summary += (f" {len(side_effects)} side effect{'s' if len(side_effects) != 1 else ''}: "
                    + ", ".join(metric_label(e["metric"]) for e in side_effects) + " got worse beyond noise"
                    + (" (forbidden: --forbid-side-effects)." if forbid_side_effects else "."))
    by_expr = {r.expr: r for r in before.requirements}
    lines = []
    for r in reqs:
        b = by_expr.get(r.expr)
        shown = format_value(r.metric, r.value)
        ci = format_interval(r.metric, r.low, r.high)
        ci = f"95 % CI {ci}" if ci else ""
        was = f"{format_value(r.metric, b.value)} → " if after is not None and b is not None else ""
        lines.append(f"{requirement_sentence(r.metric, r.op, r.threshold)}: {was}{shown}" + (f" ({ci})" if ci else "")
                     + f": {r.verdict}")
    return {"passed": passed, "status": status, "summary": summary, "met": met, "total": n,
            "inconclusive": len(unsure), "failed": len(failing), "side_effects": len(side_effects),
            "mode": mode, "forbid_side_effects": bool(forbid_side_effects),
            "requirement_lines": lines, "side_effect_lines": [side_effect_sentence(e) for e in side_effects]}


# --- inert text --------------------------------------------------------------------------------
# Plotly reads every string of a figure as rich text (`<a href>`, `<span style=...>`, `<br>`): a group
# name, a column name or a class name from a model or a data file must reach a chart as plain text.
_TRACE_TEXT = ("x", "y", "text", "hovertext", "name", "customdata", "labels", "legendgroup")


def plain(text: Any) -> Any:
    """A string with `&`, `<` and `>` escaped, so that Plotly (and HTML) show it as it is; anything
    that is not a string is returned unchanged."""
    if not isinstance(text, str):
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plain_values(value: Any) -> Any:
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, (list, tuple)) or (getattr(value, "dtype", None) is not None
                                            and getattr(value.dtype, "kind", "") in "OUS"):
        return [_plain_values(v) for v in value]
    return value


def inert_figure(fig):
    """Escape (in place, once) every string of `fig` that can come from a model, data or a user: the
    traces' categories, texts, names and hover data, the titles, axis titles, tick labels and
    annotations. Templates (`hovertemplate`) are the builders' own markup and stay; a builder that puts
    a name into one escapes it with `plain`. Every chart builder's last styling step calls this."""
    for trace in fig.data:
        for prop in _TRACE_TEXT:
            try:
                value = trace[prop]
            except (KeyError, ValueError):
                continue
            if value is not None and (isinstance(value, str) or not isinstance(value, (int, float))):
                escaped = _plain_values(value)
                if escaped is not value:
                    trace[prop] = escaped
    layout = fig.layout
    if layout.title.text:
        layout.title.text = plain(layout.title.text)
    if layout.legend.title.text:
        layout.legend.title.text = plain(layout.legend.title.text)
    for ann in layout.annotations:
        if ann.text:
            ann.text = plain(ann.text)
    for key in list(layout.to_plotly_json()):
        if re.fullmatch(r"[xy]axis\d*", key):
            axis = layout[key]
            if axis.title.text:
                axis.title.text = plain(axis.title.text)
            for prop in ("ticktext", "categoryarray"):
                if axis[prop] is not None:
                    axis[prop] = _plain_values(axis[prop])
    return fig


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&])")


def md_plain(text: Any) -> str:
    """`text` escaped for Streamlit Markdown (st.markdown, st.error, st.caption, ...): every Markdown,
    HTML, colour (`:red[...]`), icon (`:material/...:`) and LaTeX (`$`) character is backslash-escaped,
    so a file name or a data value shows as it is and never becomes a link, an image or markup.
    Line breaks become spaces (a message stays one paragraph)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def shown_image(x) -> np.ndarray:
    """An input image (C x H x W, or H x W) as it is drawn: H x W x 3 for a colour (3-channel) image,
    else H x W (the channels averaged). Values as they are: `image_trace` scales them for display."""
    x = np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=float)
    if x.ndim == 3 and x.shape[0] == 3:
        return np.moveaxis(x, 0, -1)
    return x.mean(0) if x.ndim == 3 else x


def pixel_attribution(a) -> np.ndarray:
    """A pixel attribution map (C x H x W, or H x W) summed over the channels: a pixel's contribution."""
    a = np.asarray(a.detach().cpu().double() if hasattr(a, "detach") else a, dtype=float)
    return a.sum(0) if a.ndim == 3 else a


NOT_RUN = "not run here"  # a trade-off row's error for a method that does not apply to this model


def not_run(reason: str) -> str:
    """The error of a trade-off row for a method that does not apply here."""
    return f"{NOT_RUN}: {reason}"


def failure_words(error: str) -> str:
    """A trade-off row's error as shown: `not_run`'s (a method that does not apply) as it is, else
    "failed: ..."."""
    return error if error.startswith(NOT_RUN) else f"failed: {error}"
