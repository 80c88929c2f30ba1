"""Plotly figure builders: pure functions from plain data (dicts, lists, DataFrames) to `go.Figure`.

The report, the dashboard pages and notebooks all draw with these, so a chart looks the same
everywhere. Each function takes the numbers as the library returns them (`Evaluation.to_dict()`,
`rank_layers(...)`, `Tradeoff.rows`) and styles nothing outside the figure.

    >>> from auditor.charts import metrics_chart
    >>> fig = metrics_chart({"accuracy": 0.85}, {"accuracy": 0.84})
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..present import (
    display_scale,
    format_threshold,
    format_value,
    inert_figure,
    metric_label,
    plain,
    requirement_sentence,
)

PASS = "#1a7f37"
FAIL = "#cf222e"
UNSURE = "#9a6700"  # an inconclusive verdict (the interval straddles the threshold)
BEFORE = "#8c959f"
AFTER = "#0969da"
ACCENT = "#bf8700"
FONT = "Helvetica, Arial, sans-serif"


def _style(fig: go.Figure, title: str | None = None, height: int = 320) -> go.Figure:
    """Shared look: white background, light grid, legend on top, small margins."""
    fig.update_layout(template="plotly_white", height=height, font={"family": FONT, "size": 12},
                      margin={"l": 60, "r": 20, "t": 50 if title else 20, "b": 45},
                      title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 14}} if title else None,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 1, "xanchor": "right"})
    return inert_figure(fig)  # every string from a model, data or user as plain text, never markup


def _records(rows) -> list[dict]:
    if rows is None:
        return []
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    return list(rows)


def _requirement_parts(r: Mapping) -> tuple[str, str, float]:
    """(metric key, op, threshold) of a requirement dict (from its fields, else parsed from `expr`)."""
    parts = str(r.get("expr", "")).split()
    metric = r.get("metric") or (parts[0] if parts else "")
    op = r.get("op") or (parts[1] if len(parts) > 1 else "<=")
    return metric, op, float(r["threshold"])


def _verdict_of(res: Mapping) -> str:
    """`pass`, `fail` or `inconclusive` for one result (`verdict` when the report has it, else `passed`)."""
    v = str(res.get("verdict") or "").lower()
    return v if v in ("pass", "fail", "inconclusive") else ("pass" if res.get("passed") else "fail")


VERDICT_COLOR = {"pass": PASS, "fail": FAIL, "inconclusive": UNSURE}
VERDICT_TEXT = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}


def requirements_chart(requirements: Sequence[Mapping]) -> go.Figure:
    """One small panel per requirement, titled in words ("Attack success rate must be at most 2 %"):
    the value before (and after) the edit as bars against the threshold (dashed line), coloured by
    the verdict, which is also written out with the value on the bar's axis label (so no value label
    sits where the threshold line runs). Fractions are drawn in percent, gaps in percentage points.

    `requirements`: dicts with `expr, threshold, before {value, passed}` and optional `after`,
    `metric`, `op`; a result's optional `low`/`high` (95 % interval) are drawn as error bars and its
    optional `verdict` (pass / fail / inconclusive) replaces `passed`.
    """
    reqs = list(requirements)
    n = max(len(reqs), 1)
    titles = [requirement_sentence(*_requirement_parts(r)) for r in reqs] or [""]
    fig = make_subplots(rows=n, cols=1, subplot_titles=titles, vertical_spacing=min(0.6 / n, 0.3))
    for i, r in enumerate(reqs, start=1):
        metric, op, threshold = _requirement_parts(r)
        factor, unit = display_scale(metric)
        names, values, colors, lows, highs = [], [], [], [], []
        for label in ("before", "after"):
            res = r.get(label)
            if not res:
                continue
            verdict = _verdict_of(res)
            value = float(res["value"])
            interval = ""
            if res.get("low") is not None and res.get("high") is not None:
                interval = f" [{format_value(metric, res['low'])}, {format_value(metric, res['high'])}]"
            names.append(f"{label}: {format_value(metric, value)}{interval} · {VERDICT_TEXT[verdict]}")
            values.append(factor * value)
            colors.append(VERDICT_COLOR[verdict])
            lows.append(factor * (value - float(res["low"])) if res.get("low") is not None else 0.0)
            highs.append(factor * (float(res["high"]) - value) if res.get("high") is not None else 0.0)
        error = ({"type": "data", "symmetric": False, "array": highs, "arrayminus": lows, "color": "#24292f",
                  "thickness": 1.5, "width": 5} if any(lows) or any(highs) else None)
        fig.add_trace(go.Bar(y=names, x=values, orientation="h", marker_color=colors, showlegend=False,
                             error_x=error, hovertemplate="%{y}<extra></extra>"), row=i, col=1)
        fig.add_vline(x=factor * threshold, line_dash="dash", line_color="#24292f", line_width=1.5, row=i, col=1)
        top = max([v + h for v, h in zip(values, highs)] + [factor * threshold]) or 1.0
        fig.update_xaxes(range=[0, top * 1.12], ticksuffix=unit, row=i, col=1)
        fig.update_yaxes(autorange="reversed", automargin=True, row=i, col=1)
    fig = _style(fig, height=60 + 100 * n)
    fig.update_annotations(font_size=13)
    return fig


def _scaled(key: str, values) -> list:
    factor, _ = display_scale(key)
    return [None if v is None else factor * float(v) for v in values]


def metrics_chart(before: Mapping[str, float], after: Mapping[str, float] | None = None,
                  names: Iterable[str] | None = None, title: str | None = None) -> go.Figure:
    """Grouped bars of metrics (fractions in [0, 1], drawn in percent; gaps in percentage points)
    before and after an edit. By default shows every metric of `before` whose value lies in [0, 1]
    (counts are left out). The x axis keeps the metric keys; their labels are in words."""
    keys = list(names) if names is not None else [k for k, v in before.items() if 0.0 <= float(v) <= 1.0]
    fig = go.Figure()
    for label, table, color in (("before", before, BEFORE), ("after", after, AFTER)):
        if table is None:
            continue
        values = [table.get(k) for k in keys]
        fig.add_trace(go.Bar(x=keys, y=[None if v is None else 100 * float(v) for v in values], name=label,
                             marker_color=color, customdata=[format_value(k, v) for k, v in zip(keys, values)],
                             hovertemplate="%{x}: %{customdata}<extra>" + label + "</extra>"))
    fig.update_layout(barmode="group", yaxis={"range": [0, 105], "title": "% (gaps: percentage points)",
                                              "ticksuffix": ""},
                      xaxis={"tickmode": "array", "tickvals": keys, "ticktext": [metric_label(k) for k in keys]})
    return _style(fig, title)


def group_chart(before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]] | None = None,
                metric: str = "selection_rate", attribute: str = "") -> go.Figure:
    """One rate per group (e.g. selection rate by sex) before and after, in percent, each bar
    labelled with its value: the gap a fairness requirement measures. `before`/`after`:
    {group: {metric: value}} as in `Evaluation.groups[attr]`."""
    groups = list(before)
    fig = go.Figure()
    for label, table, color in (("before", before, BEFORE), ("after", after, AFTER)):
        if table is None:
            continue
        values = [table.get(g, {}).get(metric) for g in groups]
        texts = ["" if v is None else f"{100 * float(v):.1f} %" for v in values]
        fig.add_trace(go.Bar(x=groups, y=[None if v is None else 100 * float(v) for v in values], name=label,
                             marker_color=color, text=texts, textposition="outside", cliponaxis=False,
                             hovertemplate="%{x}: %{text}<extra>" + label + "</extra>"))
    words = metric.replace("_", " ")
    title = f"{words[:1].upper() + words[1:]} by {attribute}" if attribute else words[:1].upper() + words[1:]
    top = max([100 * float(t.get(g, {}).get(metric) or 0) for t in (before, after or {}) for g in t] + [1.0])
    fig.update_layout(barmode="group", yaxis={"title": words + " (%)", "ticksuffix": " %",
                                              "range": [0, min(100.0, top * 1.15) if top < 87 else top * 1.15]})
    return _style(fig, title, height=300)


def layer_ranking_chart(rows, score: str = "score", title: str = "Layers ranked by attribution") -> go.Figure:
    """Horizontal bars of each layer's localization score, the top-ranked layer highlighted.

    `rows`: `rank_layers(...)` / `fairness_layers(...)` output (DataFrame or records with `layer` and `score`)."""
    recs = sorted(_records(rows), key=lambda r: r.get("rank", 0))
    layers = [str(r["layer"]) for r in recs]
    values = [float(r[score]) for r in recs]
    colors = [ACCENT if i == 0 else AFTER for i in range(len(recs))]
    fig = go.Figure(go.Bar(y=layers, x=values, orientation="h", marker_color=colors,
                           hovertemplate="%{y}: %{x:.4g}<extra></extra>"))
    fig.update_layout(yaxis={"autorange": "reversed", "title": "layer"}, xaxis={"title": score})
    return _style(fig, title, height=max(220, 60 + 32 * len(layers)))


def feature_attribution_chart(rows, top: int = 15, value: str = "importance",
                              title: str = "Feature attributions (integrated gradients)") -> go.Figure:
    """Horizontal bars of the `top` raw features by mean |attribution| (`feature_attributions(...)`)."""
    recs = sorted(_records(rows), key=lambda r: -float(r[value]))[:top]
    fig = go.Figure(go.Bar(y=[str(r["feature"]) for r in recs], x=[float(r[value]) for r in recs], orientation="h",
                           marker_color=AFTER, hovertemplate="%{y}: %{x:.4g}<extra></extra>"))
    fig.update_layout(yaxis={"autorange": "reversed"}, xaxis={"title": "mean |attribution|" if value == "importance"
                                                                else value})
    return _style(fig, title, height=max(240, 60 + 24 * len(recs)))


def image_trace(z, hover: str = "pixel (%{x}, %{y}): %{z:.2f}<extra></extra>"):
    """The trace that draws an image from `shown_image`: grey scale for H x W; for H x W x 3, the colours
    (values in [0, 1] as they are, any other range stretched to it, so standardized inputs show too)."""
    z = np.asarray(z, dtype=float)
    if z.ndim == 3:
        lo, hi = float(np.nanmin(z)), float(np.nanmax(z))
        if lo < 0 or hi > 1:
            z = (z - lo) / (hi - lo or 1.0)
        return go.Image(z=np.round(np.clip(z, 0, 1) * 255).astype(np.uint8), colormodel="rgb",
                        hovertemplate="pixel (%{x}, %{y}): %{z}<extra></extra>")
    return go.Heatmap(z=z, colorscale="Greys", showscale=False, hovertemplate=hover)


def image_attribution_chart(panels: Sequence[Mapping], title: str = "Where the evidence is (pixels)") -> go.Figure:
    """Images and their attribution heatmaps side by side.

    `panels`: dicts with `title`, `z` and `kind` ("image": H x W grey scale or H x W x 3 colour, as
    `shown_image` gives, or "attribution": H x W, diverging colour scale centred on 0)."""
    panels = list(panels)
    fig = make_subplots(rows=1, cols=max(len(panels), 1), subplot_titles=[p["title"] for p in panels],
                        horizontal_spacing=0.08)
    for i, p in enumerate(panels, start=1):
        z = np.asarray(p["z"], dtype=float)
        if p.get("kind") == "attribution":
            m = float(np.abs(z).max()) or 1.0
            trace = go.Heatmap(z=z, zmin=-m, zmax=m, colorscale="RdBu_r", showscale=False,
                               hovertemplate="(%{x}, %{y}): %{z:.3g}<extra></extra>")
        else:
            trace = image_trace(z, hover="(%{x}, %{y}): %{z:.3g}<extra></extra>")
        fig.add_trace(trace, row=1, col=i)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{i if i > 1 else ''}", showticklabels=False,
                         showgrid=False, zeroline=False, constrain="domain", row=1, col=i)
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain", row=1, col=i)
    fig.update_annotations(font_size=12)
    return _style(fig, title, height=270)


def pareto_mask(x: Sequence[float], y: Sequence[float], x_lower_better: bool = True,
                y_higher_better: bool = True) -> list[bool]:
    """True for points no other point beats on both axes (ties on both count as not dominated)."""
    xs = np.asarray(x, dtype=float) * (1 if x_lower_better else -1)
    ys = np.asarray(y, dtype=float) * (1 if y_higher_better else -1)
    out = []
    for i in range(len(xs)):
        dominated = np.any((xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i])))
        out.append(bool(np.isfinite(xs[i]) and np.isfinite(ys[i]) and not dominated))
    return out


def tradeoff_chart(rows, metric: str, *, higher_is_better: bool = False, threshold: float | None = None,
                   accuracy_threshold: float | None = None, highlight: str | None = None,
                   title: str | None = None) -> go.Figure:
    """Accuracy against a requirement's metric for every method run (the edit and its baselines), both
    axes in the metrics' units (percent, percentage points for gaps).

    `rows`: records or a DataFrame with `method, value, accuracy` and optional `seconds, pareto`.
    The Pareto front is joined by a line; `highlight` (the audited edit) is drawn as a star; the
    thresholds are dashed lines labelled in words above the plot area, and the region meeting both
    is shaded green."""
    recs = [dict(r) for r in _records(rows) if r.get("value") is not None and r.get("accuracy") is not None]
    fx, unit = display_scale(metric)
    fy = 100.0
    fig = go.Figure()
    xs = [fx * float(r["value"]) for r in recs] + [fx * v for v in (threshold, 0.0) if v is not None]
    ys = [fy * float(r["accuracy"]) for r in recs] + [fy * v for v in (accuracy_threshold,) if v is not None]
    xpad = (max(xs) - min(xs)) * 0.06 or 1.0
    ypad = (max(ys) - min(ys)) * 0.1 if len(ys) > 1 and max(ys) > min(ys) else 1.0
    xr, yr = [min(xs) - xpad, max(xs) + xpad], [min(ys) - ypad, min(max(ys) + ypad, fy + ypad)]
    if threshold is not None or accuracy_threshold is not None:
        if threshold is None:
            x0, x1 = xr
        else:
            x0, x1 = (xr[0], fx * threshold) if not higher_is_better else (fx * threshold, xr[1])
        y0 = fy * accuracy_threshold if accuracy_threshold is not None else yr[0]
        fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=yr[1], fillcolor=PASS, opacity=0.08, line_width=0,
                      layer="below")
        if threshold is not None:
            fig.add_vline(x=fx * threshold, line_dash="dash", line_color="#57606a")
            fig.add_annotation(x=fx * threshold, xref="x", y=1, yref="paper", yanchor="bottom", showarrow=False,
                               text=f"{'≥' if higher_is_better else '≤'} {format_threshold(metric, threshold)}",
                               font={"size": 11, "color": "#57606a"})
        if accuracy_threshold is not None:
            fig.add_hline(y=fy * accuracy_threshold, line_dash="dash", line_color="#57606a")
            fig.add_annotation(x=1, xref="paper", y=fy * accuracy_threshold, yref="y", xanchor="right",
                               yanchor="top",  # under the line at the right: the failing side, away from edits
                               showarrow=False, text=f"accuracy ≥ {format_threshold('accuracy', accuracy_threshold)}",
                               font={"size": 11, "color": "#57606a"})
    if "pareto" not in (recs[0] if recs else {}):
        mask = pareto_mask([r["value"] for r in recs], [r["accuracy"] for r in recs], not higher_is_better)
        for r, m in zip(recs, mask):
            r["pareto"] = m
    front = sorted((r for r in recs if r.get("pareto")), key=lambda r: float(r["value"]))
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[fx * float(r["value"]) for r in front],
                                 y=[fy * float(r["accuracy"]) for r in front], mode="lines",
                                 line={"color": "#57606a", "width": 1, "dash": "dot"},
                                 name="Pareto front", hoverinfo="skip"))
    palette = ["#0969da", "#8250df", "#bf3989", "#1b7c83", "#953800", "#4d2d00", "#6e7781", "#116329"]
    others = [r for r in recs if r.get("kind") != "original" and r["method"] != highlight]
    color_of = {r["method"]: palette[i % len(palette)] for i, r in enumerate(others)}
    # methods that land on the same point stay visible: each its own open symbol, later ones smaller
    shapes = ["circle-open", "diamond-open", "triangle-up-open", "square-open", "hexagon-open", "x-open"]
    look_of = {r["method"]: (shapes[i % len(shapes)], 15 - 2 * (i % 4)) for i, r in enumerate(others)}
    for r in sorted(recs, key=lambda r: r["method"] == highlight):  # this audit's star drawn last, on top
        star = highlight is not None and r["method"] == highlight
        original = r.get("kind") == "original"
        secs = r.get("seconds")
        hover = (f"{plain(str(r['method']))}<br>{metric_label(metric)}: {format_value(metric, r['value'])}"
                 f"<br>accuracy: {format_value('accuracy', r['accuracy'])}")
        if secs is not None and not original:
            hover += f"<br>{float(secs):.2f} s"
        color = ACCENT if star else (BEFORE if original else color_of.get(r["method"], AFTER))
        symbol, size = ("star", 18) if star else (("square", 11) if original else look_of.get(r["method"],
                                                                                          ("circle-open", 11)))
        line = {"width": 2, "color": color} if symbol.endswith("-open") else {"width": 1, "color": "#24292f"}
        fig.add_trace(go.Scatter(x=[fx * float(r["value"])], y=[fy * float(r["accuracy"])], mode="markers",
                                 name=r["method"], marker={"size": size, "symbol": symbol, "color": color,
                                                           "line": line},
                                 hovertemplate=hover + "<extra></extra>"))
    better = " (higher is better)" if higher_is_better else " (lower is better)"
    fig.update_layout(xaxis={"title": metric_label(metric) + better, "range": xr, "zeroline": False,
                             "ticksuffix": unit},
                      yaxis={"title": "accuracy (higher is better)", "range": yr, "ticksuffix": " %"})
    fig = _style(fig, title or f"Trade-off: accuracy vs {metric_label(metric).lower()}", height=400)
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"},
                      margin={"r": 170, "t": 70})
    return fig


def edit_steps_chart(log: Sequence[Mapping], metric: str) -> go.Figure:
    """Value of `metric` (in its unit) on the check split after each step of an iterative editor's
    log (entries with `step`, `requirements` [{metric, value}], `accepted`): accepted steps in blue,
    rolled-back ones in red."""
    factor, unit = display_scale(metric)
    xs, ys, colors, texts = [], [], [], []
    for e in log:
        for r in e.get("requirements") or []:
            if r.get("metric") == metric:
                xs.append(e.get("step"))
                ys.append(factor * float(r["value"]))
                ok = e.get("accepted", True)
                colors.append(AFTER if ok else FAIL)
                texts.append(f"{format_value(metric, r['value'])}: {e.get('action', '')} {e.get('layer', '') or ''}"
                             .strip() + ("" if ok else " (rolled back)"))
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", marker={"color": colors, "size": 10},
                               line={"color": "#d0d7de"}, text=texts,
                               hovertemplate="step %{x}: %{text}<extra></extra>"))
    fig.update_layout(xaxis={"title": "step", "dtick": 1},
                      yaxis={"title": metric_label(metric), "ticksuffix": unit, "rangemode": "tozero"})
    return _style(fig, f"{metric_label(metric)} at each edit step", height=280)
