"""95 % bootstrap intervals for every row metric, paired intervals for before/after differences,
and the side effects of an edit.

How: the model's predictions are made once (`metrics.Outcomes`). Every row falls in a cell (its
label, its groups, its prediction, whether the trigger/cue flipped it, and for a paired bootstrap
the other model's prediction too); a bootstrap resample of the rows is a draw of cell counts. Rows
are resampled within strata (every protected group), so each group keeps its size: a multinomial draw
per stratum (one stratum of all rows without groups), `RESAMPLES` times, seeded by `SEED`. Labels are
resampled with the rows: the audited rows are a sample, and a rate that hinges on the class (a trigger
that works on every class but one) varies with the class mix of the sample. Each
metric is then recomputed from the counts of each resample (vectorised), and its interval is the
2.5th-97.5th percentile of those values, widened where needed to contain the value itself
(max-min gaps over small groups are biased upwards in resamples).

A paired bootstrap draws the same resampled rows for the model before and after an edit (cells
hold both predictions), so the interval of a difference excludes the noise the two share.

Each metric is resampled from the cells of the columns it reads only (labels, groups, predictions,
and at most one of: trigger hits, triggered predictions, cue hits, a reference model's predictions),
so its interval does not depend on which other metrics were measured beside it (the dashboard, the
command line and the editors' checks give the same interval for the same rows).

Metrics that are not row statistics get no interval: `sparsity`, `features_used` (properties of
the weights) and `edit_success`, `generality` (the requested fixes are the whole population, not a
sample of one). `drawdown` and `changed_predictions` get one (they are row statistics against the
reference model).

    >>> RESAMPLES, SEED, LEVEL
    (2000, 0, 0.95)
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .metrics import METRICS, RATE_BASE, Outcomes

RESAMPLES = 2000  # enough for stable 2.5/97.5 percentiles; ~0.1 s on Adult's 16 k rows (counts, not rows)
SEED = 0
LEVEL = 0.95
NO_INTERVAL = {"sparsity": "a property of the weights, not of rows: no interval",
               "features_used": "a property of the weights, not of rows: no interval",
               "edit_success": "the requested fixes are the whole population, not a sample: no interval",
               "generality": "the fixes' equivalent inputs are the whole population, not a sample: no interval"}
# Not judged as side effects: comparisons with the model before the edit, not qualities of the model
NOT_SIDE_EFFECTS = frozenset({"drawdown", "changed_predictions"})


def _worse(d: dict | None) -> bool:
    """Whether a paired change of a higher-is-better metric is worse beyond noise."""
    return d is not None and d["high"] < 0


def _base(key: str) -> str:
    return key.split("[", 1)[0]


def _attr(key: str) -> str | None:
    return key[key.index("[") + 1:-1] if "[" in key else None


@dataclass
class _Cells:
    """Distinct cells of the rows (columns by name) and their bootstrap counts W (B, cells)."""

    cols: dict[str, np.ndarray]
    counts: np.ndarray  # (cells,) original counts
    W: np.ndarray  # (B, cells) resampled counts

    def count(self, mask: np.ndarray, original: bool = False) -> np.ndarray:
        if original:
            return np.asarray(self.counts[mask].sum(), dtype=float)
        return self.W[:, mask].sum(1).astype(float)


def _columns(oc: Outcomes, prefix: str = "") -> dict[str, np.ndarray]:
    cols = {f"{prefix}pred": oc.pred}
    if oc.asr_hit is not None:
        cols[f"{prefix}asr"] = oc.asr_hit
    if oc.trig_right is not None:
        cols[f"{prefix}trig"] = oc.trig_right
    if oc.cue_hit is not None:
        cols[f"{prefix}cue"] = oc.cue_hit
    if oc.ref_pred is not None:
        cols[f"{prefix}ref"] = oc.ref_pred
    return cols


def _cells(outcomes: list[Outcomes], resamples: int, seed: int) -> _Cells:
    base = outcomes[0]
    # strata: the protected groups only (each keeps its size). Not the labels: the rows are a sample, and a
    # rate that hinges on the class (a trigger that works on every class but one) varies with the class mix
    strata_cols = {**{f"g:{a}": c for a, c in base.groups.items()}, "y": base.y}
    model_cols = {}
    for i, oc in enumerate(outcomes):
        model_cols.update(_columns(oc, f"{i}:"))
    names = [*strata_cols, *model_cols]
    K = np.stack([np.asarray(v, dtype=np.int64) for v in [*strata_cols.values(), *model_cols.values()]], 1)
    cells, counts = np.unique(K, axis=0, return_counts=True)
    n_strata = len(strata_cols) - 1  # "y" travels with the cells, not as a stratum
    if n_strata:
        _, stratum = np.unique(cells[:, :n_strata], axis=0, return_inverse=True)
        stratum = stratum.ravel()
    else:
        stratum = np.zeros(len(cells), dtype=np.int64)
    rng = np.random.default_rng(seed)
    W = np.zeros((resamples, len(cells)), dtype=np.int64)
    for s in range(int(stratum.max()) + 1 if len(stratum) else 0):
        idx = np.flatnonzero(stratum == s)
        n_s = int(counts[idx].sum())
        W[:, idx] = rng.multinomial(n_s, counts[idx] / n_s, size=resamples)
    return _Cells({n: cells[:, j] for j, n in enumerate(names)}, counts, W)


_OPTIONAL = ("asr_hit", "trig_right", "cue_hit", "ref_pred")  # per-row columns only some metrics read
_READS = {"attack_success_rate": "asr_hit", "triggered_accuracy": "trig_right", "cue_accuracy": "cue_hit",
          "cue_gap": "cue_hit", "cue_class_accuracy": "cue_hit", "drawdown": "ref_pred",
          "changed_predictions": "ref_pred"}


def _reads(key: str, oc: Outcomes) -> str | None:
    """The optional column a metric reads (None: labels, groups and predictions only)."""
    if _base(key) == "worst_group_accuracy" and oc.cue_hit is not None:
        return "cue_hit"  # with a cue: the worse of clean and cue accuracy
    return _READS.get(_base(key))


def _replicates(outcomes: list[Outcomes], keys, resamples: int, seed: int) -> dict[str, list[np.ndarray]]:
    """Per metric key: its values on the bootstrap resamples, one array per model in `outcomes` (paired: the
    same resampled rows), each metric from the cells of the columns it reads only."""
    base = outcomes[0]
    wanted: dict[str | None, list[str]] = {}
    for key in keys:
        column = _reads(key, base)
        if column is None or getattr(base, column) is not None:
            wanted.setdefault(column, []).append(key)
    out: dict[str, list[np.ndarray]] = {}
    for column, names in wanted.items():
        views = [replace(oc, **{c: None for c in _OPTIONAL if c != column}) for oc in outcomes]
        c = _cells(views, resamples, seed)
        reps = [_metrics(c, v, f"{i}:") for i, v in enumerate(views)]
        out.update({k: [r[k] for r in reps] for k in names if all(k in r for r in reps)})
    return out


def _all_keys(oc: Outcomes) -> list[str]:
    """Every row metric `_metrics` gives for `oc`."""
    return list(_metrics(_cells([oc], 1, SEED), oc, "0:", original=True))


def _rate(c: _Cells, num: np.ndarray, den: np.ndarray, original: bool) -> np.ndarray:
    a, b = c.count(num & den, original), c.count(den, original)
    return np.divide(a, b, out=np.zeros_like(a), where=b > 0)


def _metrics(c: _Cells, oc: Outcomes, prefix: str, original: bool = False) -> dict[str, np.ndarray]:
    """Every row metric of one model from cell counts (B resamples, or the original counts)."""
    y, pred = c.cols["y"], c.cols[f"{prefix}pred"]
    every = np.ones(len(y), dtype=bool)
    out = {}
    out["accuracy"] = _rate(c, y == pred, every, original)
    recalls = [_rate(c, pred == k, y == k, original) for k in range(oc.n_classes) if c.counts[y == k].sum() > 0]
    out["balanced_accuracy"] = np.mean(recalls, 0) if recalls else out["accuracy"] * 0
    if oc.groups and oc.binary:
        worst = None
        for i, attr in enumerate(oc.groups):
            g = c.cols[f"g:{attr}"]
            rates, sizes = {}, {}
            for k, name in enumerate(oc.group_names[attr]):
                in_g = g == k
                n_g, pos, neg = (float(c.counts[in_g & m].sum()) for m in (every, y == 1, y == 0))
                if n_g == 0:
                    continue
                sizes[name] = {"count": n_g, "positives": pos, "negatives": neg}
                rates[name] = {"selection_rate": _rate(c, pred == 1, in_g, original),
                               "accuracy": _rate(c, pred == y, in_g, original),
                               "true_positive_rate": _rate(c, pred == 1, in_g & (y == 1), original),
                               "false_positive_rate": _rate(c, pred == 1, in_g & (y == 0), original)}

            def gap(rate, rates=rates, sizes=sizes):
                keep = _eligible(sizes, rate, oc.min_group)
                vals = np.stack([rates[k][rate] for k in keep])
                return vals.max(0) - vals.min(0)

            dp = gap("selection_rate")
            eo = np.maximum(gap("true_positive_rate"), gap("false_positive_rate"))
            out[f"demographic_parity[{attr}]"], out[f"equalized_odds[{attr}]"] = dp, eo
            if i == 0:
                out["demographic_parity"], out["equalized_odds"] = dp, eo
            acc = np.stack([rates[k]["accuracy"] for k in _eligible(sizes, "accuracy", oc.min_group)]).min(0)
            worst = acc if worst is None else np.minimum(worst, acc)
        out["worst_group_accuracy"] = worst
    elif oc.groups:  # several classes: the worst group's accuracy
        worst = None
        for attr in oc.groups:
            g = c.cols[f"g:{attr}"]
            counts = {name: float(c.counts[g == k].sum()) for k, name in enumerate(oc.group_names[attr])}
            keep = [k for k, name in enumerate(oc.group_names[attr]) if counts[name] >= max(oc.min_group, 1)]
            keep = keep if len(keep) >= 2 else [k for k, name in enumerate(oc.group_names[attr]) if counts[name] > 0]
            acc = np.stack([_rate(c, pred == y, g == k, original) for k in keep]).min(0)
            worst = acc if worst is None else np.minimum(worst, acc)
        out["worst_group_accuracy"] = worst
    if f"{prefix}asr" in c.cols:
        h = c.cols[f"{prefix}asr"]
        out["attack_success_rate"] = _rate(c, h == 1, h >= 0, original)
    if f"{prefix}trig" in c.cols:
        h = c.cols[f"{prefix}trig"]
        out["triggered_accuracy"] = _rate(c, h == 1, h >= 0, original)
    if f"{prefix}cue" in c.cols:
        h = c.cols[f"{prefix}cue"]
        out["cue_accuracy"] = _rate(c, h == 1, h >= 0, original)
        out["cue_gap"] = out["accuracy"] - out["cue_accuracy"]
        out["cue_class_accuracy"] = _rate(c, pred == y, h < 0, original)
        out["worst_group_accuracy"] = np.minimum(out["accuracy"], out["cue_accuracy"])
    if f"{prefix}ref" in c.cols:
        ref = c.cols[f"{prefix}ref"]
        out["drawdown"] = _rate(c, ref == y, every, original) - out["accuracy"]
        out["changed_predictions"] = _rate(c, ref != pred, every, original)
    return out


def _eligible(sizes: dict, rate: str, min_group: int) -> list[str]:
    ok = [g for g, s in sizes.items() if s[RATE_BASE[rate]] >= min_group]
    return ok if len(ok) >= 2 else list(sizes)


def _n(oc: Outcomes, key: str) -> tuple[int, dict | None]:
    """Rows a metric rests on, and for group metrics the size of each group."""
    attr = _attr(key) or (next(iter(oc.groups), None) if _base(key) in ("demographic_parity", "equalized_odds")
                          else None)
    if _base(key) == "attack_success_rate" and oc.asr_hit is not None:
        return int((oc.asr_hit >= 0).sum()), None
    if _base(key) == "triggered_accuracy" and oc.trig_right is not None:
        return int((oc.trig_right >= 0).sum()), None
    if _base(key) == "cue_accuracy" and oc.cue_hit is not None:
        return int((oc.cue_hit >= 0).sum()), None
    if _base(key) == "cue_class_accuracy" and oc.cue_hit is not None:
        return int((oc.cue_hit < 0).sum()), None
    if attr is not None and attr in oc.groups:
        sizes = np.bincount(oc.groups[attr], minlength=len(oc.group_names[attr]))
        return len(oc.y), {n: int(s) for n, s in zip(oc.group_names[attr], sizes)}
    if key == "worst_group_accuracy" and oc.groups:
        return len(oc.y), {f"{a}={n}": int(s) for a in oc.groups
                           for n, s in zip(oc.group_names[a], np.bincount(oc.groups[a]))}
    return len(oc.y), None


def _bounds(reps: np.ndarray, value: float) -> tuple[float, float]:
    alpha = (1 - LEVEL) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return float(min(lo, value)), float(max(hi, value))


def intervals(metrics: dict[str, float], oc: Outcomes, *, resamples: int = RESAMPLES,
              seed: int = SEED) -> dict[str, dict]:
    """{metric: {"value", "low", "high", "n"}} for every metric in `metrics` (as `compute_metrics`
    gave them for the rows in `oc`); group metrics add "groups" (rows per group); metrics that are
    not row statistics get low = high = n = None and a "note" saying why."""
    reps = _replicates([oc], list(metrics), resamples, seed)
    out = {}
    for key, value in metrics.items():
        if key in reps:
            lo, hi = _bounds(reps[key][0], float(value))
            n, groups = _n(oc, key)
            entry = {"value": float(value), "low": lo, "high": hi, "n": n}
            if groups is not None:
                entry["groups"] = groups
        else:
            entry = {"value": float(value), "low": None, "high": None, "n": None,
                     "note": NO_INTERVAL.get(_base(key), "not a row statistic: no interval")}
        out[key] = entry
    return out


def point_metrics(oc: Outcomes) -> dict[str, float]:
    """The row metrics recomputed from the original cell counts (equal to `compute_metrics`; tested)."""
    c = _cells([oc], 1, SEED)
    return {k: float(v) for k, v in _metrics(c, oc, "0:", original=True).items()}


def resample_values(oc: Outcomes, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """The row metrics on `resamples` fresh stratified bootstrap resamples (for checks of coverage)."""
    return {k: r[0] for k, r in _replicates([oc], _all_keys(oc), resamples, seed).items()}


def paired_differences(before: Outcomes, after: Outcomes, metrics_before: dict, metrics_after: dict, *,
                       resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, dict]:
    """{metric: {"before", "after", "change", "low", "high"}}: the change after - before and its 95 %
    interval from a paired bootstrap (the same resampled rows for both models)."""
    if len(before.y) != len(after.y) or not np.array_equal(before.y, after.y):
        raise ValueError("a paired bootstrap needs the same rows before and after")
    reps = _replicates([before, after], [k for k in metrics_after if k in metrics_before], resamples, seed)
    out = {}
    for key in metrics_after:
        if key not in reps:
            continue
        b, a = float(metrics_before[key]), float(metrics_after[key])
        lo, hi = _bounds(reps[key][1] - reps[key][0], a - b)
        out[key] = {"before": b, "after": a, "change": a - b, "low": lo, "high": hi}
    return out


def _group_sources(key: str, groups_before: dict, groups_after: dict, higher_is_better: bool,
                   limit: int = 3) -> list[dict]:
    """Where a group metric's change comes from: the group rates that moved most in the bad direction."""
    metric, attr = _base(key), _attr(key)
    rates = {"demographic_parity": ["selection_rate"], "worst_group_accuracy": ["accuracy"],
             "equalized_odds": ["true_positive_rate", "false_positive_rate"]}.get(metric)
    if rates is None:
        return []
    attrs = [attr] if attr else list(groups_after)
    rows = []
    for a in attrs:
        for g, vals in groups_after.get(a, {}).items():
            old = groups_before.get(a, {}).get(g, {})
            for rate in rates:
                if rate in vals and rate in old:
                    n = vals.get(RATE_BASE[rate], vals.get("count"))
                    rows.append({"attribute": a, "group": g, "rate": rate, "before": float(old[rate]),
                                 "after": float(vals[rate]), "change": float(vals[rate] - old[rate]),
                                 "n": None if n is None else int(n)})
    if metric == "worst_group_accuracy":  # the groups that lost accuracy, the worst served first
        rows = sorted((r for r in rows if r["change"] < 0), key=lambda r: r["after"])
    else:
        rows.sort(key=lambda r: -abs(r["change"]))
    return rows[:limit]


def side_effects(before, after, requirement_keys=(), primary: str | None = None, *,
                 resamples: int = RESAMPLES, seed: int = SEED) -> list[dict]:
    """Metrics that are not requirements and got worse by more than their noise: the paired 95 %
    interval of the change excludes 0 on the bad side. `before`/`after`: `Evaluation`s of the same
    rows; `primary`: the protected attribute that `demographic_parity` (no [attribute]) stands for.
    Each: {"metric", "before", "after", "change", "low", "high", "higher_is_better", "groups": [...]}."""
    ob, oa = getattr(before, "outcomes", None), getattr(after, "outcomes", None)
    if ob is None or oa is None:
        return []
    skip = set(requirement_keys)
    if primary:
        for k in list(skip):
            if k in ("demographic_parity", "equalized_odds"):
                skip.add(f"{k}[{primary}]")
            elif k in (f"demographic_parity[{primary}]", f"equalized_odds[{primary}]"):
                skip.add(_base(k))
    diffs = paired_differences(ob, oa, before.metrics, after.metrics, resamples=resamples, seed=seed)
    out = []
    for key, d in diffs.items():
        if key in skip or _base(key) in NOT_SIDE_EFFECTS or _base(key) not in METRICS:
            continue
        if primary and key in ("demographic_parity", "equalized_odds") and f"{key}[{primary}]" in diffs:
            continue  # the same number as its [primary] form, listed once
        hib = METRICS[_base(key)].higher_is_better
        worse = d["high"] < 0 if hib else d["low"] > 0
        if not worse:
            continue
        if key == "cue_gap" and not any(_worse(diffs.get(k)) for k in ("accuracy", "cue_accuracy")):
            continue  # accuracy minus cue accuracy: it grows when accuracy gains more, which harms no one
        out.append({"metric": key, **d, "higher_is_better": hib,
                    "groups": _group_sources(key, before.groups, after.groups, hib)})
    out.sort(key=lambda e: -abs(e["change"]))
    return out


__all__ = ["LEVEL", "NO_INTERVAL", "RESAMPLES", "SEED", "intervals", "paired_differences", "point_metrics",
           "resample_values", "side_effects"]
