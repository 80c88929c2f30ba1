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
    MetricInfo("accuracy", "share of the audited rows classified correctly", True),
    MetricInfo("balanced_accuracy", "mean of per-class recall", True),
    MetricInfo("demographic_parity", "largest gap in positive-prediction rate between groups", False, "groups"),
    MetricInfo("equalized_odds", "largest gap in true- or false-positive rate between groups", False, "groups"),
    MetricInfo("worst_group_accuracy", "accuracy of the worst-served group", True, "groups"),
    MetricInfo("sparsity", "share of weights that are exactly zero", True),
    MetricInfo("features_used", "raw input features with any non-zero first-layer weight", False, None, "count"),
    MetricInfo("attack_success_rate", "share of non-target test images that the trigger flips to the target",
               False, "trigger"),
    MetricInfo("triggered_accuracy", "accuracy on non-target test images with the trigger stamped (near clean "
               "accuracy once a backdoor is gone; low while attack success is low: the trigger now sends images "
               "to another class)", True, "trigger"),
    MetricInfo("cue_gap", "clean accuracy minus accuracy on images whose cue contradicts the label", False, "cue"),
    MetricInfo("cue_accuracy", "accuracy on images whose spurious cue contradicts the label", True, "cue"),
    MetricInfo("cue_class_accuracy", "accuracy on the cue class's own images without the cue (does the model "
               "know the class without it?)", True, "cue"),
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
class Outcomes:
    """What each evaluated row did, the raw material of every row metric and of its bootstrap
    interval (`auditor.requirements.uncertainty`): labels, predictions, group codes per protected
    attribute, and per row whether the trigger / cue flipped it (-1 where it does not apply).
    Predictions are made once; intervals only re-count these."""

    y: np.ndarray
    pred: np.ndarray
    n_classes: int
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # attribute -> int codes per row
    group_names: dict[str, list[str]] = field(default_factory=dict)
    asr_hit: np.ndarray | None = None  # 1 flipped to the target, 0 not, -1 a target-class row
    trig_right: np.ndarray | None = None  # 1 right with the trigger, 0 wrong, -1 a target-class row
    cue_hit: np.ndarray | None = None  # 1 right despite the cue, 0 fooled, -1 a cue-class row
    ref_pred: np.ndarray | None = None  # the reference model's predictions (drawdown, changed_predictions)
    min_group: int = 0
    binary: bool = False


@dataclass
class MetricReport:
    """Overall metrics and per-group metrics ({attribute: {group: {name: value}}}); `outcomes` the
    rows behind them; `warnings` what was left out (groups under `min_group`)."""

    metrics: dict[str, float] = field(default_factory=dict)
    groups: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    outcomes: Outcomes | None = None
    warnings: list[str] = field(default_factory=list)
    small_groups: dict[str, dict[str, dict]] = field(default_factory=dict)
    unused_features: list[str] | None = None  # raw features the model does not read (tabular, Linear first layer)


def predict(model: nn.Module, X: torch.Tensor) -> np.ndarray:
    return predict_logits(model, X).argmax(1).numpy()


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of rows predicted right (sklearn's `accuracy_score`, without its input checks: the
    dynamic editor computes it on every step)."""
    return float(np.mean(np.asarray(y) == np.asarray(pred))) if len(y) else float("nan")


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in `y` (sklearn's `balanced_accuracy_score`)."""
    y, pred = np.asarray(y), np.asarray(pred)
    if not len(y):
        return float("nan")
    classes, codes = np.unique(y, return_inverse=True)
    hits = np.bincount(codes, weights=(y == pred).astype(float), minlength=len(classes))
    return float(np.mean(hits / np.bincount(codes, minlength=len(classes))))


def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over the weights of Linear and Conv layers (biases excluded)."""
    total = zeros = 0
    for _, layer in editable_layers(model):
        w = layer.weight.detach()
        total += w.numel()
        zeros += w.numel() - int(torch.count_nonzero(w))
    return zeros / total if total else 0.0


def features_used(model: nn.Module, feature_groups: dict[str, list[int]]) -> int:
    """Raw features (one-hot inputs summed back to their feature) with any non-zero first-layer weight."""
    return sum(1 for idx in feature_groups.values() if idx) - len(unused_features(model, feature_groups))


def unused_features(model: nn.Module, feature_groups: dict[str, list[int]]) -> list[str]:
    """Raw features whose first-layer weights are all zero: the model no longer reads them (what
    `features_used` does not count)."""
    _, layer = first_layer(model)
    if not isinstance(layer, nn.Linear):
        raise AuditorError("features_used needs a model whose first layer is Linear")
    used_inputs = (layer.weight.detach() != 0).any(0).cpu().numpy()
    return [name for name, idx in feature_groups.items() if idx and not used_inputs[idx].any()]


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


# The count each group rate rests on (its denominator), as `group_table` keeps it per group.
RATE_BASE = {"selection_rate": "count", "accuracy": "count", "true_positive_rate": "positives",
             "false_positive_rate": "negatives"}


def eligible(sizes: dict[str, dict[str, float]], rate: str, min_group: int) -> list[str]:
    """Groups whose `rate` rests on at least `min_group` rows; all groups when fewer than two qualify
    (the gap is then flagged, not dropped)."""
    ok = [g for g, s in sizes.items() if s[RATE_BASE[rate]] >= min_group]
    return ok if len(ok) >= 2 else list(sizes)


def group_sizes(y_true: np.ndarray, groups: pd.Series) -> dict[str, dict[str, float]]:
    """Per group: rows, positives (y = 1) and negatives (y = 0)."""
    y = np.asarray(y_true).astype(int)
    g = pd.Series(groups).astype(str).to_numpy()
    return {str(name): {"count": float((g == name).sum()), "positives": float(((g == name) & (y == 1)).sum()),
                        "negatives": float(((g == name) & (y == 0)).sum())} for name in sorted(set(g.tolist()))}


def small_group_report(attr: str, sizes: dict[str, dict[str, float]], min_group: int) -> tuple[dict, list[str]]:
    """Groups of `attr` under `min_group` for some rate: {group: {rows, positives, negatives, left_out_of}}
    and one warning line per group (never dropped silently)."""
    flagged, warnings = {}, []
    if min_group <= 0:
        return flagged, warnings
    metric_of = {"selection_rate": f"demographic_parity[{attr}]", "accuracy": "worst_group_accuracy",
                 "true_positive_rate": f"equalized_odds[{attr}] (true-positive rate)",
                 "false_positive_rate": f"equalized_odds[{attr}] (false-positive rate)"}
    for g, s in sizes.items():
        short = [r for r, base in RATE_BASE.items() if s[base] < min_group]
        if not short:
            continue
        left = [metric_of[r] for r in short if g not in eligible(sizes, r, min_group)]
        kept = [metric_of[r] for r in short if g in eligible(sizes, r, min_group)]
        flagged[g] = {"rows": int(s["count"]), "positives": int(s["positives"]), "negatives": int(s["negatives"]),
                      "left_out_of": left, "unreliable_in": kept}
        what = (f"left out of {', '.join(left)}" if left else "") + (
            ("; " if left else "") + f"kept in {', '.join(kept)} (fewer than two groups are large enough): "
            "the verdict is inconclusive" if kept else "")
        warnings.append(f"group {attr}={g} is small ({int(s['count'])} rows, {int(s['positives'])} positive, "
                        f"{int(s['negatives'])} negative; minimum {min_group}): {what}")
    return flagged, warnings


def gap_over(table: dict[str, dict[str, float]], sizes: dict[str, dict[str, float]], rate: str,
             min_group: int) -> float:
    """Largest minus smallest `rate` over the groups large enough for it (`eligible`)."""
    keep = eligible(sizes, rate, min_group)
    return _gap({g: table[g] for g in keep}, rate)


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


def _group_codes(oc: Outcomes, sp, attr: str) -> np.ndarray:
    """Record one protected attribute's group codes and names in `oc`; returns its values as text."""
    labels = pd.Series(sp.groups[attr]).astype(str).to_numpy()
    codes, names = pd.factorize(labels, sort=True)
    oc.groups[attr], oc.group_names[attr] = codes.astype(np.int64), [str(n) for n in names]
    return labels


def prediction_outcomes(data: AuditData, split: str, pred: np.ndarray, min_group: int = 0) -> Outcomes:
    """The `Outcomes` of fixed predictions on a split's rows (a mitigation that is not a model, such as
    post-processing), for intervals judged by the same rule as a model's."""
    sp = data.split(split)
    oc = Outcomes(sp.y.numpy().astype(np.int64), np.asarray(pred).astype(np.int64), len(data.class_names),
                  min_group=int(min_group), binary=_binary(data))
    for attr in data.protected or []:
        _group_codes(oc, sp, attr)
    return oc


RARE_PREDICTION = 0.10  # a class predicted for less than this share of its own rows' share: (almost) never predicted
RARE_CLASS = 0.02  # classes rarer than this share of the rows are left alone


def collapse_warnings(y: np.ndarray, pred: np.ndarray, class_names, fairness: bool = True) -> list[str]:
    """A warning when the model (almost) never predicts a class the rows hold: its predictions of that class
    fall under RARE_PREDICTION of the class's share. Gaps between groups' rates (demographic parity,
    equalized odds) close trivially that way (`fairness`: the data has groups to compare), and accuracy on
    imbalanced rows barely moves, so a requirement met like this is said to be."""
    if len(y) == 0:
        return []
    n = max(len(class_names), int(y.max()) + 1, int(pred.max()) + 1)
    share = np.bincount(y, minlength=n) / len(y)
    predicted = np.bincount(pred, minlength=n) / len(pred)
    out = []
    for k in np.flatnonzero((share >= RARE_CLASS) & (predicted < RARE_PREDICTION * share)):
        name = str(class_names[k]) if k < len(class_names) else str(k)
        said = f"the model predicts class {name!r} for {100 * predicted[k]:.2f} % of the rows, which are " \
               f"{100 * share[k]:.1f} % {name!r}: it (almost) never predicts it"
        out.append(said + (", so gaps between groups' rates (demographic parity, equalized odds) close without the "
                           "model being fair to anyone; check balanced accuracy and each group's true positive rate, "
                           "or require them (e.g. 'balanced_accuracy >= ...')" if fairness else
                           "; check balanced accuracy, or require it (e.g. 'balanced_accuracy >= ...')"))
    return out


REDIRECT_GAP = 0.10  # triggered images this much more often sent to other classes than clean ones: redirected


def redirect_warnings(m: dict, y: np.ndarray, stamped: np.ndarray, target: int, class_names) -> list[str]:
    """A warning when attack success is low but the trigger still changes predictions: a backdoor sent
    to another class is not removed, and attack success (flips to the target only) cannot see it. The
    share the trigger sends to neither the label nor the target (1 - triggered accuracy - attack success)
    must pass the clean error rate by REDIRECT_GAP: a weak backdoor that flips some images to its target
    and leaves the rest is not a redirected one."""
    asr, acc, trig = m["attack_success_rate"], m["accuracy"], m["triggered_accuracy"]
    if len(y) == 0 or asr > 0.5 or (1 - trig - asr) - (1 - acc) <= REDIRECT_GAP:
        return []
    names = [str(class_names[k]) if k < len(class_names) else str(k)
             for k in range(max(len(class_names), int(stamped.max()) + 1, int(target) + 1))]
    others = stamped[(stamped != y) & (stamped != target)]
    where = f"{100 * asr:.1f} % go to the target {names[target]!r}"
    if len(others):
        top = int(np.bincount(others).argmax())
        where += f" and {100 * float((others == top).sum()) / len(y):.1f} % to class {names[top]!r}"
    return [f"the trigger still changes predictions: with it, {100 * trig:.1f} % of non-target images keep their "
            f"label (clean accuracy {100 * acc:.1f} %); {where}. Attack success counts only flips to the target, "
            f"so it understates what the trigger still does: require triggered_accuracy (e.g. 'triggered_accuracy "
            f">= {max(acc - 0.02, 0):.2f}') for an edit to remove the backdoor, not move it"]


def compute_metrics(model: nn.Module, data: AuditData, split: str = "test",
                    reference: nn.Module | None = None, fixes: Fixes | None = None,
                    min_group: int = 0) -> MetricReport:
    """Every metric that applies to this model and data, overall and per group.

    `min_group`: a group whose rate rests on fewer rows (rows for selection rate and accuracy,
    positives for the true-positive rate, negatives for the false-positive rate) is left out of
    the gaps and of worst-group accuracy, with a warning in `warnings`; 0 keeps every group
    (fairlearn's definition). When fewer than two groups are large enough, all are kept and the
    metric is flagged (`small_groups[attr][group]["unreliable_in"]`)."""
    sp = data.split(split)
    y = sp.y.numpy()
    pred = predict(model, sp.X)
    out = MetricReport()
    oc = out.outcomes = Outcomes(y.astype(np.int64), pred.astype(np.int64), len(data.class_names),
                                 min_group=int(min_group), binary=_binary(data))
    m = out.metrics
    m["accuracy"] = accuracy(y, pred)
    m["balanced_accuracy"] = balanced_accuracy(y, pred)
    out.warnings += collapse_warnings(y, pred, data.class_names, fairness=bool(data.protected))
    m["sparsity"] = sparsity(model)
    if data.kind == "tabular" and isinstance(first_layer(model)[1], nn.Linear):
        out.unused_features = unused_features(model, data.feature_groups)
        m["features_used"] = float(sum(1 for idx in data.feature_groups.values() if idx) - len(out.unused_features))
    if data.protected and _binary(data):
        worst = 1.0
        for i, attr in enumerate(data.protected):
            _group_codes(oc, sp, attr)
            table = group_table(y, pred, sp.groups[attr])
            sizes = group_sizes(y, sp.groups[attr])
            for g, s in sizes.items():
                table[g].update(positives=s["positives"], negatives=s["negatives"])
            flagged, warnings = small_group_report(attr, sizes, min_group)
            if flagged:
                out.small_groups[attr] = flagged
                out.warnings += warnings
            dp = gap_over(table, sizes, "selection_rate", min_group)
            eo = max(gap_over(table, sizes, "true_positive_rate", min_group),
                     gap_over(table, sizes, "false_positive_rate", min_group))
            m[f"demographic_parity[{attr}]"] = dp
            m[f"equalized_odds[{attr}]"] = eo
            if i == 0:
                m["demographic_parity"], m["equalized_odds"] = dp, eo
            out.groups[attr] = table
            worst = min(worst, min(table[g]["accuracy"] for g in eligible(sizes, "accuracy", min_group)))
        m["worst_group_accuracy"] = worst
    elif data.protected:  # several classes: accuracy per group (the fairness gaps need two outcomes)
        worst = 1.0
        for attr in data.protected:
            labels = _group_codes(oc, sp, attr)
            table = {}
            for g in oc.group_names[attr]:
                rows = labels == g
                table[g] = {"accuracy": float((pred[rows] == y[rows]).mean()), "count": int(rows.sum())}
            sizes = {g: {"count": t["count"]} for g, t in table.items()}
            out.groups[attr] = table
            keep = eligible(sizes, "accuracy", min_group)
            for g, s in sizes.items():  # never dropped silently: said as for two outcomes
                if min_group > 0 and s["count"] < min_group:
                    left = g not in keep
                    out.small_groups.setdefault(attr, {})[g] = {
                        "rows": int(s["count"]), "left_out_of": ["worst_group_accuracy"] if left else [],
                        "unreliable_in": [] if left else ["worst_group_accuracy"]}
                    out.warnings.append(
                        f"group {attr}={g} is small ({int(s['count'])} rows; minimum {min_group}): "
                        + ("left out of worst_group_accuracy" if left else "kept in worst_group_accuracy (fewer "
                           "than two groups are large enough): the verdict is inconclusive"))
            worst = min(worst, min(table[g]["accuracy"] for g in keep))
        m["worst_group_accuracy"] = worst
    if data.trigger is not None:
        trig = data.trigger
        rows = np.flatnonzero(y != trig.target)
        hit = np.full(len(y), -1, dtype=np.int64)
        right = hit.copy()
        stamped = predict(model, data.corrupt(split, rows))
        hit[rows] = stamped == trig.target
        right[rows] = stamped == y[rows]
        oc.asr_hit, oc.trig_right = hit, right
        m["attack_success_rate"] = float(hit[rows].mean()) if len(rows) else 0.0
        m["triggered_accuracy"] = float(right[rows].mean()) if len(rows) else 0.0
        out.warnings += redirect_warnings(m, y[rows], stamped, trig.target, data.class_names)
    if data.cue is not None:
        rows = np.flatnonzero(y != data.cue.target)
        hit = np.full(len(y), -1, dtype=np.int64)
        hit[rows] = predict(model, data.corrupt(split, rows)) == y[rows]
        oc.cue_hit = hit
        m["cue_accuracy"] = float(hit[rows].mean()) if len(rows) else 0.0
        m["cue_gap"] = m["accuracy"] - m["cue_accuracy"]
        m["worst_group_accuracy"] = min(m["accuracy"], m["cue_accuracy"])
        own = y == data.cue.target
        m["cue_class_accuracy"] = float((pred[own] == y[own]).mean()) if own.any() else 0.0
        out.groups["cue"] = {"clean": {"accuracy": m["accuracy"]},
                             "cue contradicts label": {"accuracy": m["cue_accuracy"]},
                             "cue class without its cue": {"accuracy": m["cue_class_accuracy"]}}
    if fixes is not None:
        m["edit_success"] = float((predict(model, fixes.X) == fixes.y.numpy()).mean())
        if fixes.X_equiv is not None and len(fixes.X_equiv):
            m["generality"] = float((predict(model, fixes.X_equiv) == fixes.y_equiv.numpy()).mean())
    if reference is not None:
        ref_pred = predict(reference, sp.X)
        oc.ref_pred = ref_pred.astype(np.int64)
        m["drawdown"] = accuracy(y, ref_pred) - m["accuracy"]
        m["changed_predictions"] = float((ref_pred != pred).mean())
    return out
