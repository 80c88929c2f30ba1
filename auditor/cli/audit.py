"""`auditor audit MODEL DATA --require EXPR ... [--editor NAME] --report r.html --pdf r.pdf --json r.json`.

Evaluates the model, localizes, optionally edits it and re-evaluates, runs the baselines for the
trade-off chart, writes the compliance report (HTML, PDF, JSON), the edited model, and an entry
in the audit log. Exit 0 when every requirement holds (after the edit when one ran), 1 when one
does not, 2 on bad input. Built for CI pipelines: a progress bar on stderr when it is a terminal,
the verdict on stdout.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..present import editor_notes, failure_words
from . import COMMANDS
from .common import (
    add_editor_setting_args,
    add_model_data_args,
    add_require_arg,
    fmt,
    fmt_interval,
    format_table,
    load_model_and_data,
    refuse_overwriting_inputs,
)
from .verdicts import add_verdict_args, change_words, check_verdict_args, print_side_effects, print_warnings


def register(sub) -> None:
    from ..editors import EDITORS

    p = sub.add_parser("audit", help=COMMANDS["audit"],
                       description="Audit MODEL on DATA against requirements: evaluate, localize, optionally edit "
                                   "(--editor) and re-evaluate, compare with baselines, write the report and the "
                                   "edited model, and log the audit. Exit 0 all requirements hold (after the edit "
                                   "when one ran), 1 some do not (or are inconclusive: see verdict.status in "
                                   "--json), 2 bad input, 3 an internal error (its trace is written to a file).")
    add_model_data_args(p)
    add_require_arg(p)
    add_verdict_args(p)
    p.add_argument("--editor", metavar="NAME", help=f"edit with this editor: {', '.join(sorted(EDITORS))}")
    p.add_argument("--samples", type=int, help="clean samples the editor and baselines may use (those that take them)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same numbers; default 0)")
    add_editor_setting_args(p)
    p.add_argument("--baselines", default="auto", metavar="auto|none|A,B",
                   help="methods for the trade-off chart: auto (with --editor: every editor that targets the "
                        "requirement, and fairlearn's ThresholdOptimizer for fairness), none, or a comma-separated "
                        "list of editor names (and threshold-optimizer, exponentiated-gradient)")
    p.add_argument("--no-localize", action="store_true", help="skip localization (attributions)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    p.add_argument("--report", metavar="PATH.html", help="write the HTML report (self-contained, opens offline)")
    p.add_argument("--pdf", metavar="PATH.pdf", help="write the PDF report (needs Chromium)")
    p.add_argument("--json", metavar="PATH.json", help="write the JSON report (validated against its schema)")
    p.add_argument("--out", metavar="PATH.safetensors",
                   help="write the edited model here (default with --editor: next to the report, *_edited.safetensors, "
                        "or *_edited-2 and on when that exists: an earlier edited model is never overwritten unasked)")
    p.add_argument("--auditor", metavar="NAME", help="the auditor's name, printed in the sign-off section")
    p.add_argument("--notes", help="notes for the sign-off section")
    p.add_argument("--signoff-date", metavar="YYYY-MM-DD", help="sign-off date (default: left blank to sign)")
    p.add_argument("--db", metavar="PATH", help="audit log database (default: $AUDITOR_DB or ~/.auditor/audit.db)")
    p.add_argument("--log-key", metavar="PATH", help="the audit log's key file (default: $AUDITOR_LOG_KEY or "
                                                      "~/.auditor/log.key)")
    p.add_argument("--no-log", action="store_true", help="do not write to the audit log")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def reproduce_command(args) -> str:
    """The `auditor audit ...` command line that repeats this audit (canonical order, explicit seed)."""
    from ..audit.provenance import verdict_flags

    parts = ["auditor", "audit", args.model, args.data]
    for flag in ("spec", "target", "positive", "protected", "categorical", "inputs", "split_column", "train_csv",
                 "val_csv", "arch_file", "arch_class"):
        value = getattr(args, flag, None)
        if value:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    if getattr(args, "trust_code", False):
        parts.append("--trust-code")
    if args.split != "test":
        parts += ["--split", args.split]
    for r in args.require:
        parts += ["--require", r]
    if args.editor:
        parts += ["--editor", args.editor]
    for flag in ("samples", "layer"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag}", str(getattr(args, flag))]
    for item in args.set:
        parts += ["--set", item]
    for item in args.fix:
        parts += ["--fix", item]
    if getattr(args, "fixes", None):
        parts += ["--fixes", args.fixes]
    parts += ["--seed", str(args.seed)]
    parts += verdict_flags(getattr(args, "verdict", "strict"), getattr(args, "min_group", 30),
                           getattr(args, "forbid_side_effects", False))
    if args.baselines != "auto":
        parts += ["--baselines", args.baselines]
    if args.no_localize:
        parts.append("--no-localize")
    if args.device not in (None, "", "auto"):
        parts += ["--device", args.device]
    for flag in ("report", "pdf", "json", "out"):
        if getattr(args, flag):
            parts += [f"--{flag}", str(getattr(args, flag))]
    return shlex.join(parts)


class _Progress:
    """tqdm bar on stderr (hidden when stderr is not a terminal or with --quiet)."""

    def __init__(self, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=1000, file=sys.stderr, disable=True if quiet else None, leave=False,
                        bar_format="{l_bar}{bar}| {elapsed}<{remaining}", desc="audit")
        self.at = 0

    def __call__(self, fraction: float, message: str) -> None:
        target = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        if target > self.at:
            self.bar.update(target - self.at)
            self.at = target
        self.bar.set_description_str(message[:48], refresh=True)

    def close(self) -> None:
        self.bar.close()


def _default_out(args, suffix: str = ".safetensors") -> Path:
    """Where the edited model goes without --out: `<report or model>_edited<suffix>`, or `_edited-2` and
    so on when that file exists (an earlier audit's edited model is never overwritten unasked)."""
    first = next((getattr(args, k) for k in ("report", "pdf", "json") if getattr(args, k)), None)
    base = Path(first) if first else Path(args.model)
    path, n = base.with_name(f"{base.stem}_edited{suffix}"), 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.stem}_edited-{n}{suffix}")
    return path


def _check_outputs(args) -> None:
    from ..errors import AuditorError
    from ..models.files import model_suffixes

    for flag, suffixes in (("report", (".html", ".htm")), ("pdf", (".pdf",)), ("json", (".json",)),
                           ("out", model_suffixes())):
        path = getattr(args, flag)
        if path and Path(path).suffix.lower() not in suffixes:
            raise AuditorError(f"--{flag} must end in {' or '.join(suffixes)}; got {path}")
    refuse_overwriting_inputs(args)
    if args.pdf:
        from ..report import find_chromium
        find_chromium()  # fail now, not after the audit


def run(args) -> int:
    from ..audit import run_audit
    from ..errors import AuditorError
    from ..report import write_html, write_json, write_pdf
    from ..requirements import parse_requirements
    from ..store import AuditLog
    from .edit import editor_class, refuse_fixes_for, settings_from_args

    reqs = parse_requirements(args.require)  # bad expressions fail before any loading
    if not reqs and not (args.fix or args.fixes):  # mistakes to fix are a requirement of their own
        raise AuditorError("give at least one --require, e.g. --require 'accuracy >= 0.8' (or mistakes to fix: "
                           "--fix ROW=LABEL, --fixes FILE.csv)")
    settings = {}
    if args.editor:
        cls = editor_class(args.editor)
        refuse_fixes_for(cls, args)
        settings = settings_from_args(cls, argparse_like(args, samples=None, seed=None))
    elif args.set or args.layer:
        raise AuditorError("--set and --layer are editor settings: give --editor NAME too")
    _check_outputs(args)
    check_verdict_args(args)
    log = None if args.no_log else AuditLog(args.db, key_path=args.log_key)
    if args.fix and args.fixes:
        raise AuditorError("give the mistakes to fix with --fix ROW=LABEL or with --fixes FILE.csv, not both")
    bundle, data = load_model_and_data(args)
    fixes = args.fix
    if args.fixes:
        from ..fixes import read_fixes_csv

        built, names = read_fixes_csv(args.fixes, data, data.resolve_split(args.split), seed=args.seed)
        fixes = (built, names)
        print(f"{len(names)} mistake(s) to fix from {args.fixes}")
    out_path = None
    if args.editor:  # without --out: write what you read (an .onnx stays .onnx, a .pt2 stays .pt2)
        own = Path(args.model).suffix.lower()
        out_path = Path(args.out) if args.out else _default_out(args, own if own in (".onnx", ".pt2") else
                                                                ".safetensors")
        from ..models.files import check_saveable

        check_saveable(bundle, out_path)  # a file that could not be loaded again: refuse before the edit
    command = reproduce_command(args)
    signoff = {"auditor": args.auditor, "notes": args.notes, "date": args.signoff_date}
    progress = _Progress(args.quiet)
    try:
        outcome = run_audit(bundle, data, reqs, editor=args.editor, settings=settings, samples=args.samples,
                            seed=args.seed, split=args.split, baselines=args.baselines,
                            localize=not args.no_localize, device=None if args.device == "auto" else args.device,
                            callback=lambda f, m: progress(0.9 * f, m), model_path=args.model,
                            edited_path=str(out_path) if out_path else None, command=command, signoff=signoff,
                            fixes=fixes, log=log, user=args.auditor, verdict=args.verdict,
                            min_group=args.min_group, forbid_side_effects=args.forbid_side_effects,
                            log_failure_ok=True)
        report = outcome.report
        # every output is attempted; those written are logged and named even when a later one fails
        steps = [("the edited model", 0.9, out_path, lambda p: outcome.session.save(p))] if outcome.edit else []
        steps += [(what, at, getattr(args, flag), write)
                  for what, at, flag, write in (("the JSON report", 0.9, "json", lambda p: write_json(report, p)),
                                                ("the HTML report", 0.91, "report", lambda p: write_html(report, p)),
                                                ("the PDF report", 0.93, "pdf", lambda p: write_pdf(report, p)))
                  if getattr(args, flag)]
        written, reports, failed = [], [], []
        for what, at, path, write in steps:
            progress(at, f"writing {what}")
            try:
                write(path)
            except Exception as exc:  # noqa: BLE001 (the others are still written, and this one named)
                failed.append((what, path, exc))
                continue
            written.append(str(path))
            if what.endswith("report"):
                reports.append(str(path))
        progress(1.0, "done")
    finally:
        progress.close()
    reports = [str(getattr(args, k)) for k in ("report", "pdf", "json") if str(getattr(args, k)) in reports]
    rid = outcome.session.log_report(report, reports)
    unlogged = outcome.session.log_error
    _print_summary(report, written, None if log is None or unlogged else (log.path, rid))
    if failed:
        return _failed_outputs(failed, written, None if log is None or unlogged else (log.path, rid))
    if unlogged:
        raise AuditorError(f"the audit completed ({report.verdict['status']}) and wrote "
                           f"{', '.join(written) or 'no file'}, but it was not logged: {unlogged}")
    return 0 if report.passed else 1


def _failed_outputs(failed, written, logged) -> int:
    """Raise (exit 2 for bad input, 3 otherwise) naming what was not written and what was."""
    from ..errors import AuditorError

    done = ", ".join(written) or "nothing else"
    if logged:
        done += f"; logged as entry {logged[1]} in {logged[0]}"
    what, path, exc = failed[0]
    more = f" (and {', '.join(w for w, _, _ in failed[1:])})" if len(failed) > 1 else ""
    message = f"{what} {path} was not written{more}: {exc}; the audit completed and wrote {done}"
    if all(isinstance(e, AuditorError) for _, _, e in failed):
        raise AuditorError(message)
    raise RuntimeError(message) from exc


def argparse_like(args, **overrides):
    """A copy of `args` with some attributes replaced (samples/seed go through run_audit instead)."""
    import argparse

    ns = argparse.Namespace(**vars(args))
    for k, v in overrides.items():
        setattr(ns, k, v)
    return ns


def _print_summary(report, written: list[str], logged) -> None:
    v = report.verdict
    print(f"{v['status']}: {v['summary']}")
    rows = []
    word = lambda r: (r.get("verdict") or ("pass" if r["passed"] else "fail")).upper()
    for q in report.requirements:
        b, a, key = q["before"], q["after"], q["metric"]
        row = [q["expr"], fmt(b["value"], key), fmt_interval(b, key), word(b)]
        if v["edited"]:
            row += [fmt(a["value"], key), fmt_interval(a, key), word(a)] if a else ["-", "", ""]
        rows.append(row)
    header = (["requirement", "before", "95% interval", "", "after", "95% interval", ""] if v["edited"]
              else ["requirement", "value", "95% interval", "verdict"])
    print(format_table(rows, header))
    print_warnings(report.warnings)
    if v["edited"]:
        print_side_effects(report.side_effects, v.get("forbid_side_effects", False))
    if report.uncertainty.get("tradeoff") not in (None, "included"):
        print(f"\ntrade-off: {report.uncertainty['tradeoff']}")
    for e in report.edits:
        print(f"\nedit: {e['editor']} changed {', '.join(e['layers']) or 'no layer'} "
              f"({e['parameters_changed']} parameters, rank <= {e['max_rank']}) in {e['seconds']:.2f} s "
              f"on {e['device']}")
        for ch in e.get("changes") or []:
            print(f"  {ch['parameter']}: {change_words(ch)}")
        for kind, message in editor_notes(e.get("log")):
            print(f"  {kind}: {message}")
    t = report.tradeoff
    if t:
        rows = [[r["method"], r["kind"], fmt(r["value"], t["metric"]),
                 fmt(r["accuracy"], "accuracy"),
                 f"{r['seconds']:.2f}" if r["seconds"] is not None else "-",
                 "yes" if r["passed"] else (failure_words(r["error"])[:72] if r["error"]
                                            else "n/a" if r["passed"] is None else "no")] for r in t["rows"]]
        where = "all rows" if t["split"] == "all" else f"the {t['split']} split"
        print(f"\ntrade-off on {where}")
        print(format_table(rows, ["method", "kind", t["metric"], "accuracy", "seconds", "all met"]))
    if written:
        print("\nwrote " + ", ".join(written))
    if logged:
        print(f"logged as entry {logged[1]} in {logged[0]}")
