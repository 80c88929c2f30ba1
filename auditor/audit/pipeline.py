"""One whole audit as a library call: an `AuditSession` driven end to end (evaluate, localize, edit,
re-evaluate, compare with baselines, report). `auditor audit` and CI pipelines call `run_audit`.

    >>> from auditor import load_model, load_data
    >>> from auditor.audit import run_audit
    >>> from auditor.report import write_html
    >>> bundle = load_model("sample_models/digits_cnn_trojan.safetensors")
    >>> out = run_audit(bundle, load_data("digits-trojan"), ["attack_success_rate <= 0.02"],
    ...                 editor="dynamic-rank-one")                       # doctest: +SKIP
    >>> out.passed, write_html(out.report, "r.html")                     # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..backend import Callback
from ..data.base import AuditData
from ..errors import AuditorError
from ..evaluate import DEFAULT_MIN_GROUP
from ..models.bundle import ModelBundle
from ..requirements import DEFAULT_VERDICT, parse_requirements
from .session import AuditSession
from .tradeoff import common_settings, resolve_baselines, tradeoff_metric, unavailable_baselines

# Fractions of the progress bar given to each stage
STAGES = {"evaluate": (0.0, 0.05), "localize": (0.05, 0.2), "edit": (0.2, 0.55), "after": (0.55, 0.6),
          "tradeoff": (0.6, 0.97)}


@dataclass
class AuditOutcome:
    """What an audit produced: the session (model, edits, provenance) and its report."""

    session: AuditSession
    report: object  # auditor.report.Report

    @property
    def passed(self) -> bool:
        return self.report.passed

    @property
    def before(self):
        return self.session.evaluate("pristine")

    @property
    def after(self):
        return self.session.evaluate() if self.session.edits else None

    @property
    def edit(self):
        return self.session.edits[-1].result if self.session.edits else None

    @property
    def edited(self) -> ModelBundle | None:
        return self.session.current if self.session.edits else None

    @property
    def tradeoff(self):
        return self.session.tradeoff


def _stage(callback: Callback, name: str) -> Callback:
    lo, hi = STAGES[name]
    return lambda f, msg: callback(lo + (hi - lo) * min(max(float(f), 0.0), 1.0), f"{name}: {msg}")


def run_audit(bundle: ModelBundle, data: AuditData, requirements, *, editor: str | None = None,
              settings: dict | None = None, samples: int | None = None, seed: int = 0, split: str | None = None,
              baselines: str | Sequence[str] | None = "auto", localize: bool = True, device=None,
              callback: Callback | None = None, model_path: str | None = None, edited_path: str | None = None,
              command: str | None = None, signoff: dict | None = None, fixes: Sequence[str] = (),
              alternatives: Sequence = (), log=None, user: str | None = None, verdict: str = DEFAULT_VERDICT,
              min_group: int = DEFAULT_MIN_GROUP, forbid_side_effects: bool = False,
              log_failure_ok: bool = False) -> AuditOutcome:
    """Evaluate `bundle` on `data` against `requirements`; optionally localize, edit with `editor`
    (its `settings`; `samples`/`seed` go to the editor and the baselines that have them), re-evaluate,
    run the `baselines` ("auto": with an editor, every registered editor that targets the requirement;
    "none"; or names) and `alternatives` (results of non-edit mitigations) for the trade-off chart,
    and build the `Report`. `verdict` (strict / point), `min_group` and `forbid_side_effects`: how
    numbers are judged (`auditor.requirements.uncertainty`). `fixes`: mistakes to fix (`ROW=LABEL` over
    `split`, or `(Fixes, names)` built from a table). `log`: an `AuditLog` that receives every step; with
    `log_failure_ok`, a log that cannot be written (locked, read-only, another key) stops the logging, not the
    audit (`session.log_error` says why; the caller must say it). Same seed, same numbers."""
    reqs = parse_requirements(requirements)
    if not reqs and not fixes:  # mistakes to fix are a requirement of their own (edit_success >= 1)
        raise AuditorError("an audit needs at least one requirement, e.g. --require 'accuracy >= 0.8', or mistakes "
                           "to fix")
    callback = callback or (lambda f, m: None)
    session = AuditSession(bundle, data, reqs, seed=seed, split=split, model_path=model_path, command=command,
                           user=(signoff or {}).get("auditor") or user or "", verdict=verdict,
                           min_group=min_group, forbid_side_effects=forbid_side_effects)
    if fixes:  # the fixes asked for are a requirement (edit_success >= 1) unless one on them is given
        if isinstance(fixes, tuple) and len(fixes) == 2 and not isinstance(fixes[0], str):
            session.set_fixes(list(fixes[1]), fixes=fixes[0])  # built from a table: (Fixes, their names)
        else:
            session.set_fixes(list(fixes))
        reqs = list(session.requirements)
    opts = {}
    if editor:
        opts = {**common_settings(editor, samples=samples, seed=seed), **(settings or {})}
        session.check_editor(editor, opts)  # fail before any work
    base_names, alt_names = resolve_baselines(baselines, bundle, data, reqs, editor)
    session.log = log  # from here on every step is recorded
    session.log_failure_ok = log_failure_ok
    callback(0.0, "evaluate: original model")
    session.evaluate("pristine")
    if log is not None:
        session.record_start()
    if localize:
        callback(STAGES["localize"][0], "localize: ranking layers")
        try:
            session.localize(samples=samples or 1)
        except AuditorError as exc:
            session.localization_note = f"localization was not possible: {exc}"
    if editor:
        session.run_edit(editor, opts, device=device, callback=_stage(callback, "edit"))
    target = tradeoff_metric(reqs)
    if baselines == "auto" and editor and target is not None:  # what auto left out, and why
        alternatives = [*(alternatives or ()), *unavailable_baselines(bundle, data, target.key, exclude=[editor])]
    if target is not None and (editor or base_names or alt_names or alternatives):
        callback(STAGES["tradeoff"][0], "tradeoff")
        session.run_tradeoff(base_names + alt_names, device=device, callback=_stage(callback, "tradeoff"),
                             alternatives=alternatives)
    callback(STAGES["tradeoff"][1], "report")
    report = session.build_report(edited_path=edited_path, signoff=signoff)
    callback(1.0, "done")
    return AuditOutcome(session, report)
