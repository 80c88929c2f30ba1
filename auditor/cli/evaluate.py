"""`auditor evaluate MODEL DATA [--require EXPR ...] [--json PATH]`."""
from __future__ import annotations

from . import COMMANDS
from .common import add_model_data_args, add_require_arg, load_model_and_data, print_evaluation, write_json
from .log import add_log_args, command_line, open_log


def register(sub) -> None:
    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"],
                       description="Print a model's metrics on data and whether each requirement holds. "
                                   "Exit 0 all hold, 1 some do not, 2 bad input.")
    add_model_data_args(p)
    add_require_arg(p)
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    add_log_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..evaluate import evaluate
    from ..requirements import parse_requirements

    reqs = parse_requirements(args.require)  # bad expressions fail before any loading
    bundle, data = load_model_and_data(args)
    ev = evaluate(bundle, data, reqs, split=args.split)
    print_evaluation(ev)
    if args.json:
        payload = ev.to_dict()
        payload["model"].update({"path": args.model, "format": bundle.format, "parameters": bundle.n_parameters})
        write_json(args.json, payload)
    log = open_log(args)
    if log is not None:
        from ..store import log_evaluation
        log_evaluation(log, ev, model_path=args.model, command=command_line())
    return 0 if ev.passed else 1
