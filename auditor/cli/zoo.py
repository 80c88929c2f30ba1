"""`auditor zoo build|show --task adult`: populations of MLPs for training learned editors.

    auditor zoo build --task adult --workers 2          # 320 members, cached under $AUDITOR_ZOO_DIR
    torchrun --nproc_per_node 2 -m auditor.cli zoo build --task adult   # one share per rank
    auditor zoo show --task adult --json zoo.json
"""
from __future__ import annotations

import sys
import time

from . import COMMANDS
from .common import format_table, write_json


def register(sub) -> None:
    from ..zoo import DEFAULT_SIZE, TASKS

    p = sub.add_parser("zoo", help=COMMANDS["zoo"],
                       description="Populations of small MLPs trained on one task with varied widths, depths, "
                                   "seeds and training lengths, split into train/val/test members.")
    zsub = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    for name, helptext in [("build", "train every missing member and cache the population"),
                           ("show", "list a population's splits, architectures and accuracies")]:
        q = zsub.add_parser(name, help=helptext)
        q.add_argument("--task", default="adult", choices=sorted(TASKS))
        q.add_argument("--models", type=int, default=DEFAULT_SIZE, help="population size (80/10/10 split)")
        q.add_argument("--seed", type=int, default=0, help="base seed of the population")
        q.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
        if name == "build":
            q.add_argument("--workers", type=int, default=1, help="worker processes (per torchrun rank)")
            q.add_argument("--split", action="append", choices=["train", "val", "test"],
                           help="build only this split (repeatable; default all)")
        q.set_defaults(func=run_build if name == "build" else run_show)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _print_summary(task: str, summary: dict) -> None:
    rows = []
    for split, s in summary.items():
        acc = s["val_accuracy"]
        rows.append([split, s["members"], s["cached"],
                     f"{acc['mean']:.4f} [{acc['min']:.4f}, {acc['max']:.4f}]" if acc else "-",
                     ", ".join(f"{k}:{v}" for k, v in s["architectures"].items())])
    print(f"population {task}")
    print(format_table(rows, ["split", "members", "cached", "val accuracy mean [min, max]", "hidden widths:count"]))


def run_show(args) -> int:
    from ..zoo import population_summary

    summary = population_summary(args.task, args.models, args.seed)
    _print_summary(args.task, summary)
    if args.json:
        write_json(args.json, {"task": args.task, "splits": summary})
    return 0


def run_build(args) -> int:
    from ..errors import AuditorError
    from ..zoo import SPLIT_NAMES, build_population, population_summary

    if args.models < 1 or args.workers < 1:
        raise AuditorError("--models and --workers must be at least 1")
    dist = _maybe_init_distributed()
    start = time.perf_counter()
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.perf_counter()
        if now - last[0] > 2 or fraction >= 1:
            last[0] = now
            print(f"[{now - start:6.1f} s] {message}", file=sys.stderr)

    build_population(args.task, args.models, workers=args.workers, base_seed=args.seed,
                     splits=tuple(args.split or SPLIT_NAMES), callback=progress)
    if dist is None or dist.get_rank() == 0:
        summary = population_summary(args.task, args.models, args.seed)
        _print_summary(args.task, summary)
        print(f"built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        if args.json:
            write_json(args.json, {"task": args.task, "splits": summary,
                                   "seconds": time.perf_counter() - start})
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
