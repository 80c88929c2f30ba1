"""One whole audit as a library call: evaluate, localize, edit, re-evaluate, compare, report.

The CLI (`auditor audit`) and the dashboard only collect choices and call `run_audit`.

    >>> from auditor import load_model, load_data
    >>> from auditor.report import run_audit, write_html
    >>> bundle = load_model("sample_models/digits_cnn_trojan.safetensors")
    >>> out = run_audit(bundle, load_data("digits-trojan"), ["attack_success_rate <= 0.02"],
    ...                 editor="dynamic-rank-one")                       # doctest: +SKIP
    >>> out.passed, write_html(out.report, "r.html")                     # doctest: +SKIP
"""
from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..backend import describe_device, pick_device, seed_everything
from ..data.base import AuditData
from ..editors import EDITORS, EditResult, get_editor
from ..errors import AuditorError
from ..evaluate import Evaluation, evaluate
from ..models.files import ModelBundle
from ..requirements import parse_requirements
from ..tradeoff import Tradeoff, baselines_for, common_settings, compare, tradeoff_metric
from .model import Report, build_report

Callback = Callable[[float, str], None]
# Fractions of the progress bar given to each stage
_STAGES = {"evaluate": (0.0, 0.05), "localize": (0.05, 0.2), "edit": (0.2, 0.55), "after": (0.55, 0.6),
           "tradeoff": (0.6, 0.97)}


@dataclass
class AuditOutcome:
    """What an audit produced: the report and the objects behind it."""

    report: Report
    before: Evaluation
    after: Evaluation | None = None
    edit: EditResult | None = None
    tradeoff: Tradeoff | None = None

    @property
    def passed(self) -> bool:
        return self.report.passed

    @property
    def edited(self) -> ModelBundle | None:
        return None if self.edit is None else self.edit.bundle


def _stage(callback: Callback, name: str) -> Callback:
    lo, hi = _STAGES[name]
    return lambda f, msg: callback(lo + (hi - lo) * min(max(float(f), 0.0), 1.0), f"{name}: {msg}")


def _round(values, digits: int = 6) -> list:
    return np.round(np.asarray(values, dtype=float), digits).tolist()


def localize_for_report(bundle: ModelBundle, data: AuditData, requirements=(), *, samples: int = 1, seed: int = 0,
                        rows: int = 400) -> dict:
    """Where the misbehaviour lives, as plain data for the report (needs `auditor.localize`).

    Data with a trigger or cue: layers ranked by `rank_layers_for` on `samples` (clean, corrupted)
    pairs and pixel attributions of the first pair. Tabular data: feature attributions over
    `rows` test rows and, with a protected attribute, layers ranked by `fairness_layers`."""
    if importlib.util.find_spec("auditor.localize") is None:
        return {"available": False, "note": "localization is not installed in this version (auditor.localize)"}
    from .. import localize as loc

    model = bundle.model
    out: dict = {"available": True, "layers": None, "layer_method": None, "features": None, "images": None,
                 "note": None}
    try:
        if data.stamp is not None or data.split("train").corrupted is not None:
            ranked = loc.rank_layers_for(model, data, n=max(int(samples), 1), seed=seed)
            out["layer_method"] = ("layer integrated gradients from corrupted to clean inputs, projected on the "
                                   "rank-one edit direction")
            out["layers"] = [{"layer": r["layer"], "type": r["type"], "score": float(r["score"]),
                              "share": float(r["share"]), "rank": int(r["rank"])} for r in ranked.to_dict("records")]
            if data.kind == "image":
                clean, corrupted, labels = data.pairs(1, seed=seed)
                attr = loc.pixel_attributions(model, clean, corrupted)
                cls = data.class_names
                out["images"] = [
                    {"title": f"clean: predicted {cls[int(attr['clean_prediction'][0])]}",
                     "kind": "image", "z": _round(clean[0].mean(0))},
                    {"title": f"{data.stamp.kind if data.stamp else 'corrupted'}: predicted "
                              f"{cls[int(attr['corrupted_prediction'][0])]}",
                     "kind": "image", "z": _round(corrupted[0].mean(0))},
                    {"title": "attribution (corrupted)", "kind": "attribution",
                     "z": _round(attr["corrupted"][0].sum(0))}]
        elif data.kind == "tabular":
            sp = data.split("test")
            idx = np.sort(np.random.default_rng(seed).choice(len(sp), size=min(rows, len(sp)), replace=False))
            feats = loc.feature_attributions(model, sp.X[idx], data.feature_groups)
            out["features"] = [{"feature": r["feature"], "attribution": float(r["attribution"]),
                                "importance": float(r["importance"]), "share": float(r["share"]),
                                "rank": int(r["rank"])} for r in feats.to_dict("records")]
            if data.protected and len(data.class_names) == 2:
                attr = data.protected[0]
                for r in parse_requirements(requirements):
                    if r.attribute:
                        attr = r.attribute
                        break
                fl = loc.fairness_layers(model, sp.X[idx], sp.groups[attr].to_numpy()[idx], seed=seed)
                out["layer_method"] = (f"layer integrated gradients of the score gap between groups of {attr} "
                                       f"({fl.iloc[0]['high_group']} vs {fl.iloc[0]['low_group']})")
                total = float(fl["score"].sum()) or 1.0
                out["layers"] = [{"layer": r["layer"], "type": r["type"], "score": float(r["score"]),
                                  "share": float(r["score"]) / total, "rank": int(r["rank"])}
                                 for r in fl.to_dict("records")]
        else:
            out.update(available=False, note="no localization applies to this model and data")
    except AuditorError as exc:
        out.update(available=False, note=f"localization was not possible: {exc}")
    return out


def alternative_methods() -> dict:
    """Mitigations that are not weight edits (fairlearn's ThresholdOptimizer, ExponentiatedGradient), by
    name, when `auditor.editors.fairlearn_baselines` is installed; each returns an `AlternativeResult`."""
    if importlib.util.find_spec("auditor.editors.fairlearn_baselines") is None:
        return {}
    from ..editors import fairlearn_baselines as fb

    return dict(getattr(fb, "ALTERNATIVES", {}))


# Alternatives run by `--baselines auto` (ExponentiatedGradient retrains for minutes: only when named)
AUTO_ALTERNATIVES = ("threshold-optimizer",)


def run_alternative(name: str, bundle: ModelBundle, data: AuditData, requirement, *, split: str = "test",
                    seed: int = 0):
    """Run one alternative mitigation for a fairness `requirement` (its metric is the constraint)."""
    fn = alternative_methods()[name]
    params = inspect.signature(fn).parameters
    kwargs = {"attribute": requirement.attribute, "split": split, "seed": seed}
    kwargs = {k: v for k, v in kwargs.items() if k in params}
    args = (bundle, data) if "bundle" in params else (data,)
    return fn(*args, requirement.metric, **kwargs)


def _resolve_baselines(baselines, bundle, data, reqs, editor: str | None) -> tuple[list[str], list[str]]:
    """(editor names, alternative names) to run for the trade-off chart."""
    if baselines in (None, "none", False, ()):
        return [], []
    alts = alternative_methods()
    target = tradeoff_metric(reqs)
    fair = target is not None and target.metric in ("demographic_parity", "equalized_odds")
    if baselines == "auto":
        if target is None or editor is None:  # no edit, nothing to compare against
            return [], []
        names = baselines_for(bundle, data, target.key, exclude=[editor] if editor else [])
        return names, [a for a in AUTO_ALTERNATIVES if a in alts and fair]
    names = [b.strip() for b in (baselines.split(",") if isinstance(baselines, str) else baselines)]
    names = [b for b in names if b and b != editor]
    for b in names:
        if b not in EDITORS and b not in alts:
            raise AuditorError(f"unknown baseline {b!r}; available: {', '.join(sorted([*EDITORS, *alts]))}")
        if b in alts and not fair:
            raise AuditorError(f"baseline {b!r} mitigates demographic_parity or equalized_odds; "
                               "this audit has no such requirement")
    if target is None:
        return [], []
    return [b for b in names if b in EDITORS], [b for b in names if b in alts]


def run_audit(bundle: ModelBundle, data: AuditData, requirements, *, editor: str | None = None,
              settings: dict | None = None, samples: int | None = None, seed: int = 0, split: str = "test",
              baselines: str | Sequence[str] | None = "auto", localize: bool = True, device=None,
              callback: Callback | None = None, model_path: str | None = None, edited_path: str | None = None,
              command: str | None = None, signoff: dict | None = None, fixes=None,
              alternatives: Sequence = ()) -> AuditOutcome:
    """Evaluate `bundle` on `data` against `requirements`; optionally localize, edit with `editor`
    (its `settings`; `samples`/`seed` go to editors that have them), re-evaluate, run the
    `baselines` ("auto": with an editor, every registered editor that targets the requirement; "none";
    or names)
    for the trade-off chart (plus `alternatives`: results of non-edit mitigations, see
    `auditor.tradeoff.compare`), and build the `Report`. `fixes`: mistakes to fix, for editors of
    mistakes. Metrics after the edit are taken with the original as reference (drawdown,
    changed predictions). Same seed, same numbers."""
    reqs = parse_requirements(requirements)
    if not reqs:
        raise AuditorError("an audit needs at least one requirement, e.g. --require 'accuracy >= 0.8'")
    callback = callback or (lambda f, m: None)
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    ed = None
    if editor:
        if editor not in EDITORS:
            raise AuditorError(f"unknown editor {editor!r}; available: {', '.join(sorted(EDITORS))}")
        opts = {**common_settings(editor, samples=samples, seed=seed), **(settings or {})}
        ed = get_editor(editor, **opts)
        reason = ed.supports(bundle, data)
        if reason:
            raise AuditorError(f"editor {editor!r} cannot edit this model on {data.name!r}: {reason}")
    base_names, alt_names = _resolve_baselines(baselines, bundle, data, reqs, editor)

    seed_everything(seed)
    callback(0.0, "evaluate: original model")
    before = evaluate(bundle, data, reqs, split=split, reference=bundle, fixes=fixes)
    loc = None
    if localize:
        callback(_STAGES["localize"][0], "localize: ranking layers")
        seed_everything(seed)
        loc = localize_for_report(bundle, data, reqs, samples=samples or 1, seed=seed)
    after = result = None
    if ed is not None:
        seed_everything(seed)
        result = ed.edit(bundle, data, reqs, device=dev, callback=_stage(callback, "edit"), fixes=fixes)
        callback(_STAGES["after"][0], "evaluate: edited model")
        after = evaluate(result.bundle, data, reqs, split=split, reference=bundle, fixes=fixes)
    trade = None
    alternatives = list(alternatives)
    for i, name in enumerate(alt_names):
        callback(_STAGES["tradeoff"][0], f"tradeoff: {name}")
        try:
            alternatives.append(run_alternative(name, bundle, data, tradeoff_metric(reqs), split=split, seed=seed))
        except AuditorError:
            continue  # not applicable to this model/data: left out of the chart
    if tradeoff_metric(reqs) is not None and (ed is not None or base_names or alternatives):
        methods = ([editor] if editor else []) + base_names
        trade = compare(bundle, data, reqs, methods, split=split, device=dev, seed=seed, samples=samples,
                        results={editor: result} if result is not None else None, alternatives=alternatives,
                        fixes=fixes, evaluations={"original": before, **({editor: after} if after else {})},
                        callback=_stage(callback, "tradeoff"))
    callback(_STAGES["tradeoff"][1], "report")
    report = build_report(bundle=bundle, data=data, before=before, after=after, edit=result,
                          edited=None if result is None else result.bundle, localization=loc, tradeoff=trade,
                          model_path=model_path, edited_path=edited_path, device=describe_device(dev), seed=seed,
                          command=command, signoff=signoff,
                          editor_description=EDITORS[editor].description if editor else None)
    callback(1.0, "done")
    return AuditOutcome(report, before, after, result, trade)
