"""`auditor log [list|show ID|verify|anchor|restore-triggers]`: read and check the audit log.

    auditor log                       # the latest entries, one line each
    auditor log list --kind report    # only reports (or evaluation, edit)
    auditor log show 12 [--json]      # everything recorded in entry 12
    auditor log verify                # integrity, triggers, keyed hash chain, count and head against
                                      # the anchor (exit 1 on a problem)
    auditor log verify --anchor N:HEAD  # ... and that the log still holds a head recorded elsewhere
    auditor log anchor                # the chain's head as COUNT:HEAD, for an external record
    auditor log restore-triggers      # put back the append-only triggers after `verify` reported them

Entries are keyed with the key in $AUDITOR_LOG_KEY (default ~/.auditor/log.key) or --log-key.
"""
from __future__ import annotations

import argparse
import json

from . import COMMANDS
from .common import format_table


def register(sub) -> None:
    from ..store import KINDS

    p = sub.add_parser("log", help=COMMANDS["log"],
                       description="Read the append-only audit log (SQLite). Default database: $AUDITOR_DB or "
                                   "~/.auditor/audit.db.")
    p.add_argument("--db", metavar="PATH", help="audit log database (default: $AUDITOR_DB or ~/.auditor/audit.db)")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    lst = actions.add_parser("list", help="one line per entry, newest last")
    show = actions.add_parser("show", help="everything recorded in one entry")
    show.add_argument("id", type=int, help="entry id (from `auditor log list`)")
    show.add_argument("--json", action="store_true", help="print the entry as JSON")
    verify = actions.add_parser("verify", help="SQLite integrity check, triggers, the entries' keyed hash chain, "
                                               "and the count and head against the anchor")
    verify.add_argument("--anchor", metavar="COUNT:HEAD",
                        help="also check that the log still holds this head (from `auditor log anchor` or a "
                             "report's JSON, kept elsewhere)")
    anchor = actions.add_parser("anchor", help="print the chain's head (COUNT:HEAD) for an external record")
    anchor.add_argument("--json", action="store_true", help="print the anchor as JSON")
    anchor.add_argument("--reset", action="store_true",
                        help="write a new anchor file at the head (only when the chain verifies; after a lost "
                             "anchor file was investigated)")
    actions.add_parser("restore-triggers", help="re-create the append-only triggers that `verify` reports missing")
    for q, default in ((p, None), (lst, argparse.SUPPRESS)):  # SUPPRESS: `log --kind X list` keeps X
        q.add_argument("--kind", choices=KINDS, default=default, help="only entries of this kind")
        q.add_argument("--model", metavar="SHA256", default=default,
                       help="only entries of this model (a hash prefix is enough)")
        q.add_argument("--run", default=default, help="only the entries of one audit run")
        q.add_argument("--limit", type=int, default=20 if default is None else default,
                       help="the last N entries (default 20; 0: all)")
    p.add_argument("--log-key", metavar="PATH", help="the log's key file (default: $AUDITOR_LOG_KEY or "
                                                      "~/.auditor/log.key)")
    for q in (lst, show, verify, anchor, actions.choices["restore-triggers"]):
        q.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help="audit log database")
        q.add_argument("--log-key", metavar="PATH", default=argparse.SUPPRESS, help="the log's key file")
    p.set_defaults(func=run)


def _verdict(passed) -> str:
    return "" if passed is None else ("PASS" if passed else "FAIL")


def _summary(e) -> str:
    r = e.results or {}
    if e.kind == "edit":
        return f"{r.get('editor', '')} on {', '.join(r.get('layers') or []) or '-'}"
    if e.kind == "report":
        return ", ".join(e.reports) or "-"
    return str(r.get("label", ""))


def run(args) -> int:
    from ..store import AuditLog

    log = AuditLog(args.db, key_path=getattr(args, "log_key", None))
    action = args.action or "list"
    if action == "show":
        e = log.get(args.id)
        if args.json:
            print(json.dumps(e.to_dict(), indent=2, sort_keys=True))
            return 0
        d = e.to_dict()
        for key in ("id", "time", "kind", "user", "run", "model_path", "model_sha256", "data_name", "data_sha256",
                    "passed", "command", "hash"):
            print(f"{key:>13}: {'' if d[key] is None else d[key]}")
        print(f"{'requirements':>13}: {', '.join(map(str, e.requirements)) or '-'}")
        print(f"{'reports':>13}: {', '.join(e.reports) or '-'}")
        print(f"{'results':>13}: {json.dumps(e.results, indent=2, sort_keys=True, default=str)}")
        return 0
    if action == "verify":
        v = log.check(getattr(args, "anchor", None))
        for p in v.problems:
            print(f"problem: {p}")
        for n in v.notes:
            print(f"note: {n}")
        print(f"{v.count} entries in {log.path}: " + ("ok" if v.ok else f"{len(v.problems)} problem(s)")
              + f" (head {v.count}:{v.head})")
        return 0 if v.ok else 1
    if action == "anchor":
        a = log.reanchor() if args.reset else log.anchor()
        print(json.dumps(a, indent=2) if args.json else a["anchor"])
        return 0
    if action == "restore-triggers":
        missing = log.restore_triggers()
        print(f"re-created {', '.join(missing)}" if missing else "the triggers are in place")
        return 0
    entries = log.entries(getattr(args, "kind", None), model_sha256=getattr(args, "model", None),
                          run=getattr(args, "run", None), limit=(getattr(args, "limit", 20) or None))
    if not entries:
        print(f"no entries in {log.path}")
        return 0
    rows = [[e.id, e.time[:19].replace("T", " "), e.kind, e.user or "", (e.model_sha256 or "")[:12], e.data_name or "",
             _verdict(e.passed), _summary(e)] for e in entries]
    print(format_table(rows, ["id", "time (UTC)", "kind", "user", "model", "data", "verdict", "details"]))
    return 0


def add_log_args(p) -> None:
    """`--db PATH` and `--no-log` for a command that records what it did in the audit log."""
    p.add_argument("--db", metavar="PATH", help="audit log database (default: $AUDITOR_DB or ~/.auditor/audit.db)")
    p.add_argument("--log-key", metavar="PATH", help="the log's key file (default: $AUDITOR_LOG_KEY or "
                                                      "~/.auditor/log.key)")
    p.add_argument("--no-log", action="store_true", help="do not write to the audit log")


def open_log(args):
    """The audit log chosen by `--db` (None with `--no-log`)."""
    from ..store import AuditLog

    if getattr(args, "no_log", False):
        return None
    return AuditLog(getattr(args, "db", None), key_path=getattr(args, "log_key", None))


def command_line() -> str | None:
    """This process's command line as `auditor ...` (None when `auditor` was called from Python)."""
    import shlex
    import sys
    from pathlib import Path

    if not sys.argv or Path(sys.argv[0]).name not in ("auditor", "__main__.py"):
        return None
    return shlex.join(["auditor", *sys.argv[1:]])
