"""Metric functions. Group metrics follow `fairlearn.metrics` exactly (tests hold them to 1e-9)
but are computed with vectorised counts: fairlearn's MetricFrame takes seconds on Adult, which
is too slow for a live dashboard.

`compute_metrics` returns every metric that applies to a model and data set: fairness needs
protected attributes, attack success a trigger, cue gap a cue, edit metrics a set of fixes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch import nn

from ..data.base import AuditData
from ..errors import AuditorError
from ..models.architectures import editable_layers, first_layer, predict_logits


@dataclass(frozen=True)
class MetricInfo:
    name: str
    description: str
    higher_is_better: bool
    needs: str | None = None  # "groups", "trigger", "cue", "fixes", "reference"
    unit: str = "fraction"


METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("accuracy", "share of test rows classified correctly", True),
    MetricInfo("balanced_accuracy", "mean of per-class recall", True),
    MetricInfo("demographic_parity", "largest gap in positive-prediction rate between groups", False, "groups"),
    MetricInfo("equalized_odds", "largest gap in true- or false-positive rate between groups", False, "groups"),
    MetricInfo("worst_group_accuracy", "accuracy of the worst-served group", True, "groups"),
    MetricInfo("sparsity", "share of weights that are exactly zero", True),
    MetricInfo("features_used", "raw input features with any non-zero first-layer weight", False, None, "count"),
    MetricInfo("attack_success_rate", "share of non-target test images that the trigger flips to the target",
               False, "trigger"),
    MetricInfo("cue_gap", "clean accuracy minus accuracy on images whose cue contradicts the label", False, "cue"),
    MetricInfo("cue_accuracy", "accuracy on images whose spurious cue contradicts the label", True, "cue"),
    MetricInfo("edit_success", "share of requested fixes the model now gets right", True, "fixes"),
    MetricInfo("generality", "share of equivalent inputs of the fixes that get the requested label", True, "fixes"),
    MetricInfo("drawdown", "test accuracy lost against the model before the edit", False, "reference"),
    MetricInfo("changed_predictions", "share of test predictions that differ from the model before the edit",
               False, "reference"),
]}


@dataclass
class Fixes:
    """Mistakes to fix: inputs X with requested labels y, and equivalent inputs (shifted, noised)."""

    X: torch.Tensor
    y: torch.Tensor
    X_equiv: torch.Tensor | None = None
    y_equiv: torch.Tensor | None = None


@dataclass
class MetricReport:
    """Overall metrics and per-group metrics ({attribute: {group: {name: value}}})."""

    metrics: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def predict(model: nn.Module, X: torch.Tensor) -> np.ndarray:
    return predict_logits(model, X).argmax(1).numpy()


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over the weights of Linear and Conv layers (biases excluded)."""
    total = zeros = 0
    for _, layer in editable_layers(model):
        w = layer.weight.detach()
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / total if total else 0.0


def features_used(model: nn.Module, feature_groups: dict[str, list[int]]) -> int:
    """Raw features (one-hot inputs summed back to their feature) with any non-zero first-layer weight."""
    _, layer = first_layer(model)
    if not isinstance(layer, nn.Linear):
        raise AuditorError("features_used needs a model whose first layer is Linear")
    used_inputs = (layer.weight.detach() != 0).any(0).cpu().numpy()
    return int(sum(bool(used_inputs[idx].any()) for idx in feature_groups.values() if idx))


def group_table(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.Series) -> dict[str, dict[str, float]]:
    """Per group: accuracy, selection rate, true- and false-positive rate, count (fairlearn's definitions;
    a rate with an empty denominator is 0, as in fairlearn)."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    codes, names = pd.factorize(pd.Series(groups).astype(str).to_numpy(), sort=True)
    k = len(names)

    def count(mask):
        return np.bincount(codes[mask], minlength=k).astype(float)

    n = count(np.ones_like(y_true, dtype=bool))
    pos, neg = count(y_true == 1), count(y_true == 0)
    ratio = lambda a, b: np.divide(a, b, out=np.zeros(k), where=b > 0)
    table = {"accuracy": ratio(count(y_true == y_pred), n), "selection_rate": ratio(count(y_pred == 1), n),
             "true_positive_rate": ratio(count((y_true == 1) & (y_pred == 1)), pos),
             "false_positive_rate": ratio(count((y_true == 0) & (y_pred == 1)), neg), "count": n}
    return {str(g): {m: float(v[i]) for m, v in table.items()} for i, g in enumerate(names)}


def _gap(table: dict[str, dict[str, float]], metric: str) -> float:
    values = [row[metric] for row in table.values()]
    return max(values) - min(values)


def demographic_parity_difference(table: dict[str, dict[str, float]]) -> float:
    """Largest minus smallest selection rate across groups."""
    return _gap(table, "selection_rate")


def equalized_odds_difference(table: dict[str, dict[str, float]]) -> float:
    """The larger of the true-positive-rate gap and the false-positive-rate gap across groups."""
    return max(_gap(table, "true_positive_rate"), _gap(table, "false_positive_rate"))


def attack_success_rate(model: nn.Module, data: AuditData, split: str = "test") -> float:
    trig = data.trigger
    if trig is None:
        raise AuditorError(f"data set {data.name!r} has no Trojan trigger")
    sp = data.split(split)
    rows = np.flatnonzero(sp.y.numpy() != trig.target)
    return float((predict(model, data.corrupt(split, rows)) == trig.target).mean())


def cue_accuracy(model: nn.Module, data: AuditData, split: str = "test") -> float:
    """Accuracy on images of other classes stamped with the cue (the cue contradicts the label)."""
    cue = data.cue
    if cue is None:
        raise AuditorError(f"data set {data.name!r} has no spurious cue")
    sp = data.split(split)
    rows = np.flatnonzero(sp.y.numpy() != cue.target)
    return float((predict(model, data.corrupt(split, rows)) == sp.y.numpy()[rows]).mean())


def _binary(data: AuditData) -> bool:
    return len(data.class_names) == 2


def compute_metrics(model: nn.Module, data: AuditData, split: str = "test",
                    reference: nn.Module | None = None, fixes: Fixes | None = None) -> MetricReport:
    """Every metric that applies to this model and data, overall and per group."""
    sp = data.split(split)
    y = sp.y.numpy()
    pred = predict(model, sp.X)
    out = MetricReport()
    m = out.metrics
    m["accuracy"] = float(accuracy_score(y, pred))
    m["balanced_accuracy"] = float(balanced_accuracy_score(y, pred))
    m["sparsity"] = sparsity(model)
    if data.kind == "tabular" and isinstance(first_layer(model)[1], nn.Linear):
        m["features_used"] = float(features_used(model, data.feature_groups))
    if data.protected and _binary(data):
        worst = 1.0
        for i, attr in enumerate(data.protected):
            table = group_table(y, pred, sp.groups[attr])
            dp, eo = demographic_parity_difference(table), equalized_odds_difference(table)
            m[f"demographic_parity[{attr}]"] = dp
            m[f"equalized_odds[{attr}]"] = eo
            if i == 0:
                m["demographic_parity"], m["equalized_odds"] = dp, eo
            out.groups[attr] = table
            worst = min(worst, min(v["accuracy"] for v in out.groups[attr].values()))
        m["worst_group_accuracy"] = worst
    if data.trigger is not None:
        m["attack_success_rate"] = attack_success_rate(model, data, split)
    if data.cue is not None:
        m["cue_accuracy"] = cue_accuracy(model, data, split)
        m["cue_gap"] = m["accuracy"] - m["cue_accuracy"]
        m["worst_group_accuracy"] = min(m["accuracy"], m["cue_accuracy"])
        out.groups["cue"] = {"clean": {"accuracy": m["accuracy"]},
                             "cue contradicts label": {"accuracy": m["cue_accuracy"]}}
    if fixes is not None:
        m["edit_success"] = float((predict(model, fixes.X) == fixes.y.numpy()).mean())
        if fixes.X_equiv is not None and len(fixes.X_equiv):
            m["generality"] = float((predict(model, fixes.X_equiv) == fixes.y_equiv.numpy()).mean())
    if reference is not None:
        ref_pred = predict(reference, sp.X)
        m["drawdown"] = float(accuracy_score(y, ref_pred)) - m["accuracy"]
        m["changed_predictions"] = float((ref_pred != pred).mean())
    return out
