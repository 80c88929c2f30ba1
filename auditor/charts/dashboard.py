"""Plotly builders the dashboard needs beyond `auditor.charts`: where an edit changed the weights,
attribution maps for several image pairs, and attributions before vs after an edit.

Pure functions from tensors / DataFrames to `go.Figure`; no Streamlit here.

    >>> import torch
    >>> from auditor.charts.dashboard import weight_change_heatmap
    >>> fig = weight_change_heatmap("fc1", torch.zeros(4, 3), torch.ones(4, 3))
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..present import change_size_text, inert_figure, pixel_attribution, shown_image
from . import image_trace

BEFORE = "#8c959f"
AFTER = "#0969da"
ACCENT = "#bf8700"
FONT = "Helvetica, Arial, sans-serif"
ATTRIBUTION_UNIT = "contribution to the class score (logit)"


def _style(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, font={"family": FONT, "size": 12},
                      margin={"l": 70, "r": 30, "t": 70 if title else 30, "b": 55},
                      title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}} if title else None,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 1, "xanchor": "right"})
    return inert_figure(fig)  # every string from a model, data or user as plain text, never markup


def _matrix(t: torch.Tensor) -> np.ndarray:
    t = t.detach().double().cpu()
    return (t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)).numpy()


def weight_change_heatmap(layer: str, before: torch.Tensor, after: torch.Tensor,
                          bias_before: torch.Tensor | None = None, bias_after: torch.Tensor | None = None,
                          *, max_cols: int = 400) -> go.Figure:
    """|after - before| of one layer's weight as a heatmap: rows are output units, columns the
    inputs each unit reads (a convolution's kernel flattened: in-channel x kernel row x column);
    the bias, when given, is the last column. Title: size of the change (‖ΔW‖/‖W‖, a ratio of norms),
    the share of weights changed, and the change's rank."""
    d = np.abs(_matrix(after) - _matrix(before))
    w = _matrix(before)
    if bias_before is not None and bias_after is not None:
        db = np.abs(_matrix(bias_after) - _matrix(bias_before)).reshape(-1, 1)
        d = np.concatenate([d, db], axis=1)
        w = np.concatenate([w, _matrix(bias_before).reshape(-1, 1)], axis=1)
    signed = _matrix(after) - _matrix(before)
    rank = int(np.linalg.matrix_rank(signed, tol=1e-6 * max(float(np.abs(signed).max()), 1e-30))) if d.any() else 0
    norm, base = float(np.linalg.norm(d)), float(np.linalg.norm(w)) or 1.0
    step = max(1, int(np.ceil(d.shape[1] / max_cols)))
    shown = d[:, ::step] if step > 1 else d
    fig = go.Figure(go.Heatmap(z=shown, colorscale="Viridis", zmin=0,
                               colorbar={"title": {"text": "|Δ weight|", "side": "right"}},
                               hovertemplate="output unit %{y}, input %{x}: |Δ| = %{z:.3g}<extra></extra>"))
    cols = "inputs (last column: bias)" if bias_before is not None else "inputs"
    if step > 1:
        cols += f", every {step}th shown"
    fig.update_layout(xaxis={"title": cols}, yaxis={"title": "output unit", "autorange": "reversed"})
    changed = float((d > 0).mean()) if d.size else 0.0
    title = f"{layer}: {change_size_text(norm / base, changed)}, rank {rank}"
    _style(fig, title, height=max(260, min(520, 120 + 9 * d.shape[0])))
    fig.update_layout(margin_r=110)  # room for the colour bar's title
    return fig


def weight_change_overview(changes: Sequence[dict]) -> go.Figure:
    """Relative size of the change per parameter tensor (`WeightDelta.changes()`), in percent."""
    rows = list(changes)
    names = [r["parameter"] for r in rows]
    rel = [100 * float(r["relative_norm"]) for r in rows]
    fig = go.Figure(go.Bar(y=names, x=rel, orientation="h", marker_color=AFTER,
                           text=[f"{v:.1f} %  (rank {r['rank']})" for v, r in zip(rel, rows)], textposition="auto",
                           hovertemplate="%{y}: %{x:.2f} % of its norm<extra></extra>"))
    fig.update_layout(xaxis={"title": "size of the change, % of the tensor's norm (‖ΔW‖ / ‖W‖)",
                             "rangemode": "tozero"},
                      yaxis={"title": "parameter", "autorange": "reversed"})
    return _style(fig, "Which weights the edits changed", height=max(200, 90 + 40 * len(rows)))


def pixel_pairs_chart(clean: torch.Tensor, corrupted: torch.Tensor, pixels: dict, class_names: Sequence[str],
                      labels: torch.Tensor | None = None, title: str | None = None) -> go.Figure:
    """One row per (clean, corrupted) pair: the clean image and its prediction, the corrupted image and
    its prediction, and where the corruption pushes the model (integrated gradients of the corrupted
    prediction with the clean twin as baseline; red: towards the predicted class)."""
    k = len(pixels["clean"])
    cls = list(class_names)
    titles = []
    for i in range(k):
        pc, pk = int(pixels["clean_prediction"][i]), int(pixels["corrupted_prediction"][i])
        lab = f" (true {cls[int(labels[i])]})" if labels is not None else ""
        titles += [f"clean: predicted {cls[pc]}{lab}", f"with trigger/cue: predicted {cls[pk]}",
                   f"what pushes the model to {cls[pk]}"]
    fig = make_subplots(rows=k, cols=3, subplot_titles=titles, horizontal_spacing=0.06,
                        vertical_spacing=0.12 / max(k, 1))
    m = max(max(float(np.abs(pixel_attribution(a)).max()) for a in pixels["corrupted"]), 1e-12)
    for i in range(k):
        panels = [(shown_image(clean[i]), "image"), (shown_image(corrupted[i]), "image"),
                  (pixel_attribution(pixels["corrupted"][i]), "attr")]
        for j, (z, kind) in enumerate(panels, start=1):
            if kind == "image":
                tr = image_trace(z)
            else:
                tr = go.Heatmap(z=z, colorscale="RdBu_r", zmin=-m, zmax=m, showscale=(i == 0),
                                colorbar={"title": {"text": "contribution<br>to class score", "side": "right"},
                                          "len": 0.9 / k, "y": 1 - (i + 0.5) / k},
                                hovertemplate="pixel (%{x}, %{y}): %{z:.3g}<extra></extra>")
            fig.add_trace(tr, row=i + 1, col=j)
            axis = i * 3 + j
            fig.update_yaxes(autorange="reversed", scaleanchor=f"x{axis if axis > 1 else ''}", showticklabels=False,
                             row=i + 1, col=j)
            fig.update_xaxes(showticklabels=False, row=i + 1, col=j)
    fig.update_annotations(font_size=13)
    return _style(fig, title, height=80 + 300 * k)


def pixel_before_after_chart(corrupted: torch.Tensor, before: dict, after: dict, class_names: Sequence[str],
                             label: int | None = None, title: str | None = None) -> go.Figure:
    """A corrupted image and what pushes the model's prediction on it, before and after the edit."""
    cls = list(class_names)
    pb, pa = int(before["corrupted_prediction"][0]), int(after["corrupted_prediction"][0])
    zb, za = pixel_attribution(before["corrupted"][0]), pixel_attribution(after["corrupted"][0])
    m = max(float(np.abs(zb).max()), float(np.abs(za).max()), 1e-12)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.05, subplot_titles=[
        "image with trigger/cue" + (f" (true {cls[int(label)]})" if label is not None else ""),
        f"before the edit: predicted {cls[pb]}", f"after the edit: predicted {cls[pa]}"])
    fig.add_trace(image_trace(shown_image(corrupted[0])), row=1, col=1)
    for j, z in ((2, zb), (3, za)):
        fig.add_trace(go.Heatmap(z=z, colorscale="RdBu_r", zmin=-m, zmax=m, showscale=(j == 3),
                                 colorbar={"title": {"text": "contribution<br>to class score", "side": "right"}},
                                 hovertemplate="pixel (%{x}, %{y}): %{z:.3g}<extra></extra>"), row=1, col=j)
    for j in (1, 2, 3):
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{j if j > 1 else ''}", showticklabels=False, row=1, col=j)
        fig.update_xaxes(showticklabels=False, row=1, col=j)
    fig.update_annotations(font_size=12)
    return _style(fig, title, height=330)


def feature_before_after_chart(before: pd.DataFrame, after: pd.DataFrame, top: int = 12,
                               title: str | None = None) -> go.Figure:
    """Mean |attribution| per raw feature (`feature_attributions`) before and after, top features first."""
    order = list(before.sort_values("importance", ascending=False)["feature"][:top])
    b = before.set_index("feature")["importance"]
    a = after.set_index("feature")["importance"]
    fig = go.Figure()
    fig.add_trace(go.Bar(y=order, x=[float(b.get(f, 0.0)) for f in order], orientation="h", name="before",
                         marker_color=BEFORE, hovertemplate="%{y}: %{x:.3g}<extra>before</extra>"))
    fig.add_trace(go.Bar(y=order, x=[float(a.get(f, 0.0)) for f in order], orientation="h", name="after",
                         marker_color=AFTER, hovertemplate="%{y}: %{x:.3g}<extra>after</extra>"))
    fig.update_layout(barmode="group", yaxis={"autorange": "reversed", "title": "raw feature"},
                      xaxis={"title": "mean |attribution| (average effect on the class score, logit units)"})
    return _style(fig, title, height=max(300, 90 + 42 * len(order)))
