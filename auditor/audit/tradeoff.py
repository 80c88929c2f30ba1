"""Trade-offs: run an edit and its baselines on the same model and data, side by side.

Every method is run from the same original model, with the same seed (and, where an editor has
such settings, the same number of clean samples), then evaluated on the same split. One row per
method: the requirement's metric, accuracy, wall time, whether all requirements hold, and
whether it lies on the Pareto front (no other method is better on both metric and accuracy).

    >>> from auditor import load_model, load_data
    >>> from auditor.audit.tradeoff import compare
    >>> bundle = load_model("sample_models/digits_cnn_trojan.safetensors")
    >>> t = compare(bundle, load_data("digits-trojan"), ["attack_success_rate <= 0.02"],
    ...             ["dynamic-rank-one", "finetune"])                   # doctest: +SKIP
    >>> t.rows[["method", "value", "accuracy", "seconds", "pareto"]]     # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from ..backend import Callback, seed_everything
from ..charts import pareto_mask, tradeoff_chart
from ..data.base import AuditData
from ..editors import EDITORS, EditResult, get_editor
from ..editors.registry import editors_for
from ..errors import AuditorError
from ..evaluate import evaluate
from ..models.bundle import ModelBundle
from ..requirements import METRICS, Requirement, parse_requirements

# A method: an editor name, or (label, editor name, settings) to run one editor with several settings.
Method = str | tuple
UTILITY = ("accuracy", "balanced_accuracy")
COLUMNS = ["method", "editor", "kind", "value", "accuracy", "seconds", "passed", "pareto", "layers",
           "model_sha256", "error", "note"]


def tradeoff_metric(requirements) -> Requirement | None:
    """The requirement a trade-off chart plots against accuracy: the first one not about accuracy."""
    reqs = parse_requirements(requirements)
    return next((r for r in reqs if r.metric not in UTILITY), None)


def baselines_for(bundle: ModelBundle, data: AuditData, metric: str, exclude: Sequence[str] = ()) -> list[str]:
    """Registered editors that target `metric` and can edit this model on this data (`editors_for`'s order)."""
    return [cls.name for cls in editors_for(bundle, data, metric) if cls.name not in exclude]


def unavailable_baselines(bundle: ModelBundle, data: AuditData, metric: str,
                          exclude: Sequence[str] = ()) -> list[FailedAlternative]:
    """Registered editors that target `metric` but cannot edit this model on this data, as rows that say why
    (`--baselines auto` left them out without a word)."""
    from ..editors.registry import unavailable_editors

    base = metric.split("[", 1)[0].strip()
    from ..present import not_run

    return [FailedAlternative(cls.name, not_run(reason), kind=getattr(cls, "kind", "editor"))
            for cls, reason in unavailable_editors(bundle, data)
            if base in getattr(cls, "targets", ()) and cls.name not in exclude]


def alternative_methods() -> dict:
    """Mitigations that are not weight edits (fairlearn's ThresholdOptimizer, ExponentiatedGradient),
    by name; each returns an `AlternativeResult`."""
    from ..editors.baselines import fairlearn_mitigations as fb

    return dict(fb.ALTERNATIVES)


# Alternatives run by `--baselines auto` (ExponentiatedGradient retrains for minutes: only when named)
AUTO_ALTERNATIVES = ("threshold-optimizer",)
FAIRNESS = ("demographic_parity", "equalized_odds")


def run_alternative(name: str, bundle: ModelBundle, data: AuditData, requirement, *, split: str = "test",
                    seed: int = 0):
    """Run one alternative mitigation for a fairness `requirement` (its metric is the constraint)."""
    fn = alternative_methods()[name]
    params = inspect.signature(fn).parameters
    kwargs = {"attribute": requirement.attribute, "split": split, "seed": seed}
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    args = (bundle, data) if "bundle" in params else (data,)
    return fn(*args, requirement.metric, **kwargs)


@dataclass
class FailedAlternative:
    """A mitigation asked for that could not run here: a row with its reason, never left out silently."""

    method: str
    error: str
    kind: str = "post-processing"
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""


def alternative_passed(alt, data: AuditData, split: str, reqs, metrics: dict) -> bool | None:
    """Whether a mitigation that is not a model meets every requirement, by the rule edited models are
    judged by (strict: the whole 95 % interval on the right side), from its predictions on `split`; None
    when a requirement cannot be measured on it (sparsity of a post-processing step, say)."""
    from ..requirements import DEFAULT_VERDICT
    from ..requirements.metrics import prediction_outcomes
    from ..requirements.uncertainty import intervals

    if any(r.key not in metrics for r in reqs) or getattr(alt, "error", None):
        return None
    pred = getattr(alt, "predictions", None)
    if pred is None or len(pred) != len(data.split(split)):
        return bool(all(r.holds(metrics[r.key]) for r in reqs))
    oc = prediction_outcomes(data, split, pred)
    iv = intervals({r.key: metrics[r.key] for r in reqs}, oc)
    return bool(all(r.check(metrics, iv, mode=DEFAULT_VERDICT).passed for r in reqs))


def resolve_baselines(baselines, bundle: ModelBundle, data: AuditData, requirements,
                      editor: str | None) -> tuple[list[str], list[str]]:
    """(editor names, alternative names) for a trade-off: `baselines` is "auto" (with an edit: every
    editor that targets the audited requirement, plus ThresholdOptimizer for fairness on tabular data),
    "none"/None, or names (a comma-separated string or a list)."""
    if baselines in (None, "none", False, ()):
        return [], []
    alts = alternative_methods()
    target = tradeoff_metric(requirements)
    fair = target is not None and target.metric in FAIRNESS and data.kind == "tabular"
    if baselines == "auto":
        if target is None or editor is None:  # no edit, nothing to compare against
            return [], []
        names = baselines_for(bundle, data, target.key, exclude=[editor])
        return names, [a for a in AUTO_ALTERNATIVES if a in alts and fair]
    names = [b.strip() for b in (baselines.split(",") if isinstance(baselines, str) else baselines)]
    names = [b for b in names if b and b != editor]
    for b in names:
        if b not in EDITORS and b not in alts:
            raise AuditorError(f"unknown baseline {b!r}; available: {', '.join(sorted([*EDITORS, *alts]))}")
        if b in alts and not fair:
            raise AuditorError(f"baseline {b!r} mitigates demographic_parity or equalized_odds on tabular data; "
                               "this audit has no such requirement")
    if target is None:
        return [], []
    return [b for b in names if b in EDITORS], [b for b in names if b in alts]


def common_settings(editor: str, **candidates) -> dict:
    """The subset of `candidates` (e.g. samples=1, seed=0) that `editor`'s Hyper dataclass has."""
    hyper = getattr(EDITORS[editor], "Hyper", None)
    if hyper is None:
        return {}
    names = {f.name for f in dataclasses.fields(hyper)}
    return {k: v for k, v in candidates.items() if k in names and v is not None}


@dataclass
class Tradeoff:
    """Rows (one per method) of requirement metric vs accuracy, and the edit results behind them."""

    metric: str
    higher_is_better: bool
    rows: pd.DataFrame
    requirements: list[str]
    split: str = "test"
    threshold: float | None = None
    accuracy_threshold: float | None = None
    results: dict[str, EditResult] = field(default_factory=dict, repr=False)
    edit: str | None = None  # the row of this audit's edit (its method label), starred in charts

    @property
    def pareto(self) -> pd.DataFrame:
        return self.rows[self.rows["pareto"]]

    def figure(self, highlight: str | None = None, title: str | None = None):
        """The trade-off chart (`auditor.charts.tradeoff_chart`)."""
        return tradeoff_chart(self.rows, self.metric, higher_is_better=self.higher_is_better,
                              threshold=self.threshold, accuracy_threshold=self.accuracy_threshold,
                              highlight=highlight, title=title)

    def to_dict(self) -> dict:
        rows = []
        for r in self.rows.to_dict("records"):
            rows.append({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()})
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "split": self.split,
                "threshold": self.threshold, "accuracy_threshold": self.accuracy_threshold,
                "requirements": list(self.requirements), "rows": rows, "edit": self.edit}


def _method(m: Method) -> tuple[str, str, dict]:
    if isinstance(m, str):
        return m, m, {}
    label, name, *rest = m
    return str(label), str(name), dict(rest[0]) if rest else {}


def compare(bundle: ModelBundle, data: AuditData, requirements, methods: Sequence[Method], *,
            split: str = "test", device=None, seed: int = 0, samples: int | None = None,
            results: dict[str, EditResult] | None = None, include_original: bool = True,
            alternatives: Sequence = (), fixes=None, evaluations: dict | None = None,
            callback: Callback | None = None, strict: bool = False) -> Tradeoff:
    """Run each method on a copy of `bundle` and evaluate it on `split`.

    `methods`: editor names, or `(label, editor, settings)` to run one editor at several
    settings (a sweep). `results`: edits already run, by label (reused, not run again).
    `samples`/`seed` go to every editor whose settings have them, so all use the same clean
    samples. `alternatives`: results of mitigations that are not weight edits (objects with
    `method`, `kind`, `metrics` on `split`, `seconds`, e.g. fairlearn's ThresholdOptimizer), added
    as rows. `evaluations`: `Evaluation`s already taken on `split` (with the original as
    reference), by label ("original" or a method's), reused. A method that fails gets a row with
    its `error` (or raises when `strict`).
    """
    reqs = parse_requirements(requirements)
    target = tradeoff_metric(reqs)
    if target is None:
        raise AuditorError("a trade-off needs a requirement other than accuracy (e.g. 'demographic_parity <= 0.05')")
    acc_req = next((r for r in reqs if r.metric == "accuracy"), None)
    results = dict(results or {})
    callback = callback or (lambda f, m: None)
    rows, done = [], {}
    plan = [("original", "original", {})] if include_original else []
    plan += [_method(m) for m in methods]
    for i, (label, name, settings) in enumerate(plan):
        callback(i / max(len(plan), 1), f"{label}")
        row = {"method": label, "editor": None if name == "original" else name, "kind": "original",
               "value": None, "accuracy": None, "seconds": 0.0, "passed": None, "layers": [], "model_sha256": None,
               "error": None, "note": None}
        try:
            if name == "original":
                edited = bundle
            else:
                if name not in EDITORS:
                    raise AuditorError(f"unknown editor {name!r}; available: {', '.join(sorted(EDITORS))}")
                row["kind"] = EDITORS[name].kind
                if label not in results:
                    seed_everything(seed)
                    opts = {**common_settings(name, samples=samples, seed=seed), **settings}
                    sub = (lambda f, m, i=i, label=label:
                           callback((i + min(max(f, 0.0), 1.0)) / len(plan), f"{label}: {m}"))
                    results[label] = get_editor(name, **opts).edit(bundle, data, reqs, device=device, callback=sub,
                                                                   fixes=fixes)
                res = results[label]
                edited, row["seconds"], row["layers"] = res.bundle, float(res.seconds), list(res.layers)
                done[label] = res
            ev = (evaluations or {}).get(label)
            if ev is None or ev.model_sha256 != edited.sha256 or ev.split != split:
                ev = evaluate(edited, data, reqs, split=split, reference=bundle, fixes=fixes)
            row.update(value=float(ev.metrics[target.key]), accuracy=float(ev.metrics["accuracy"]),
                       passed=bool(ev.passed), model_sha256=ev.model_sha256)
        except Exception as exc:  # noqa: BLE001 (one failing baseline must not sink the comparison)
            if strict:
                raise
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        rows.append(row)
    for alt in alternatives:
        m = dict(alt.metrics)
        row = {"method": alt.method, "editor": None, "kind": alt.kind, "value": m.get(target.key, m.get(target.metric)),
               "accuracy": m.get("accuracy"), "seconds": float(alt.seconds), "passed": None, "layers": [],
               "model_sha256": None, "error": getattr(alt, "error", None), "note": getattr(alt, "note", None) or None}
        row["passed"] = alternative_passed(alt, data, split, reqs, m)
        rows.append(row)
    df = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "pareto"])
    ok = df["value"].notna() & df["accuracy"].notna()
    df["pareto"] = False
    if ok.any():
        higher = METRICS[target.metric].higher_is_better
        df.loc[ok, "pareto"] = pareto_mask(df.loc[ok, "value"], df.loc[ok, "accuracy"], not higher)
    df = df[COLUMNS]
    callback(1.0, "trade-off done")
    return Tradeoff(target.key, METRICS[target.metric].higher_is_better, df, [r.expr for r in reqs], split,
                    target.threshold, acc_req.threshold if acc_req else None, done)
