"""`auditor zoo build|show`: populations of MLPs for training learned editors.

    auditor zoo build --task adult --workers 2          # 320 members, cached under $AUDITOR_ZOO_DIR
    auditor zoo build --task adult-wide --models 40     # bigger MLPs: depth 2-4, widths 128-512
    torchrun --nproc_per_node 2 -m auditor.cli zoo build --task adult   # one share per rank
    auditor zoo show --task adult --json zoo.json

A population of models like your own, trained on your data (task `user-<hash12>`, printed):

    auditor zoo build --data credit.csv --target default --protected sex --categorical purpose \\
        --like my_mlp.safetensors --workers 2 [--depths 1,2,3,4 --widths 64,128,256,512]
    auditor editor train --zoo user-1a2b3c4d5e6f --requirement demographic_parity
"""
from __future__ import annotations

import argparse
import sys
import time

from . import COMMANDS
from .common import add_csv_schema_args, format_table, write_json


def register(sub) -> None:
    p = sub.add_parser("zoo", help=COMMANDS["zoo"],
                       description="Populations of small MLPs trained on one task with varied widths, depths, "
                                   "seeds and training lengths, split into train/val/test members; or on your own "
                                   "data, like your own model (--data ... --like MODEL).")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    for name, helptext in [("build", "train every missing member and cache the population"),
                           ("show", "list a population's splits, architectures and accuracies")]:
        q = zsub.add_parser(name, help=helptext)
        q.add_argument("--task", default=None, help="adult, compas, adult-wide, or a user population user-... "
                                                    "(default adult; with --data: the population of your data)")
        q.add_argument("--models", type=int, default=None,
                       help="population size, 80/10/10 split (default 320; 160 for a user population)")
        q.add_argument("--seed", type=int, default=0, help="base seed of the population")
        q.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
        if name == "build":
            q.add_argument("--workers", type=int, default=1, help="worker processes (per torchrun rank)")
            q.add_argument("--split", action="append", choices=["train", "val", "test"],
                           help="build only this split (repeatable; default all)")
            _add_user_args(q)
        q.set_defaults(func=run_build if name == "build" else run_show)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _add_user_args(q) -> None:
    g = q.add_argument_group("a population from your own data, like your own model")
    g.add_argument("--data", metavar="FILE", help="your CSV or Parquet file (the rows the population trains on)")
    g.add_argument("--like", metavar="MODEL", help="your model file: the population has its inputs and "
                                                  "preprocessing, and depths and widths around its own")
    g.add_argument("--spec", help="JSON model spec for a state dict MODEL")
    add_csv_schema_args(g)
    g.add_argument("--train-csv", metavar="FILE", help="your own training rows (--data then holds the test rows)")
    g.add_argument("--val-csv", metavar="FILE", help="your own validation rows (with --train-csv)")
    g.add_argument("--split-column", metavar="COL", help="a column that says train/val/test for every row")
    g.add_argument("--depths", help="comma-separated hidden-layer counts to sample from, 0 for logistic "
                                    "regressions (default: one less to one more than the model's, at most 4)")
    g.add_argument("--widths", help="comma-separated hidden widths to sample from (default: half, equal and twice "
                                    "the model's widest, 8 to 512)")


def _ints(text: str | None, what: str) -> tuple[int, ...] | None:
    from ..errors import AuditorError

    if not text:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise AuditorError(f"--{what} takes comma-separated whole numbers, e.g. 1,2,3; got {text!r}") from None


def _print_summary(task: str, summary: dict) -> None:
    from ..zoo import is_user_task, user_manifest

    rows = []
    for split, s in summary.items():
        acc = s["val_accuracy"]
        rows.append([split, s["members"], s["cached"],
                     f"{acc['mean']:.4f} [{acc['min']:.4f}, {acc['max']:.4f}]" if acc else "-",
                     ", ".join(f"{k}:{v}" for k, v in s["architectures"].items())])
    print(f"population {task}")
    if is_user_task(task):
        m = user_manifest(task)
        d = m["data"]
        print(f"  your data {d['name']!r} (sha256 {d['sha256'][:12]}, {d['n_inputs']} inputs, rows "
              f"{', '.join(f'{s} {n}' for s, n in d['rows'].items())}); models like "
              f"{m['model'].get('name') or m['model']['source']} (hidden {m['model']['hidden']}); "
              f"depths {sorted(set(m['family']['depths']))}, widths {sorted(set(m['family']['widths']))}")
    print(format_table(rows, ["split", "members", "cached", "val accuracy mean [min, max]", "hidden widths:count"]))


def run_show(args) -> int:
    from ..zoo import population_summary, user_populations

    task = args.task or "adult"
    summary = population_summary(task, args.models, args.seed)
    _print_summary(task, summary)
    others = [m for m in user_populations() if m["task"] != task]
    if others:
        print("\nyour populations: " + "; ".join(
            f"{m['task']} ({m['data']['name']}, {m['n_models']} members)" for m in others))
    if args.json:
        write_json(args.json, {"task": task, "splits": summary})
    return 0


def user_population_from_args(args) -> str:
    """Load --like MODEL and --data as the other commands do, and register their population (its task)."""
    from ..errors import AuditorError
    from ..zoo import register_user_population
    from .common import load_model_and_data

    if not args.like:
        raise AuditorError("--data needs --like MODEL: the population is built of models like yours (its inputs, "
                           "preprocessing and size)")
    if args.task:
        raise AuditorError("give either --task (a named population) or --data with --like, not both")
    view = argparse.Namespace(model=args.like, data=args.data, spec=args.spec, target=args.target,
                              positive=args.positive, protected=args.protected, categorical=args.categorical,
                              inputs=args.inputs, train_csv=args.train_csv, val_csv=args.val_csv, test_csv=None,
                              split_column=args.split_column, max_model_mb=512.0)
    bundle, data = load_model_and_data(view)
    return register_user_population(bundle, data, args.models, _ints(args.depths, "depths"),
                                    _ints(args.widths, "widths"))


def run_build(args) -> int:
    from ..errors import AuditorError
    from ..zoo import SPLIT_NAMES, build_population, population_summary

    if (args.models is not None and args.models < 1) or args.workers < 1:
        raise AuditorError("--models and --workers must be at least 1")
    dist = _maybe_init_distributed()
    task = user_population_from_args(args) if args.data or args.like else (args.task or "adult")
    start = time.perf_counter()
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - last[0] > 2 or fraction >= 1:
            last[0] = now
            print(f"[{now - start:6.1f} s] {message}", file=sys.stderr)

    build_population(task, args.models, workers=args.workers, base_seed=args.seed,
                     splits=tuple(args.split or SPLIT_NAMES), callback=progress)
    if dist is None or dist.get_rank() == 0:
        summary = population_summary(task, args.models, args.seed)
        _print_summary(task, summary)
        print(f"built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        if args.data:
            print(f"task {task}: train an editor for it with `auditor editor train --zoo {task} "
                  "--requirement demographic_parity`")
        if args.json:
            write_json(args.json, {"task": task, "splits": summary, "seconds": time.perf_counter() - start})
    if dist is not None:
        dist.destroy_process_group()
    return 0


def _maybe_init_distributed():
    """Join the torchrun process group when launched by torchrun (gloo: building runs on CPU)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist
