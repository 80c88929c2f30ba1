"""Which evidence in a report serves which documentation point a regulator or a risk framework asks
about: EU AI Act Articles 9-15 (the obligations for high-risk systems) and the four functions of
the NIST AI Risk Management Framework (Govern, Map, Measure, Manage).

`regulatory_evidence(report_dict)` returns plain rows for the report's template: for each point,
what it asks in brief and the requirement, test, hash or log record of *this* report that documents
it, each with the report section it is in. It maps evidence; it gives no legal opinion and does not
say that any system complies with either text.
"""
from __future__ import annotations

from .. import present

DISCLAIMER = ("This section points to the evidence in this report that can support the documentation these "
              "provisions ask for. It is not legal advice and not a conformity assessment: it does not say that "
              "the model, or an AI system built on it, complies with the EU AI Act or follows the NIST AI RMF. "
              "Whether it does depends on the system's intended purpose, its risk class, and far more than one "
              "model audit.")


def _short(sha: str | None) -> str:
    return f"{sha[:16]}…" if sha else "–"


def _verdict_word(res: dict | None) -> str:
    if not res:
        return ""
    v = str(res.get("verdict") or "").lower()
    if v not in ("pass", "fail", "inconclusive"):
        v = "pass" if res.get("passed") else "fail"
    return {"pass": "met", "fail": "not met", "inconclusive": "inconclusive"}[v]


ROBUSTNESS = ("accuracy", "balanced_accuracy", "attack_success_rate", "triggered_accuracy", "cue_gap", "cue_accuracy",
              "cue_class_accuracy")


def _requirements(d: dict, metrics: tuple[str, ...] | None = None) -> list[str]:
    """Each requirement in words with its final value and verdict (only those on `metrics` when given)."""
    out = []
    for q in d.get("requirements") or []:
        if metrics is not None and q.get("metric") not in metrics:
            continue
        final = q.get("after") or q.get("before") or {}
        value = present.format_value(q["metric"], final.get("value"))
        out.append(f"{present.requirement_sentence(q['metric'], q['op'], q['threshold'])} "
                   f"(`{q['expr']}`): {value}, {_verdict_word(final)}")
    return out


def headline_change(changes) -> float | None:
    """The headline size of an edit: ‖ΔW‖/‖W‖ of its largest changed weight tensor (biases only when
    no weight changed)."""
    changes = [c for c in changes or [] if c.get("relative_norm") is not None]
    weights = [c for c in changes if str(c.get("parameter", "")).endswith("weight")] or changes
    return max((c["relative_norm"] for c in weights), default=None)


def _item(text: str, section: str, missing: bool = False) -> dict:
    return {"text": text, "section": section, "missing": missing}


def regulatory_evidence(d: dict) -> dict:
    """{"disclaimer", "rows": [{framework, point, title, asks, evidence: [{text, section, missing}]}]}."""
    model, data, env = d.get("model") or {}, d.get("data") or {}, d.get("environment") or {}
    edits, sign = d.get("edits") or [], d.get("signoff") or {}
    reqs = _requirements(d)
    req_text = "; ".join(reqs) if reqs else "no requirement stated"
    test = (f"each requirement tested on the {data.get('split', 'test')} split of {data.get('name', '?')} "
            f"({int(data.get('rows') or 0):,} rows), seed {env.get('seed')}")
    hashes = (f"model weights sha256 {_short(model.get('sha256_before'))}"
              + (f" → {_short(model.get('sha256_after'))} after the edit" if model.get("sha256_after") else "")
              + f"; data sha256 {_short(data.get('sha256'))}")
    has_intervals = bool(d.get("intervals")) or any(
        (q.get(k) or {}).get("low") is not None for q in d.get("requirements") or [] for k in ("before", "after"))
    side = d.get("side_effects")
    log = d.get("audit_log") or {}
    log_ref = (f"audit-log run {log['run']}" + (f" in {log['log']}" if log.get("log") else "")
               + (f", anchor {log['anchor'][:20]}… ({log['count']} entries; check it with auditor log verify "
                  "--anchor)" if log.get("anchor") else "")) if log.get("run") else None
    edit_text = "; ".join(
        f"{e['editor']} on {', '.join(e.get('layers') or []) or 'no layer'}"
        + (f", {present.change_size_text(headline_change(e['changes']))}"
           if e.get("changes") else "") for e in edits) or "no edit applied"
    signed = sign.get("auditor")
    signoff_item = (_item(f"signed off by {signed}" + (f" on {sign['date']}" if sign.get("date") else "")
                          + (" with notes" if sign.get("notes") else ""), "signoff") if signed
                    else _item("no auditor named yet: the sign-off section is blank", "signoff", missing=True))
    loc = d.get("localization") or {}
    loc_item = (_item(f"localization: {loc.get('layer_method') or 'attributions'}", "localization")
                if loc.get("available") else _item("localization was not run", "localization", missing=True))
    interval_item = (_item("95 % intervals and the group sizes they rest on", "metrics") if has_intervals
                     else _item("no confidence intervals in this report", "metrics", missing=True))
    if side is None:
        side_item = None
    elif side:
        side_item = _item(f"{len(side)} side effect(s) of the edit listed", "verdict")
    else:
        side_item = _item("no metric outside the requirements got worse beyond its noise", "verdict")
    log_item = (_item(log_ref, "environment") if log_ref else
                _item("the audit log (SQLite, append-only) records each step of an audit run with the model and "
                      "data hashes above; this report carries no log reference, so match it by those hashes",
                      "environment", missing=not log_ref))
    trade = d.get("tradeoff")
    trade_item = (_item(f"alternatives compared: {', '.join(r['method'] for r in trade.get('rows') or [])}",
                        "tradeoff") if trade else _item("no comparison with alternative methods", "tradeoff",
                                                        missing=True))
    groups = list((d.get("metrics") or {}).get("before", {}).get("groups") or {})
    group_item = (_item(f"metrics per group of {', '.join(groups)}", "metrics") if groups
                  else _item("no protected attribute in the data: no per-group results", "metrics", missing=True))
    versions = env.get("versions") or {}
    env_item = _item(f"tool and library versions (auditor {versions.get('auditor') or '?'}, torch "
                     f"{versions.get('torch') or '?'}), device {env.get('device')}, seed {env.get('seed')}",
                     "environment")
    repro = d.get("reproduce") or {}
    repro_item = (_item("the command that reproduces this audit", "environment") if repro.get("command")
                  else _item("no reproduce command (run from the library)", "environment", missing=True))

    def row(framework, point, title, asks, items):
        return {"framework": framework, "point": point, "title": title, "asks": asks,
                "evidence": [i for i in items if i]}

    rows = [
        row("EU AI Act", "Art. 9", "Risk management system",
            "identify and evaluate known risks, adopt measures, and test against metrics and thresholds "
            "defined in advance",
            [_item(f"risks stated as requirements with thresholds: {req_text}", "requirements"),
             _item(test, "requirements"), _item(f"measure taken: {edit_text}", "edits"), side_item, trade_item]),
        row("EU AI Act", "Art. 10", "Data and data governance",
            "data sets that are relevant and examined for possible biases, with their provenance documented",
            [_item(f"data {data.get('name')} ({data.get('kind')}), source {data.get('source') or 'built in'}, "
                   f"sha256 {_short(data.get('sha256'))}", "identity"),
             _item("splits: " + ", ".join(f"{k} {int(n):,}" for k, n in (data.get("splits") or {}).items()),
                   "identity"), group_item]),
        row("EU AI Act", "Art. 11", "Technical documentation",
            "a description of the system, its development and its testing (Annex IV)",
            [_item(f"model {model.get('name')}: {model.get('format')}, "
                   f"{int(model.get('parameters') or 0):,} parameters, architecture and classes", "identity"),
             _item("editor settings, layers changed and the size of every change", "edits"), env_item,
             _item(f"this report as JSON, validated against schema {d.get('schema_version', '')}", "environment")]),
        row("EU AI Act", "Art. 12", "Record-keeping",
            "automatic recording of events (logs) over the system's lifetime, so that what happened can be traced",
            [log_item, _item(hashes, "identity"),
             _item(f"report generated {(d.get('generated') or {}).get('time') or '–'}", "signoff")]),
        row("EU AI Act", "Art. 13", "Transparency and information to deployers",
            "instructions that state the system's accuracy, known limits and the circumstances that affect them",
            [_item("each requirement in words with the meaning of its metric", "requirements"), interval_item,
             _item("before/after metrics for every metric the audit measured", "metrics")]),
        row("EU AI Act", "Art. 14", "Human oversight",
            "people able to understand, monitor and override the system, and to decide not to use it",
            [signoff_item, _item("the edit is stored as a weight delta: it can be reviewed and reverted; "
                                 "the original model is unchanged (its sha256 above)", "edits"), loc_item]),
        row("EU AI Act", "Art. 15", "Accuracy, robustness and cybersecurity",
            "declared accuracy levels, resilience to errors and to attempts to alter behaviour (e.g. backdoors)",
            [_item(_accuracy_text(d), "metrics"),
             _item("accuracy and robustness requirements: "
                   + ("; ".join(_requirements(d, ROBUSTNESS)) or "none among this audit's requirements"),
                   "requirements"),
             _item(f"model file format {model.get('format')} loaded without running code; weights identified "
                   f"by sha256", "identity")]),
        row("NIST AI RMF", "Govern", "Govern",
            "accountability: roles, policies and records for managing AI risk",
            [signoff_item, log_item, repro_item]),
        row("NIST AI RMF", "Map", "Map",
            "context: what the system is for, what it is tested on, which risks are in scope",
            [_item(f"task {model.get('task') or '?'}, classes {', '.join(model.get('classes') or [])}", "identity"),
             _item(f"data {data.get('name')}, protected attributes: "
                   f"{', '.join(data.get('protected') or []) or 'none'}", "identity"),
             _item(f"risks in scope: {req_text}", "requirements")]),
        row("NIST AI RMF", "Measure", "Measure",
            "risks measured with documented tests, metrics and their uncertainty",
            [_item(test, "requirements"), interval_item, loc_item, trade_item]),
        row("NIST AI RMF", "Manage", "Manage",
            "risks treated and the treatment's result and residual effects tracked",
            [_item(f"treatment: {edit_text}", "edits"), _item(d.get("verdict", {}).get("summary", ""), "verdict"),
             side_item, _item(hashes, "identity")]),
    ]
    return {"disclaimer": DISCLAIMER, "rows": rows}


def _accuracy_text(d: dict) -> str:
    m = d.get("metrics") or {}
    before = (m.get("before") or {}).get("overall", {}).get("accuracy")
    after = ((m.get("after") or {}).get("overall") or {}).get("accuracy")
    if before is None:
        return "accuracy not measured"
    text = f"accuracy {present.format_value('accuracy', before)}"
    if after is not None:
        text += f" before, {present.format_value('accuracy', after)} after the edit"
    return text
