"""`auditor editor train|show`: train learned (metanetwork) editors on a population of models.

    auditor editor train --task adult --requirement demographic_parity --out my_dp.safetensors
    torchrun --nproc_per_node 2 -m auditor.cli editor train --task adult --requirement sparsity
    auditor editor show auditor/editors/weights/metanet_adult_dp.safetensors

Requirements: demographic_parity (dp), equalized_odds (eo), features_used (minimisation),
sparsity (pruning). Under torchrun every rank trains on its own models and rows
(DistributedDataParallel: gloo on CPU, NCCL on GPU) and rank 0 writes the file.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from . import COMMANDS
from .common import format_table, write_json


def register(sub) -> None:
    from ..editors.metanet.runtime import ALIASES, KINDS
    from ..editors.metanet.train import TrainSettings

    p = sub.add_parser("editor", help=COMMANDS["editor"],
                       description="Train a graph metanetwork editor on a population of models (see `auditor zoo`).")
    esub = p.add_subparsers(dest="editor_command", metavar="ACTION")
    t = esub.add_parser("train", help="train a metanetwork editor for one requirement on one task",
                        description="Loss = requirement surrogate + Jensen-Shannon divergence to the original "
                                    "outputs. Run under torchrun for several processes.")
    t.add_argument("--task", default="adult", help="population task (adult, compas)")
    t.add_argument("--requirement", required=True,
                   help=f"one of {', '.join(KINDS)} (aliases: {', '.join(ALIASES)})")
    t.add_argument("--out", metavar="PATH.safetensors",
                   help="editor file (default: ~/.auditor/editors/metanet_<task>_<kind>.safetensors, on the "
                        "editor search path before the shipped ones)")
    defaults = TrainSettings()
    for f in dataclasses.fields(TrainSettings):
        if f.name in ("task", "requirement"):
            continue
        kind = {"int | None": int, "float": float, "int": int, "bool": _bool}.get(str(f.type), float)
        t.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name),
                       help=f"(default {getattr(defaults, f.name)})")
    t.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    t.add_argument("--json", metavar="PATH", help="also write the training summary as JSON")
    t.set_defaults(func=run_train)
    s = esub.add_parser("show", help="print what an editor file was trained on and its validation figures")
    s.add_argument("path")
    s.add_argument("--json", metavar="PATH")
    s.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _bool(text: str) -> bool:
    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(text)
    return text.lower() in ("1", "true", "yes")


def run_train(args) -> int:
    from ..editors.metanet.train import TrainSettings, requirement_kind, train_editor
    from ..editors.weights import user_editor_dir
    from ..errors import AuditorError
    from ..zoo import TASKS

    if args.task not in TASKS:
        raise AuditorError(f"no population for task {args.task!r}; known: {', '.join(TASKS)}")
    kind = requirement_kind(args.requirement)
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = TrainSettings(**{k: v for k, v in vars(args).items() if k in fields and k != "requirement"},
                             requirement=kind.metric)
    out = args.out or user_editor_dir() / f"metanet_{args.task}_{kind.stem}.safetensors"
    rank = int(os.environ.get("RANK", "0"))
    start = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        if rank == 0:
            print(f"[{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    info = train_editor(settings, out=out, callback=progress, device=None if args.device == "auto" else args.device)
    if rank == 0:
        _print_info(info, str(out))
        if args.json:
            write_json(args.json, info)
    return 0


def _print_info(info: dict, path: str) -> None:
    tr = info["training"]
    print(f"{path}: {info['requirement']} editor for {info['task']} MLPs "
          f"({info['family']['n_members']} training members, {tr['steps']} steps, {tr['seconds']} s, "
          f"{tr['world_size']} process(es) on {tr['device']})")
    rows = info.get("validation") or []
    if rows:
        keys = list(rows[0])
        print(format_table([[f"{r[k]:.4f}" if isinstance(r[k], float) else r[k] for k in keys] for r in rows], keys))


def run_show(args) -> int:
    from ..editors.metanet.runtime import load_metanet

    trained = load_metanet(args.path)
    _print_info(trained.info, args.path)
    if args.json:
        write_json(args.json, trained.info)
    return 0
