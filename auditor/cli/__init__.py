"""The `auditor` command. Each subcommand lives in its own module with `register(subparsers)`.

Exit status: 0 all requirements met, 1 some not met, 2 bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import AuditorError

# Subcommand modules, in the order `auditor --help` lists them; each has register(subparsers).
COMMANDS = ["evaluate", "localize", "edit", "audit", "log", "zoo", "editor"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="auditor", description="Audit and edit PyTorch models against "
                                     "requirements (fairness, minimisation, sparsity, backdoors, cues).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AuditorError as exc:
        print(f"auditor: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("auditor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
