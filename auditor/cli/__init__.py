"""The `auditor` command. Each subcommand lives in its own module with `register(subparsers)`.

Exit status: 0 all requirements met, 1 some not met, 2 bad input (one line on stderr), 3 internal
error (one line on stderr with the path of a file holding the full traceback). CI can trust it:
nothing but a verdict exits 0 or 1.

Start-up stays light: the top-level parser knows the subcommands' names and one-line help from
`COMMANDS` below, and only the chosen subcommand's module is imported (it registers its own
arguments and imports torch, pandas, the editors... only when it needs them). `auditor --help`
and `auditor log` import none of them; `tests/test_cli_startup.py` keeps it so.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import AuditorError, one_line

# name -> one-line help, in the order `auditor --help` lists them. Each name is a module of this
# package with register(subparsers), which takes its help line from here.
COMMANDS = {
    "evaluate": "metrics (overall and per group) and requirement verdicts",
    "localize": "rank layers (and features) by where a misbehaviour lives",
    "edit": "edit a model to meet requirements and save the edited copy",
    "audit": "evaluate, localize, edit, and write a compliance report (HTML, PDF, JSON)",
    "log": "list, show and verify entries of the audit log",
    "zoo": "build or inspect populations of models (for learned editors)",
    "editor": "train or inspect learned (metanetwork) editors",
    "spec": "draft a model spec from a model file and data (spec init)",
}


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word; the top level has no options but -h)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None, *, commands=None) -> argparse.ArgumentParser:
    """The `auditor` parser with full arguments for `commands` (default: the one named in `argv`).

    The other subcommands are listed by name and help line only, so their modules are not imported;
    `build_parser(commands=COMMANDS)` registers every one (for documentation and tests).
    """
    if commands is None:
        chosen = _chosen(sys.argv[1:] if argv is None else list(argv))
        commands = [chosen] if chosen else []
    parser = argparse.ArgumentParser(prog="auditor", description="Audit and edit PyTorch models against "
                                     "requirements (fairness, minimisation, sparsity, backdoors, cues).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, helptext in COMMANDS.items():
        if name in commands:
            importlib.import_module(f"{__name__}.{name}").register(sub)
        else:
            sub.add_parser(name, help=helptext)
    return parser


EXIT_MET, EXIT_NOT_MET, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
def _trace_file(exc: BaseException) -> str | None:
    """Write the full traceback to a new file in the temp folder; its path (None when that fails)."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="auditor-trace-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"auditor {' '.join(sys.argv[1:])}\n\n")
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return path
    except OSError:
        return None


def _internal_error(exc: BaseException) -> int:
    if isinstance(exc, RecursionError):
        what = "input nested too deeply (recursion limit)"
    elif isinstance(exc, MemoryError):
        what = "out of memory"
    else:
        what = f"{type(exc).__name__}: {exc}"
    path = _trace_file(exc)
    where = f"; full trace in {path}" if path else ""
    print(f"auditor: internal error: {one_line(what, 300)}{where}", file=sys.stderr)
    return EXIT_INTERNAL


def _threads_from_env() -> None:
    """AUDITOR_THREADS, when set, is the number of CPU threads torch uses (as in the dashboard)."""
    value = os.environ.get("AUDITOR_THREADS")
    if not value:
        return
    try:
        n = int(value)
        if n < 1:
            raise ValueError
    except ValueError:
        raise AuditorError(f"AUDITOR_THREADS must be a whole number of at least 1; got {value!r}") from None
    import torch

    torch.set_num_threads(n)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        _threads_from_env()
        code = int(args.func(args) or 0)
    except AuditorError as exc:
        print(f"auditor: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("auditor: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 (a bug, or a resource ran out: never read as a verdict)
        return _internal_error(exc)
    if code not in (EXIT_MET, EXIT_NOT_MET, EXIT_BAD_INPUT, EXIT_INTERNAL):
        return _internal_error(RuntimeError(f"exit status {code} is not 0-3"))
    return code


if __name__ == "__main__":
    sys.exit(main())
