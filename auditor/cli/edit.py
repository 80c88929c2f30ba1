"""`auditor edit MODEL DATA --editor NAME --require EXPR ... --out edited.safetensors`.

Works for every registered editor: settings come from `--samples`, `--seed`, `--layer` (when the
editor has them) and `--set KEY=VALUE`; `--fix ROW=LABEL` (repeatable) or `--fixes FILE.csv` (a
batch: `row` and `label` columns, or for tabular data the input columns and `label`) builds the
fixes an editor of mistakes needs. The edited file carries the edit's provenance in its metadata
(key `auditor.edit`, the same provenance the dashboard writes); editing an edited file again
appends the new edit to the edits recorded in it, so a file edited N times lists N edits in order.
Exit 0 when every requirement holds after the edit, 1 when one does not, 2 on bad input.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import typing

from ..present import editor_notes
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
    write_json,
)
from .log import add_log_args, command_line, open_log
from .verdicts import (
    add_verdict_args,
    change_words,
    check_verdict_args,
    print_side_effects,
    print_verdict_notes,
    print_warnings,
    verdict_word,
)


def register(sub) -> None:
    from ..editors import EDITORS

    p = sub.add_parser("edit", help=COMMANDS["edit"],
                       description="Edit a copy of MODEL with a registered editor, print the metrics and "
                                   "verdicts before and after, and write the edited model (provenance in its "
                                   "metadata). Exit 0 all requirements hold after the edit, 1 some do not, "
                                   "2 bad input, 3 an internal error (its trace is written to a file).")
    add_model_data_args(p)
    add_require_arg(p)
    add_verdict_args(p)
    p.add_argument("--editor", required=True, metavar="NAME",
                   help=f"editor: {', '.join(sorted(EDITORS))}")
    p.add_argument("--samples", type=int, help="clean samples the editor may use (editors that take samples)")
    p.add_argument("--seed", type=int, help="which samples / random seed (editors that take one)")
    add_editor_setting_args(p)
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    p.add_argument("--out", required=True, metavar="PATH.safetensors", help="where to write the edited model")
    p.add_argument("--json", metavar="PATH", help="also write before/after and the edit as JSON")
    add_log_args(p)
    p.set_defaults(func=run)


def _convert(field: dataclasses.Field, text: str, hints: dict):
    from ..errors import AuditorError

    kind = hints.get(field.name, field.type)
    name = kind.__name__ if isinstance(kind, type) else str(kind)
    if text.lower() in ("none", "null") and "None" in name:
        return None
    try:
        if kind is bool or name == "bool":
            if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text.lower() in ("1", "true", "yes")
        if kind is int or name.startswith("int"):
            return int(text)
        if kind is float or name.startswith("float"):
            return float(text)
        if name.startswith(("list", "tuple", "dict")):
            return json.loads(text)
    except (ValueError, json.JSONDecodeError):
        raise AuditorError(f"setting {field.name}={text!r} is not a valid {name}") from None
    return text


def settings_from_args(cls, args) -> dict:
    """Keyword settings for `cls` from --samples/--seed/--layer and --set KEY=VALUE."""
    from ..errors import AuditorError

    fields = {f.name: f for f in dataclasses.fields(cls.Hyper)} if cls.Hyper else {}
    hints = typing.get_type_hints(cls.Hyper) if cls.Hyper else {}
    out = {}
    for name in ("samples", "seed", "layer"):
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in fields:
            raise AuditorError(f"editor {cls.name!r} has no setting {name!r}; its settings: "
                               f"{', '.join(sorted(fields)) or '(none)'}")
        out[name] = value
    for item in args.set:
        if "=" not in item:
            raise AuditorError(f"bad --set {item!r}: write KEY=VALUE")
        key, text = (s.strip() for s in item.split("=", 1))
        if key not in fields:
            raise AuditorError(f"editor {cls.name!r} has no setting {key!r}; its settings: "
                               f"{', '.join(sorted(fields)) or '(none)'}")
        out[key] = _convert(fields[key], text, hints)
    return out


def _progress(fraction: float, message: str) -> None:
    if sys.stderr.isatty():
        print(f"\r[{'#' * int(20 * fraction):<20}] {message[:50]:<50}", end="" if fraction < 1 else "\n",
              file=sys.stderr, flush=True)



def print_comparison(before, after, out=None) -> None:
    out = out or sys.stdout
    names = [k for k in after.metrics if k in before.metrics] + [k for k in after.metrics if k not in before.metrics]
    rows = [[k, fmt(before.metrics[k], k) if k in before.metrics else "-", fmt(after.metrics[k], k)] for k in names]
    print(format_table(rows, ["metric", "before", "after"]), file=out)
    if after.requirements:
        print("\nrequirements", file=out)
        ci = lambda r: fmt_interval({"low": r.low, "high": r.high}, r.metric)
        rows = [[a.expr, fmt(b.value, b.metric), ci(b), verdict_word(b), fmt(a.value, a.metric), ci(a), verdict_word(a)]
                for b, a in zip(before.requirements, after.requirements)]
        print(format_table(rows, ["requirement", "before", "95% interval", "", "after", "95% interval", ""]),
              file=out)
        for b, a in zip(before.requirements, after.requirements):
            if a.metric == "features_used" and a.note:  # which features the edit stopped reading
                print(f"  {a.expr}: before, {b.note or '-'}; after, {a.note}", file=out)
        print_verdict_notes(after, out)


def run(args) -> int:
    from ..audit import AuditSession
    from ..errors import AuditorError
    from ..evaluate import warnings_of
    from ..models.files import check_saveable, model_suffixes
    from ..present import split_words
    from ..requirements import parse_requirements

    reqs = parse_requirements(args.require)  # bad expressions fail before any loading
    if not str(args.out).lower().endswith(model_suffixes()):
        raise AuditorError(f"--out must end in {' or '.join(model_suffixes())}; got {args.out}")
    refuse_overwriting_inputs(args)
    cls = editor_class(args.editor)
    if args.fix and args.fixes:
        raise AuditorError("give the mistakes to fix with --fix ROW=LABEL or with --fixes FILE.csv, not both")
    refuse_fixes_for(cls, args)
    settings = settings_from_args(cls, args)
    bundle, data = load_model_and_data(args)
    check_saveable(bundle, args.out)  # a file that could not be loaded again: refuse before the edit
    check_verdict_args(args)
    if not reqs and not (args.fix or args.fixes):  # judged on what the editor aims for, and said so
        from ..editors.rank_one import implicit_requirements

        reqs = [r for r in implicit_requirements(data) if r.metric in getattr(cls, "targets", ())]
        if reqs:
            print(f"no --require given: judged on {', '.join(r.expr for r in reqs)} (what {args.editor} aims for "
                  "on this data)")
    session = AuditSession(bundle, data, reqs, split=args.split, model_path=args.model, command=command_line(),
                           verdict=args.verdict, min_group=args.min_group,
                           forbid_side_effects=args.forbid_side_effects)
    # the fixes asked for are a requirement (edit_success >= 1) unless one on them is given, as in the dashboard
    if args.fix:
        session.set_fixes(args.fix)
    elif args.fixes:
        from ..fixes import read_fixes_csv

        fixes, names = read_fixes_csv(args.fixes, data, session.split, seed=session.seed)
        session.set_fixes(names, fixes=fixes)
        print(f"{len(names)} mistake(s) to fix from {args.fixes}")
    session.check_editor(args.editor, settings)  # refuse before anything is logged
    if getattr(cls, "adds_adapter", False) and not str(args.out).lower().endswith(".safetensors"):
        raise AuditorError(f"editor {cls.name!r} adds a codebook that changes the model's inference, which only a "
                           f".safetensors file holds; write --out {args.out.rsplit('.', 1)[0]}.safetensors")
    session.log = open_log(args)
    if session.log is not None:
        session.record_start()
    before = session.evaluate("pristine")
    device = None if args.device in (None, "", "auto") else args.device
    record = session.run_edit(args.editor, settings, device=device, callback=_progress)
    result, after = record.result, session.evaluate()
    session.save(args.out)
    print(f"{result.editor} edited {', '.join(result.layers) or 'no layer'} in {result.seconds:.3f} s on "
          f"{result.device}; data {data.name} ({split_words(args.split)}, {before.rows} rows)")
    for ch in result.changes:
        norm = "" if "entries_after" in ch else f" (||dW|| = {ch['norm']:.4g})"
        print(f"  {ch['parameter']}: {change_words(ch)}{norm}")
    if result.extras.get("editor_file"):
        print(f"  learned editor: {result.extras['editor_file']}")
    for kind, message in editor_notes(result.log):  # what the editor itself wants said (a learned change ...)
        print(f"  {kind}: {message}")
    if (aim := session.aim_note(args.editor)) is not None:
        print(f"  note: {aim}")
    print_comparison(before, after)
    print_warnings(warnings_of(before, after))
    effects = session.side_effects()
    print_side_effects(effects, session.forbid_side_effects)
    verdict = session.verdict()
    print(f"\n{verdict['status']}: {verdict['summary']}")
    left_out = result.bundle.spec.provenance.get("onnx_outputs_left_out")
    print(f"\nwrote {args.out} (weights sha256 {result.bundle.sha256[:16]}, was {bundle.sha256[:16]})"
          + (f"; it has the logits output only (left out: {', '.join(left_out)})" if left_out else ""))
    if args.json:
        write_json(args.json, {"before": before.to_dict(), "after": after.to_dict(), "edit": session.provenance(),
                               "out": str(args.out), "side_effects": effects, "verdict": verdict,
                               "changes": session.changes(),
                               "data": {"name": data.name, "sha256": data.sha256, "source": data.source or None,
                                        **data.data_block(session.split)}})
    return 0 if session.passed else 1


def refuse_fixes_for(cls, args) -> None:
    """Mistakes to fix given to an editor that does not fix given mistakes: refused, naming those that do."""
    from ..editors import EDITORS
    from ..errors import AuditorError

    asked = getattr(args, "fix", None) or getattr(args, "fixes", None)
    if asked and "edit_success" not in getattr(cls, "targets", ()):
        fixers = sorted(n for n, c in EDITORS.items() if "edit_success" in getattr(c, "targets", ()))
        raise AuditorError(f"editor {cls.name!r} does not fix given mistakes (--fix/--fixes); editors that do: "
                           f"{', '.join(fixers)}")


def editor_class(name: str):
    """The registered editor class called `name`, or an AuditorError listing the editors."""
    from ..editors import EDITORS
    from ..errors import AuditorError

    if name not in EDITORS:
        raise AuditorError(f"unknown editor {name!r}; available: {', '.join(sorted(EDITORS))}")
    return EDITORS[name]
