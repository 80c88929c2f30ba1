"""Options and printing shared by `evaluate`, `edit` and `audit` for judging numbers with their
uncertainty: `--verdict strict|point`, `--min-group N`, `--forbid-side-effects`; intervals,
inconclusive verdicts, group-size warnings and side effects on the terminal.

Registering the options imports nothing heavy (`auditor --help` stays fast)."""
from __future__ import annotations

import argparse
import sys

# auditor.requirements.DEFAULT_VERDICT and auditor.evaluate.DEFAULT_MIN_GROUP, written out so that
# registering the arguments does not import torch (tests/test_uncertainty.py keeps them equal).
DEFAULT_VERDICT = "strict"
DEFAULT_MIN_GROUP = 30


def add_verdict_args(p: argparse.ArgumentParser, *, side_effects: bool = True) -> None:
    p.add_argument("--verdict", choices=["strict", "point"], default=DEFAULT_VERDICT,
                   help="strict (default): a requirement counts as met only when its whole 95%% interval meets "
                        "the threshold; one whose interval straddles it is inconclusive and fails the run. "
                        "point: the value alone decides (no uncertainty)")
    p.add_argument("--min-group", type=int, default=DEFAULT_MIN_GROUP, metavar="N",
                   help="groups whose rate rests on fewer than N rows (rows; positives for the true-positive "
                        "rate, negatives for the false-positive rate) are left out of the gap metrics and "
                        "worst-group accuracy, with a warning (default %(default)s; 0 keeps every group)")
    if side_effects:
        p.add_argument("--forbid-side-effects", action="store_true",
                       help="fail (exit 1) when the edit made any metric that is not a requirement worse beyond "
                            "noise (its paired 95%% interval of the change excludes 0)")


def check_verdict_args(args) -> None:
    from ..errors import AuditorError

    if getattr(args, "min_group", 0) < 0:
        raise AuditorError(f"--min-group must be 0 or more; got {args.min_group}")


def _fmt(value, key: str | None = None) -> str:
    """In the metric's unit when `key` is given (`auditor.present.format_value`), as the report shows it."""
    from .common import fmt

    return fmt(value, key)


def interval_text(iv: dict | None, key: str | None = None) -> str:
    if not iv or iv.get("low") is None:
        return "no interval" if iv else "-"
    if key is not None:
        from .common import fmt_interval

        return fmt_interval(iv, key)
    return f"[{_fmt(iv['low'])}, {_fmt(iv['high'])}]"


def _group_cell(column: str, value) -> str:
    if value is None:
        return "-"
    from ..present import format_group_value

    return format_group_value(column, value)


def print_evaluation(ev, out=None) -> None:
    """Metrics with their 95 % intervals and rows, groups, requirements with pass / fail / inconclusive,
    and the warnings (groups left out), never silently."""
    from ..present import split_words
    from .common import format_table

    out = out or sys.stdout
    print(f"data {ev.data_name} ({split_words(ev.split)}, {ev.rows} rows), weights sha256 {ev.model_sha256[:16]}",
          file=out)
    rows = [[k, _fmt(v, k), interval_text(ev.intervals.get(k), k), str((ev.intervals.get(k) or {}).get("n") or "-")]
            for k, v in ev.metrics.items()]
    print(format_table(rows, ["metric", "value", "95% interval", "rows"]), file=out)
    notes = sorted({iv["note"] for iv in ev.intervals.values() if iv.get("note")})
    for note in notes:
        names = [k for k, iv in ev.intervals.items() if iv.get("note") == note]
        print(f"  {', '.join(names)}: {note}", file=out)
    for attr, groups in ev.groups.items():
        cols = list(next(iter(groups.values())))
        grows = [[g, *(_group_cell(c, vals.get(c)) for c in cols)] for g, vals in groups.items()]
        print(f"\nby {attr}", file=out)
        print(format_table(grows, ["group", *cols]), file=out)
    print_warnings(ev.warnings, out)
    if ev.requirements:
        print("\nrequirements", file=out)
        print(format_table([requirement_row(r) for r in ev.requirements],
                           ["requirement", "value", "95% interval", "verdict"]), file=out)
        for r in ev.requirements:
            if r.metric == "features_used" and r.note:
                print(f"  {r.expr}: {r.note}", file=out)
        print_verdict_notes(ev, out)


def requirement_row(r) -> list[str]:
    iv = None if r.low is None else {"low": r.low, "high": r.high}
    return [r.expr, _fmt(r.value, r.metric), interval_text(iv, r.metric) if iv else "no interval", verdict_word(r)]


def verdict_word(r) -> str:
    words = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}
    return words.get(r.verdict, "PASS" if r.passed else "FAIL")


def print_verdict_notes(ev, out=None) -> None:
    out = out or sys.stdout
    unsure = [r for r in ev.requirements if r.verdict == "inconclusive"]
    if unsure:
        counted = ("counts as not met (--verdict strict)" if ev.verdict_mode == "strict"
                   else "decided by the value (--verdict point)")
        print(f"\n{len(unsure)} inconclusive ({counted}):", file=out)
        for r in unsure:
            print(f"  {r.expr}: {r.note}", file=out)


def print_warnings(warnings, out=None) -> None:
    out = out or sys.stdout
    if warnings:
        print("\nwarnings", file=out)
        for w in warnings:
            print(f"  {w}", file=out)


def print_side_effects(effects, forbidden: bool, out=None) -> None:
    """One line per side effect, with its paired interval and the groups it comes from."""
    from ..present import side_effect_sentence

    out = out or sys.stdout
    if not effects:
        print("\nside effects: none (no other metric got worse beyond its 95% interval)", file=out)
        return
    tail = " (forbidden: --forbid-side-effects)" if forbidden else ""
    one = len(effects) == 1
    print(f"\nside effects: {len(effects)} metric{'' if one else 's'} that {'is' if one else 'are'} not "
          f"{'a requirement' if one else 'requirements'} got worse beyond noise{tail}", file=out)
    for e in effects:
        print(f"  {side_effect_sentence(e)}", file=out)


def change_words(ch: dict) -> str:
    """An edit's change of one tensor, worded as what it is (ASCII for any terminal)."""
    from ..present import format_percent

    if "entries_after" in ch:  # an adapter's table (a codebook) that gained or lost entries
        return f"entries {ch['entries_before']} -> {ch['entries_after']} (a table the edit adds to, not weights)"
    return (f"size of the change ||dW||/||W|| = {format_percent(ch['relative_norm'])}, "
            f"{format_percent(ch['changed_fraction'])} of the weights changed, rank {ch['rank']}")
