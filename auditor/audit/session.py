"""One audit, the service both front-ends drive: the model as loaded (never edited), the current
model (a private copy), the data, the requirements, localization, the edits applied (each revertible
bit for bit), the trade-off against baselines, the report, its provenance and the audit log.

The dashboard keeps one `AuditSession` per browser session; `auditor audit` drives one end to end
(`auditor.audit.pipeline.run_audit`); `auditor edit` and `auditor localize` use its steps. The model
and data it starts from may be shared (cached) objects, which is why nothing here edits `pristine`.

    >>> from auditor import load_model, load_data
    >>> from auditor.audit import AuditSession
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
import json
import math
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import present
from ..backend import Callback, describe_device, pick_device, seed_everything
from ..data.base import EVAL_SPLITS, SPLITS, AuditData
from ..editors.base import parameters_changed
from ..errors import AuditorError
from ..evaluate import DEFAULT_MIN_GROUP, Evaluation, check_compatible, evaluate, warnings_of
from ..models.bundle import ModelBundle
from ..models.files import save_model
from ..requirements import DEFAULT_VERDICT, VERDICT_MODES, Requirement, parse_requirement, parse_requirements
from .localization import Localization, localize, not_available, sample_rows
from .provenance import PROVENANCE_KEY, chain_note, earlier_edits, provenance, reproduce_command

# Requirements a newcomer gets for the built-in data sets (edit them on the Requirements page).
DEFAULT_REQUIREMENTS: dict[str, list[str]] = {
    "digits-trojan": ["attack_success_rate <= 0.02", "accuracy >= 0.95"],
    "digits-spurious": ["cue_gap <= 0.05", "accuracy >= 0.95"],
    "digits": ["accuracy >= 0.95"],
    "adult": ["demographic_parity <= 0.05", "accuracy >= 0.82"],
    "compas": ["demographic_parity <= 0.1", "accuracy >= 0.64"],
}


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


@dataclass
class EditRecord:
    """One applied edit: the editor's result (with the weight delta that undoes it), the model's
    hash before and after, and the requirement verdicts after."""

    result: Any  # auditor.editors.EditResult
    sha_before: str
    sha_after: str
    requirements: list[str]
    metrics_after: dict[str, float] = field(default_factory=dict)
    passed_after: bool = False
    description: str | None = None
    fixes: dict | None = None  # the mistakes this edit was asked to fix: rows, count, sha256

    @property
    def editor(self) -> str:
        return self.result.editor

    def to_dict(self) -> dict:
        """The edit as the report and the provenance state it."""
        d = self.result.to_dict()
        d.pop("model_sha256", None)
        d.update(description=self.description, sha_before=self.sha_before, sha_after=self.sha_after,
                 requirements=self.requirements, metrics_after=self.metrics_after, passed_after=self.passed_after,
                 fixes=self.fixes,
                 parameters_changed=parameters_changed(self.result.delta),
                 max_rank=max((c["rank"] for c in d["changes"]), default=0))
        return d


MAX_RECORDED_INPUTS = 200_000  # values of fixes given by their inputs kept in the edit's record


class AuditSession:
    """State and steps of one audit. `pristine` is never modified (it may be shared between users);
    `current` is this session's own model, replaced (never edited in place) by each edit or revert.

    `log`: an `auditor.store.AuditLog` that receives every evaluation, edit, revert and report of this
    session under one run id, with `user`'s name. `seed` drives sampling, editors and baselines;
    `split` is the split metrics are taken on. `model_path` names the model in commands and logs."""

    def __init__(self, pristine: ModelBundle, data: AuditData, requirements=None, *, model_label: str = "",
                 data_label: str = "", seed: int = 0, split: str | None = None, log=None, user: str = "",
                 model_path: str | None = None, command: str | None = None, verdict: str = DEFAULT_VERDICT,
                 min_group: int = DEFAULT_MIN_GROUP, forbid_side_effects: bool = False):
        check_compatible(pristine, data)
        if verdict not in VERDICT_MODES:
            raise AuditorError(f"unknown verdict mode {verdict!r}; choose one of {', '.join(VERDICT_MODES)}")
        split = data.resolve_split(split)  # None: the data's default ("all" for a user's file without a partition)
        if split not in EVAL_SPLITS:
            raise AuditorError(f"unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
        self.pristine = pristine
        self.current = pristine.copy()
        self.data = data
        self.model_label = model_label or pristine.name
        self.data_label = data_label or data.name
        self.model_path = model_path or pristine.source or None
        self.spec_path: str | None = None  # the spec file the model was loaded with, as the user named it
        self.spec_draft = None  # the `Draft` the spec was drafted as, when the dashboard drafted it from the data
        self.pristine_sha256 = pristine.sha256
        self.earlier_edits = earlier_edits(pristine)  # the edits recorded in the loaded file (an edited model)
        self.seed = int(seed)
        self.split = split
        self.verdict_mode = verdict  # strict: a requirement whose interval straddles its threshold is not met
        self.min_group = int(min_group)  # groups under this size are left out of gaps (with a warning)
        self.forbid_side_effects = bool(forbid_side_effects)  # side effects of an edit count as a failure
        self._side: tuple | None = None
        self._unavailable: tuple | None = None
        self.tradeoff_note: str | None = None  # why the report has no trade-off although one was run
        self.requirements: list[Requirement] = (
            parse_requirements(requirements) if requirements is not None else default_requirements(data, pristine))
        self.edits: list[EditRecord] = []
        self.localization: Localization | None = None
        self.localization_note: str | None = None  # why localization could not run, for the report
        self.chosen_layer: str | None = None  # None: the editor picks the top-ranked layer itself
        self.tradeoff = None  # auditor.audit.tradeoff.Tradeoff of the last comparison run
        self.tradeoff_key: tuple | None = None
        self.tradeoff_baselines: list[str] = []  # as asked for the last trade-off
        self.fix_specs: list[str] = []  # mistakes to fix, "ROW=LABEL" over the evaluation split
        self.fixes = None  # auditor.requirements.Fixes built from fix_specs
        self._fixes_sha: str | None = None  # their sha256 (a table's fixes are named by specs that may repeat)
        self._earlier_fixes: list | None = None
        self.auditor_name = user
        self.notes = ""
        self.fixed_command = command  # the front-end's own command line (the CLI's), else built here
        self.run_id = uuid.uuid4().hex[:12]
        self.log = log
        self._evals: dict[tuple, Evaluation] = {}
        self._attr_key: tuple | None = None
        self._attr: dict = {}
        self._editors_key: tuple | None = None
        self._editors: list[type] = []
        if log is not None:
            self.record_start()

    # -- identity ---------------------------------------------------------------------------
    @property
    def edited(self) -> bool:
        return bool(self.edits)

    @property
    def user(self) -> str:
        return self.auditor_name

    @property
    def rows_words(self) -> str:
        """ "test split" or "all rows": where the audit's metrics are taken."""
        return present.split_words(self.split)

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

    # -- the audit log ------------------------------------------------------------------------
    log_failure_ok = False  # a log that cannot be written stops the logging, not the audit (CLI audit)
    log_error: str | None = None  # why the log stopped (the caller says it and exits non-zero)

    def _append(self, kind: str, **fields) -> int | None:
        if self.log is None:
            return None
        try:
            return self.log.append(kind, user=self.auditor_name or None, run=self.run_id, command=self.command(),
                                   data_name=self.data.name, data_sha256=self.data.sha256,
                                   requirements=[r.expr for r in self.requirements], **fields)
        except AuditorError as exc:
            if not self.log_failure_ok:
                raise
            self.log_error, self.log = str(exc), None  # the audit goes on; its outputs are written, unlogged
            return None

    def record_start(self) -> int | None:
        """Log the model as loaded (its evaluation): the first entry of this audit's run."""
        return self._log_evaluation("pristine", "before")

    def _log_evaluation(self, which: str, label: str) -> int | None:
        ev = self.evaluate(which)
        d = ev.to_dict()
        path = self.model_path if which == "pristine" else None
        return self._append("evaluation", model_path=path, model_sha256=ev.model_sha256, passed=ev.passed,
                            results={"metrics": d["metrics"], "requirements": d["requirements"], "label": label,
                                     "split": ev.split, "rows": ev.rows})

    # -- evaluation -------------------------------------------------------------------------
    def evaluate(self, which: str = "current", split: str | None = None) -> Evaluation:
        """Metrics and requirement verdicts of the current (or pristine) model, cached per weights."""
        split = split or self.split
        bundle = self.current if which == "current" else self.pristine
        sha = bundle.sha256 if which == "current" else self.pristine_sha256
        key = (sha, tuple(r.expr for r in self.requirements), split, tuple(self.fix_specs), self._fixes_sha,
               self.verdict_mode, self.min_group)  # the fixes' own hash: two tables may carry the same names
        if key not in self._evals:
            if len(self._evals) > 32:
                self._evals.clear()
            ref = self.pristine if which == "current" else None
            ev = evaluate(bundle, self.data, [], split, reference=ref, fixes=self.fixes, verdict=self.verdict_mode,
                          min_group=self.min_group)
            if which != "current":
                ev.metrics.setdefault("drawdown", 0.0)
                ev.metrics.setdefault("changed_predictions", 0.0)
                for k in ("drawdown", "changed_predictions"):
                    ev.intervals.setdefault(k, {"value": 0.0, "low": 0.0, "high": 0.0, "n": ev.rows})
            ev.judge(self.requirements, self.verdict_mode, self.data.primary_protected)
            ev.warnings = self._earlier_fix_notes(bundle) + self._fix_label_notes() + list(ev.warnings)
            self._evals[key] = ev
        return self._evals[key]

    def earlier_fixes(self) -> list[tuple[str, object]]:
        """The mistakes fixed by the edits recorded in the loaded file, as (editor, Fixes) rebuilt on this data,
        each only when it is exactly the rows and labels fixed then (same sha256): an earlier fix on other
        data is not checked here."""
        if self._earlier_fixes is None:
            from ..fixes import fixes_digest, make_fixes, parse_fixes

            def rebuilt(rec):
                """Each way the record's fixes can be rebuilt on this data: from their inputs (a table of input
                rows), or from their rows over the split the edit used (recorded since session 6; else each
                split in turn)."""
                if rec.get("inputs") and rec.get("labels"):
                    yield lambda: make_fixes(self.data, torch.tensor(rec["inputs"], dtype=torch.float32).reshape(
                        -1, *self.data.input_shape), rec["labels"])
                    return
                for split in [rec["split"]] if rec.get("split") else dict.fromkeys([self.split, "test", "all"]):
                    yield lambda split=split: parse_fixes([str(r) for r in rec["rows"]], self.data, split)

            found = []
            for e in self.earlier_edits:
                rec = e.get("fixes") if isinstance(e, dict) else None
                if not isinstance(rec, dict) or not rec.get("rows") or not rec.get("sha256"):
                    continue
                for build in rebuilt(rec):
                    try:
                        fixes = build()
                    except (AuditorError, ValueError, TypeError, RuntimeError):
                        continue
                    if fixes_digest(fixes) == rec["sha256"]:  # exactly the rows and labels fixed then
                        found.append((str(e.get("editor") or "an earlier edit"), fixes))
                        break
            self._earlier_fixes = found
        return self._earlier_fixes

    def _fix_label_notes(self) -> list[str]:
        """A warning when fixes ask for another label than the data's own for their rows: a row number that
        counts over another split than the user meant (a CSV given alone is audited on all its rows, shuffled
        into train/val/test), or a deliberate change of label."""
        rows = self._fix_rows() if self.fixes is not None else None
        if not rows:
            return []  # no fixes, or a table's fixes (inputs given, no rows): nothing to compare with
        names = self.data.class_names
        other = [(sp, r, lab) for sp, r, lab in rows if int(self.data.split(sp).y[r]) != lab]
        if not other:
            return []
        sp, r, lab = other[0]
        return [f"{len(other)} of {len(rows)} fix(es) ask for another label than the data's own for their row "
                f"(e.g. row {r} of the {sp} split: the data says {names[int(self.data.split(sp).y[r])]!r}, the fix "
                f"asks {names[lab]!r}): ROW counts over the {self.split} split"
                + (" (a CSV given alone: every row, in the order train, val, test of its 60/20/20 split, not the "
                   "file's order)" if self.split == "all" else "") + "; check the rows are the ones you meant"]

    def _earlier_fix_notes(self, bundle: ModelBundle) -> list[str]:
        """A warning per earlier edit whose fixed mistakes `bundle` no longer gets right."""
        from ..models.architectures import predict_logits

        notes = []
        for editor, fixes in self.earlier_fixes():
            held = (predict_logits(bundle.model, fixes.X).argmax(1) == fixes.y).numpy()
            if not held.all():
                notes.append(f"{int((~held).sum())} of {len(held)} mistake(s) fixed by an earlier edit ({editor}) "
                             "are wrong again: an edit since undid them")
        return notes

    def side_effects(self) -> list[dict]:
        """What the edits made worse beyond noise, besides the requirements (`uncertainty.side_effects`):
        every metric whose paired 95 % interval of the change (same resampled rows before and after)
        excludes 0 on the bad side. Empty before any edit."""
        if not self.edits:
            return []
        from ..requirements.uncertainty import side_effects

        key = (self.state_key(), self.split, self.min_group)
        if self._side is None or self._side[0] != key:
            effects = side_effects(self.evaluate("pristine"), self.evaluate(), [r.key for r in self.requirements],
                                   self.data.primary_protected)
            self._side = (key, effects)
        return self._side[1]

    def verdict(self) -> dict:
        """The audit's verdict as it stands: status PASS / PASS with side effects / FAIL / INCONCLUSIVE
        (`auditor.present.verdict`), before -> now per requirement with intervals, and the side effects."""
        return present.verdict(self.evaluate("pristine"), self.evaluate() if self.edits else None,
                               self.side_effects(), forbid_side_effects=self.forbid_side_effects)

    def available_metrics(self) -> list[str]:
        """Metric keys a requirement can use for this model and data (including `[attribute]` forms)."""
        return list(self.evaluate().metrics)

    def requirement_table(self) -> pd.DataFrame:
        """One row per requirement: its text, meaning, value before any edit, now, and whether it holds now."""
        return present.requirement_table(self.requirements, self.evaluate("pristine"), self.evaluate())

    def metrics_table(self, which: str = "current") -> pd.DataFrame:
        return present.metrics_table(self.evaluate(which), self.data.primary_protected,
                                     with_reference=which == "current")

    def compare_table(self) -> pd.DataFrame:
        """Before vs now, every metric, with units."""
        return present.compare_table(self.evaluate("pristine"), self.evaluate(), self.data.primary_protected)

    def group_table(self, attribute: str) -> pd.DataFrame:
        """Per group of `attribute`: accuracy and selection rate (positive predictions) before and now."""
        return present.group_table(self.evaluate("pristine"), self.evaluate(), attribute)

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
        """Every requirement met under the verdict mode (and, with `forbid_side_effects`, no side effect)."""
        return self.evaluate().passed and not (self.forbid_side_effects and self.side_effects())

    # -- mistakes to fix ----------------------------------------------------------------------
    def mistakes(self, limit: int = 200) -> pd.DataFrame:
        """Rows of the evaluation split the model as loaded gets wrong (at most `limit`)."""
        from ..requirements import predict

        sp = self.data.split(self.split)
        pred = predict(self.pristine.copy().model, sp.X)
        y = sp.y.numpy()
        rows = np.flatnonzero(pred != y)[:limit]
        cls = self.data.class_names
        return pd.DataFrame({"row": rows, "true": [cls[int(y[r])] for r in rows],
                             "predicted": [cls[int(pred[r])] for r in rows]})

    def _label_by_model_name(self, spec: str) -> str:
        """`ROW=LABEL` with LABEL one of the model's class names the data does not use (an image case numbers
        its classes; the model's spec may name them) as the class index."""
        if not isinstance(spec, str) or "=" not in spec:
            return spec
        where, label = spec.split("=", 1)
        names = [str(c) for c in self.pristine.spec.class_names]
        if label.strip() in names and label.strip() not in self.data.class_names:
            return f"{where}={names.index(label.strip())}"
        return spec

    def set_fixes(self, specs: list[str], *, require: bool = True, fixes=None) -> None:
        """Mistakes to fix (`ROW=LABEL` over the evaluation split, see `auditor.fixes.parse_fixes`); with
        fixes, `edit_success` and `generality` can be required and fix editors (MEND, ...) can run.
        `require`: add `edit_success >= 1` when no requirement on it is there yet. `fixes`: already built
        (`auditor.fixes.fixes_from_table`), `specs` then only name them."""
        from ..fixes import fixes_digest, parse_fixes

        specs = [self._label_by_model_name(s) for s in specs]
        self.fixes = fixes if fixes is not None else parse_fixes(specs, self.data, self.split) if specs else None
        self.fix_specs = specs
        self._fixes_sha = fixes_digest(self.fixes) if self.fixes is not None else None
        if not specs:
            self.requirements = [r for r in self.requirements if r.metric not in present.FIX_METRICS]
        elif require and not any(r.metric == "edit_success" for r in self.requirements):
            self.requirements.append(parse_requirement("edit_success >= 1"))

    def fix_record(self) -> dict | None:
        """The mistakes to fix as an edit's provenance states them: rows (specs, `ROW=LABEL` over `split`: the
        same row number means another row on another split), count and sha256."""
        if self.fixes is None:
            return None
        from ..fixes import fixes_digest

        record = {"rows": list(self.fix_specs), "split": self.split, "count": len(self.fixes.y),
                  "sha256": fixes_digest(self.fixes), "labels": [int(v) for v in self.fixes.y]}
        if self._fix_rows() is None and self.fixes.X.numel() <= MAX_RECORDED_INPUTS:
            record["inputs"] = self.fixes.X.reshape(len(self.fixes.X), -1).tolist()  # no rows to rebuild them from
        return record

    def _fix_rows(self) -> list[tuple[str, int, int]] | None:
        """The fixes as (split, row, label) of the data, or None when they are not rows (a table of inputs)."""
        from ..fixes import parse_fix

        try:
            return [parse_fix(s, self.data, self.split) for s in self.fix_specs]
        except (AuditorError, ValueError, TypeError):
            return None

    # -- localization -----------------------------------------------------------------------
    def localize(self, **kwargs) -> Localization:
        """Localize on the current model (`auditor.audit.localization.localize`); kept for the report."""
        kwargs.setdefault("seed", self.seed)
        kwargs.setdefault("split", self.split)
        seed_everything(kwargs["seed"])
        self.localization = localize(self.current, self.data, self.requirements, **kwargs)
        self.localization_note = None
        if self.localization.kind in ("trigger", "cue", "twins"):
            self.prepare_edit(samples=kwargs.get("samples", 1))
        return self.localization

    def prepare_edit(self, editor: str = "dynamic-rank-one", **settings) -> dict | None:
        """Do ahead, on the current model, what `editor` (with `settings`) does before its first edit, so the
        edit that follows Localize starts from there (`DynamicRankOneEditor.prepare`); None when it cannot
        edit this model, or not with these requirements (the edit itself then says why)."""
        from ..editors import get_editor

        ed = get_editor(editor, **settings)
        if not hasattr(ed, "prepare") or ed.supports(self.current, self.data):
            return None
        try:
            return ed.prepare(self.current, self.data, self.requirements)
        except AuditorError:
            return None

    # -- editing ----------------------------------------------------------------------------
    def editors(self) -> list[type]:
        """Editors that can edit this model on this data (`editors_for`'s order), those aiming at a
        failing requirement first, then those aiming at any requirement; fix editors last without fixes."""
        from ..editors.registry import editors_for

        key = self.state_key()
        if self._editors_key == key:
            return list(self._editors)
        failing = {present.base_metric(r.metric) for r in self.evaluate().requirements if not r.passed}
        wanted = {present.base_metric(r.key) for r in self.requirements}

        def order(cls):
            targets = set(cls.targets)
            needs_fixes = self.fixes is None and bool(targets) and targets <= present.FIX_METRICS
            return (needs_fixes, not (targets & failing), not (targets & wanted))

        self._editors = sorted(editors_for(self.current, self.data), key=order)
        self._editors_key = key
        return list(self._editors)

    def editors_changed(self) -> None:
        """Forget the cached editor lists: an editor file appeared (a learned editor was just trained for
        this model's family), so `editors()` and `unavailable_editors()` ask every editor again."""
        self._editors_key, self._unavailable = None, None

    def unavailable_editors(self) -> list[tuple[str, str]]:
        """(name, reason) for every registered editor that cannot edit this model on this data: why
        (its `supports` message, which names what would make it work where something does today),
        then a way forward here: the editors that apply to the same requirements, else those that
        apply to this model at all."""
        from ..editors.registry import unavailable_editors

        key = self.state_key()
        cached = self._unavailable
        if cached is None or cached[0] != key:  # every rerun of the Edit page asks
            cached = (key, [(cls.name, self.way_forward(cls, reason))
                            for cls, reason in unavailable_editors(self.current, self.data)])
            self._unavailable = cached
        return list(cached[1])

    def way_forward(self, cls: type, reason: str) -> str:
        """`reason` (why editor class `cls` cannot edit this model here) followed by what works here
        today: the editors that apply and aim at the same requirements, else those that apply at all."""
        usable = self.editors()
        reason = str(reason).rstrip(". ")
        wanted = {r.metric for r in self.requirements} & set(cls.targets)  # the audit's, where it has some
        aims = wanted or set(cls.targets)
        same = [c.name for c in usable if set(c.targets) & aims and f"`{c.name}`" not in reason]
        if same:
            which = f"for {', '.join(sorted(wanted))}" if wanted else "for the same requirement"
            return reason + f". Applies here instead, {which}: {', '.join(same)}."
        if usable:
            return reason + f". Editors that apply to this model here: {', '.join(c.name for c in usable[:4])}."
        return reason + ". No registered editor applies to this model on this data."

    def new_warnings(self) -> list[str]:
        """Warnings the current model's evaluation gives that the model as loaded did not (a backdoor sent to
        another class, an earlier fix undone): what an edit brought, for the pages to show beside it."""
        if not self.edits:
            return []
        before = set(self.evaluate("pristine").warnings)
        return [w for w in self.evaluate().warnings if w not in before]

    def aim_note(self, editor: str) -> str | None:
        """A note when none of the audit's requirements is one `editor` aims at: it is checked afterwards, not
        pursued (magnitude pruning asked for `features_used <= 4` prunes by its own sparsity setting)."""
        from ..editors import EDITORS

        targets = set(getattr(EDITORS.get(editor), "targets", ()) or ())
        asked = sorted({r.metric for r in self.requirements})
        if not targets or not asked or targets & set(asked):
            return None
        note = (f"{editor} aims at {', '.join(sorted(targets))}, not at {', '.join(asked)}: the requirement is "
                "checked after the edit, not pursued by it")
        others = [c.name for c in self.editors() if set(c.targets) & set(asked)]
        return note + (f"; editors that aim at it here: {', '.join(others)}" if others else "")

    def check_editor(self, editor: str, settings: dict | None = None):
        """The configured editor, or an AuditorError saying why it cannot edit this model on this data."""
        from ..editors import EDITORS, get_editor

        if editor not in EDITORS:
            raise AuditorError(f"unknown editor {editor!r}; available: {', '.join(sorted(EDITORS))}")
        settings = dict(settings or {})
        if "layer" in settings and not settings["layer"]:
            settings["layer"] = None
        ed = get_editor(editor, **settings)
        reason = ed.supports(self.current, self.data)
        if reason:
            raise AuditorError(f"editor {editor!r} cannot edit this model on {self.data.name!r}: "
                               f"{self.way_forward(type(ed), reason)}")
        return ed

    def run_edit(self, editor: str, settings: dict | None = None, *, device=None,
                 callback: Callback | None = None) -> EditRecord:
        """Edit the current model with a registered editor; the new model becomes current. Logged."""
        ed = self.check_editor(editor, settings)
        before = self.current.sha256
        seed_everything(self.seed)
        result = ed.edit(self.current, self.data, self.requirements, device=device, callback=callback,
                         fixes=self.fixes)
        previous, self.current = self.current, result.bundle
        try:
            ev = self.evaluate()
        except BaseException:
            self.current = previous  # an edit that cannot be evaluated is not applied
            raise
        record = EditRecord(result, before, self.current.sha256, [r.expr for r in self.requirements],
                            dict(ev.metrics), ev.passed, type(ed).description or None, self.fix_record())
        self.edits.append(record)
        if self.log is not None:
            d = result.to_dict()
            results = {k: d[k] for k in ("editor", "hyperparameters", "layers", "changes", "seconds", "device")}
            results.update(original_sha256=self.pristine_sha256, sha_before=before, edited_sha256=record.sha_after)
            self._append("edit", model_sha256=record.sha_after, passed=ev.passed, results=results)
            self._log_evaluation("current", "after")
        return record

    def revert(self, index: int) -> str:
        """Undo edit `index` and every later one (they were made on top of it); bit-exact through the
        edit's weight delta. Returns the hash of the model now current. Logged."""
        if not 0 <= index < len(self.edits):
            raise AuditorError(f"there is no edit number {index + 1}; edits made: {len(self.edits)}")
        record = self.edits[index]
        restored = record.result.reverted()
        if restored.sha256 != record.sha_before:
            raise AuditorError("reverting did not restore the weights exactly; the edit history is inconsistent")
        undone = [r.editor for r in self.edits[index:]]
        self.current = restored
        del self.edits[index:]
        self._append("revert", model_sha256=restored.sha256, passed=self.evaluate().passed,
                     results={"undone": undone, "restored_sha256": restored.sha256})
        return restored.sha256

    def weight_change(self):
        """`WeightDelta` between the model as loaded and the current one (all edits together)."""
        from ..editors import WeightDelta

        return WeightDelta.between(self.pristine.model, self.current.model)

    # -- provenance and saving ----------------------------------------------------------------
    def provenance(self) -> dict:
        """What was done to the current model (`auditor.audit.provenance.provenance`)."""
        return provenance(self)

    def save(self, path: str | Path) -> Path:
        """Write the current model (`.safetensors` or `.onnx`) with its provenance in the metadata."""
        meta = {PROVENANCE_KEY: json.dumps(self.provenance(), sort_keys=True, default=str)}
        return save_model(self.current, path, extra_metadata=meta)

    @property
    def download_suffix(self) -> str:
        """`.safetensors` when that file loads again, else the graph's own format: `.pt2` for a torch.export
        program, `.onnx` for an ONNX graph (neither of which a registered architecture can rebuild)."""
        from ..models.files import check_saveable

        try:
            check_saveable(self.current, "model.safetensors")
            return ".safetensors"
        except AuditorError:
            return ".pt2" if self.current.spec.arch.get("name") == "pt2" else ".onnx"

    def model_bytes(self) -> bytes:
        """The current model as a file that loads again (`download_suffix`), with its provenance."""
        with tempfile.TemporaryDirectory() as tmp:
            return self.save(Path(tmp) / f"model{self.download_suffix}").read_bytes()

    @property
    def edited_filename(self) -> str:
        stem = Path(self.current.source).stem if self.current.source else self.model_label
        return f"{stem}_edited{self.download_suffix}" if self.edited else f"{stem}{self.download_suffix}"

    # -- trade-off against baselines -----------------------------------------------------
    def baseline_choices(self) -> list[str]:
        """What the trade-off can run besides this audit's edit: registered editors that target the
        audited requirement and can edit this model (not the one used), then, for a fairness
        requirement on tabular data, fairlearn's mitigations that are not weight edits."""
        from .tradeoff import FAIRNESS, alternative_methods, baselines_for, tradeoff_metric

        target = tradeoff_metric(self.requirements)
        if target is None:
            return []
        used = {rec.editor for rec in self.edits[-1:]}
        names = baselines_for(self.pristine, self.data, target.key, exclude=sorted(used))
        if target.metric in FAIRNESS and self.data.kind == "tabular":
            names += [a for a in alternative_methods() if a not in names]
        return names

    def unavailable_alternatives(self) -> dict[str, str]:
        """The trade-off's choices that cannot run for this model, each with why (not offered by default)."""
        from ..editors.baselines.fairlearn_mitigations import alternative_reason

        out = {}
        for name in self.baseline_choices():
            reason = alternative_reason(name, self.pristine)
            if reason:
                out[name] = reason
        return out

    @property
    def edit_label(self) -> str | None:
        """The trade-off row of this audit's edit (starred): the editor, or the editors in order when several
        edits were applied one after another (that row is their combined result, not the last editor's alone)."""
        if not self.edits:
            return None
        return " → ".join(rec.editor for rec in self.edits) if len(self.edits) > 1 else self.edits[-1].editor

    @property
    def samples(self) -> int | None:
        """The clean samples the last edit used (baselines get the same number)."""
        return self.edits[-1].result.hyperparameters.get("samples") if self.edits else None

    def run_tradeoff(self, baselines: list[str], *, device=None, callback: Callback | None = None,
                     alternatives=()):
        """This audit's edit (the current model) and `baselines` (editors, or fairlearn alternatives),
        each run from the model as loaded with the session's seed and the edit's number of clean
        samples, evaluated on the session's split (`auditor.audit.tradeoff.compare`). `alternatives`:
        results of other mitigations already run. An alternative that cannot run here is a row with its
        error."""
        from .tradeoff import FailedAlternative, alternative_methods, compare, run_alternative, tradeoff_metric

        alts = alternative_methods()
        methods, results, evaluations = [], {}, {"original": self.evaluate("pristine")}
        if self.edits:
            methods.append((self.edit_label, self.edits[-1].editor, {}))
            results[self.edit_label] = self.edits[-1].result  # its bundle is the current model
            evaluations[self.edit_label] = self.evaluate()
        methods += [b for b in baselines if b not in alts]
        target = tradeoff_metric(self.requirements)
        alternatives = list(alternatives)
        for name in (b for b in baselines if b in alts):
            if callback:
                callback(0.0, f"{name} (fairlearn)")
            try:
                alternatives.append(run_alternative(name, self.pristine, self.data, target, split=self.split,
                                                    seed=self.seed))
            except AuditorError as exc:  # asked for but cannot run here: a row with the reason
                from ..editors.baselines.fairlearn_mitigations import ALTERNATIVE_KINDS

                alternatives.append(FailedAlternative(name, str(exc).splitlines()[0][:200],
                                                      kind=ALTERNATIVE_KINDS.get(name, "post-processing")))
        self.tradeoff = compare(self.pristine, self.data, self.requirements, methods, results=results,
                                split=self.split, samples=self.samples, seed=self.seed, device=device,
                                callback=callback, alternatives=alternatives, fixes=self.fixes,
                                evaluations=evaluations)
        self.tradeoff.edit = self.edit_label
        if len(self.edits) > 1:  # the row is every edit's result: all their layers and time
            rows = self.tradeoff.rows
            for idx in rows.index[rows["method"] == self.edit_label]:
                rows.at[idx, "layers"] = sorted({n for rec in self.edits for n in rec.result.layers})
                rows.at[idx, "seconds"] = float(sum(rec.result.seconds for rec in self.edits))
        self.tradeoff_key = self.state_key()
        self.tradeoff_baselines = list(baselines)
        return self.tradeoff

    @property
    def tradeoff_stale(self) -> bool:
        return self.tradeoff is not None and self.tradeoff_key != self.state_key()

    def state_key(self) -> tuple:
        """Changes whenever the current model or the requirements change (for caches of derived views)."""
        return (self.current.sha256, tuple(r.expr for r in self.requirements), tuple(self.fix_specs),
                self._fixes_sha)

    # -- attributions before vs after -------------------------------------------------------
    def attributions_before_after(self, rows: int = 500, n_steps: int = 32) -> dict:
        """The same attribution on the model as loaded and the current one (each on a private copy):
        images with a trigger/cue: per-pixel maps of one test pair; tabular: per raw feature."""
        key = (self.current.sha256, rows, n_steps)
        if self._attr_key == key:
            return self._attr
        from .. import localize as loc

        before, after = self.pristine.copy().model, self.current.copy().model
        data = self.data
        if data.kind == "image" and (data.stamp is not None or data.test.corrupted is not None):
            clean, corrupted, labels = data.pairs(1, seed=self.seed, split="test")
            out = {"kind": "pixels", "clean": clean, "corrupted": corrupted, "labels": labels,
                   "before": loc.pixel_attributions(before, clean, corrupted, n_steps=n_steps),
                   "after": loc.pixel_attributions(after, clean, corrupted, n_steps=n_steps)}
        elif data.kind == "tabular":
            sp = data.split(self.split)
            X = sp.X[sample_rows(len(sp), rows, self.seed)]
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
            if present.CATEGORIES.get(r.metric) != "utility floor":
                return r.key
        return None

    # -- report -----------------------------------------------------------------------------
    def command(self) -> str:
        """The `auditor audit` command line that re-runs this audit (`auditor.audit.provenance.command`)."""
        return self.fixed_command or reproduce_command(self)

    def report_localization(self) -> dict | None:
        """The Localize step's results in the report's shape."""
        if self.localization is not None:
            return self.localization.to_report(self.data.class_names, self.pristine_sha256)
        if self.localization_note:
            return not_available(self.localization_note)
        return None

    def report_tradeoff(self, *, rerun: bool = True, device=None, callback: Callback | None = None):
        """The trade-off the report will carry, and a note when there is none. A trade-off run for an
        earlier model or other requirements is re-run (same baselines, same seed) when `rerun`; if it
        cannot be, the note says exactly why it is absent. Never silently dropped."""
        if self.tradeoff is None:
            return None, ("no trade-off was run: no edit and no baseline for these requirements"
                          if not self.edits else "no trade-off was run (Compare page, or auditor audit --baselines)")
        if not self.tradeoff_stale:
            return self.tradeoff, None
        why = "the model or the requirements changed since the trade-off ran"
        if not rerun:
            return None, f"{why}; it was not re-run for this report"
        from .tradeoff import tradeoff_metric

        if tradeoff_metric(self.requirements) is None:
            return None, f"{why}, and no requirement besides accuracy is left to plot against accuracy"
        try:
            self.run_tradeoff([b for b in self.tradeoff_baselines if b != self.edit_label], device=device,
                              callback=callback)
        except AuditorError as exc:
            return None, f"{why}; re-running it with the same baselines failed: {exc}"
        return self.tradeoff, None

    def changes(self) -> dict:
        """Paired-bootstrap changes (after - before, 95 % interval) of every row metric; empty before an edit."""
        if not self.edits:
            return {}
        from ..requirements.uncertainty import paired_differences

        before, after = self.evaluate("pristine"), self.evaluate()
        return paired_differences(before.outcomes, after.outcomes, before.metrics, after.metrics)

    def build_report(self, *, auditor: str | None = None, notes: str | None = None, date: str | None = None,
                     edited_path: str | None = None, signoff: dict | None = None, rerun_tradeoff: bool = True,
                     device=None, callback: Callback | None = None):
        """The compliance report (`auditor.report.Report`) of this audit as it stands: verdicts with
        intervals before and after every edit, side effects, localization, the edits, the trade-off
        (re-run when stale, see `report_tradeoff`; otherwise the report says why it is absent)."""
        from ..report import build_report

        if auditor is not None:
            self.auditor_name = auditor
        if notes is not None:
            self.notes = notes
        tradeoff, self.tradeoff_note = self.report_tradeoff(rerun=rerun_tradeoff, device=device, callback=callback)
        sign = {"auditor": self.auditor_name or None, "notes": self.notes or None, "date": date, **(signoff or {})}
        report = build_report(
            bundle=self.pristine, data=self.data, before=self.evaluate("pristine"),
            after=self.evaluate() if self.edits else None, edits=[rec.to_dict() for rec in self.edits],
            edited=self.current if self.edits else None, localization=self.report_localization(),
            tradeoff=tradeoff, model_path=self.model_path, edited_path=edited_path, device=self.device,
            seed=self.seed, command=self.command(), signoff=sign, side_effects=self.side_effects(),
            forbid_side_effects=self.forbid_side_effects, changes=self.changes(), tradeoff_note=self.tradeoff_note,
            command_note=None if self.fixed_command else chain_note(self))
        if self.log is not None:  # the log's head, anchored in the report: a later rewrite of the log shows
            report.audit_log = {**self.log.anchor(), "run": self.run_id}
        return report

    def report_contents(self) -> dict:
        """What an export made now would contain (the Report page shows it before building):
        sections present or absent, and why; the trade-off's state; side effects and warnings."""
        if self.tradeoff is None:
            trade = "absent: " + self.report_tradeoff(rerun=False)[1]
        elif self.tradeoff_stale:
            trade = ("stale: the model or the requirements changed since it ran; it is re-run with the same "
                     f"baselines ({', '.join(self.tradeoff_baselines) or 'none'}) when the report is built")
        else:
            trade = f"included ({len(self.tradeoff.rows)} methods)"
        loc = ("included" if self.localization is not None else
               f"absent: {self.localization_note}" if self.localization_note else "absent: localization was not run")
        before = self.evaluate("pristine")
        return {"verdict": self.verdict()["status"], "requirements": len(self.requirements),
                "edits": len(self.edits), "localization": loc, "tradeoff": trade,
                "side_effects": len(self.side_effects()),
                "warnings": warnings_of(before, self.evaluate() if self.edits else None),
                "small_groups": sum(len(g) for g in getattr(before, "small_groups", {}).values()),
                "verdict_mode": self.verdict_mode, "min_group": self.min_group}

    def log_report(self, report, paths=(), *, downloaded: bool = False) -> int | None:
        """Record a report written to `paths` (or, `downloaded`, handed to a browser under those names)."""
        where = [f"downloaded as {p}" for p in paths] if downloaded else [str(Path(p).resolve()) for p in paths]
        return self._append("report", model_path=self.model_path, model_sha256=self.pristine_sha256,
                            passed=report.passed,
                            results={"verdict": report.verdict, "requirements": report.requirements,
                                     "edited_sha256": report.model["sha256_after"]}, reports=where)

    # -- summary ----------------------------------------------------------------------------
    def status(self) -> dict:
        """What a sidebar shows: model, data, device, requirements."""
        ev = self.evaluate()
        return {"model": self.model_label, "parameters": self.current.n_parameters,
                "sha256": self.current.sha256, "original_sha256": self.pristine_sha256, "edits": len(self.edits),
                "data": self.data_label, "rows": {s: len(self.data.split(s)) for s in SPLITS},
                "split": self.split, "audited_rows": len(self.data.split(self.split)),
                "stamp": present.stamp_label(self.data),
                "device": self.device,
                "side_effects": len(self.side_effects()), "verdict": self.verdict()["status"],
                "requirements": [dict(r.to_dict(), shown=present.format_value(r.metric, r.value),
                                      interval=present.format_interval(r.metric, r.low, r.high))
                                 for r in ev.requirements],
                "passed": ev.passed}
