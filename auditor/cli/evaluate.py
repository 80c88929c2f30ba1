"""`auditor evaluate MODEL DATA [--require EXPR ...] [--json PATH]`."""
from __future__ import annotations

from . import COMMANDS
from .common import add_model_data_args, add_require_arg, load_model_and_data, refuse_overwriting_inputs, write_json
from .log import add_log_args, command_line, open_log
from .verdicts import add_verdict_args, check_verdict_args, print_evaluation


def register(sub) -> None:
    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"],
                       description="Print a model's metrics on data with 95%% intervals, and whether each "
                                   "requirement holds (pass, fail, or inconclusive when its interval straddles "
                                   "the threshold). Exit 0 all hold, 1 some do not (with --verdict strict, the "
                                   "default, inconclusive counts as not met), 2 bad input, 3 an internal error.")
    add_model_data_args(p)
    add_require_arg(p)
    add_verdict_args(p, side_effects=False)
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    add_log_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    refuse_overwriting_inputs(args, outputs=("json",))
    from ..evaluate import evaluate
    from ..requirements import parse_requirements

    reqs = parse_requirements(args.require)  # bad expressions fail before any loading
    check_verdict_args(args)
    bundle, data = load_model_and_data(args)
    ev = evaluate(bundle, data, reqs, split=args.split, verdict=args.verdict, min_group=args.min_group)
    print_evaluation(ev)
    if args.json:
        payload = ev.to_dict()
        payload["side_effects"] = []  # no edit: nothing to compare (see `auditor edit --json`)
        payload["model"].update({"path": args.model, "format": bundle.format, "parameters": bundle.n_parameters})
        payload["data"].update({**data.data_block(ev.split), "source": data.source or None})
        write_json(args.json, payload)
    from ..store import LogLockedError, log_evaluation

    try:
        log = open_log(args)
        if log is not None:
            log_evaluation(log, ev, model_path=args.model, command=command_line())
    except LogLockedError as exc:  # not a verdict: exit 2 with the result it could not record
        verdict = "all requirements met" if ev.passed else "some requirements not met"
        raise LogLockedError(f"evaluated ({verdict}) but not logged: {exc}") from None
    return 0 if ev.passed else 1
