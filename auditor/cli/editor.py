"""`auditor editor train|mend|show`: train learned editors: metanetworks on a population of models, or a MEND
gradient editor for one model.

    auditor editor train --task adult --requirement demographic_parity --out my_dp.safetensors
    auditor editor train --zoo user-1a2b3c4d5e6f --requirement dp --minutes 10   # your own population
    torchrun --nproc_per_node 2 -m auditor.cli editor train --task adult --requirement sparsity
    auditor editor show auditor/editors/weights/metanet_adult_dp.safetensors
    auditor editor mend my_model.safetensors my_data.csv --target label   # then: auditor edit ... --editor mend

Requirements: demographic_parity (dp), equalized_odds (eo), features_used (minimisation),
sparsity (pruning). A progress bar shows the steps, the validation loss and the time left; training
stops early when the validation loss stops improving (`--patience`) or the budget (`--minutes`) is
spent, keeping the best checkpoint. The editor is written where the editors look for it (the first
folder of $AUDITOR_EDITOR_DIR, else ~/.auditor/editors) and found for models of the population's
family (same input features and data). Under torchrun every rank trains on its own models and rows
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
    t.add_argument("--zoo", "--task", dest="task", default="adult", metavar="TASK_OR_PATH",
                   help="the population: adult, compas, adult-wide, a user population user-... (`auditor zoo "
                        "build --data ...` prints it) or its folder (default adult)")
    t.add_argument("--minutes", type=float, default=10.0,
                   help="time budget in minutes: the step count is cut to fit (default 10; 0: no limit)")
    t.add_argument("--patience", type=int, default=3,
                   help="stop after this many validations without improvement (default 3; 0: never)")
    t.add_argument("--workers", type=int, default=1, help="processes that build missing population members")
    t.add_argument("--requirement", required=True,
                   help=f"one of {', '.join(KINDS)} (aliases: {', '.join(ALIASES)})")
    t.add_argument("--out", metavar="PATH.safetensors",
                   help="editor file (default: metanet_<task>_<kind>.safetensors in the first folder of "
                        "$AUDITOR_EDITOR_DIR, else ~/.auditor/editors: on the editor search path before the "
                        "shipped ones)")
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
    m = esub.add_parser("mend", help="train a MEND gradient editor for one model (fixes given mistakes in one step)",
                        description="Train the `mend` editor's learned gradient step for MODEL on DATA (about a "
                                    "minute on a CPU): it is written beside the model (mend_<model>.safetensors), "
                                    "where `auditor edit MODEL DATA --editor mend --fix ROW=LABEL` finds it.")
    from .common import add_model_data_args

    add_model_data_args(m)
    m.add_argument("--steps", type=int, help="training steps (default: the MEND editor's own)")
    m.add_argument("--out", metavar="PATH.safetensors",
                   help="editor file (default: mend_<model>.safetensors beside the model, where it is found)")
    m.add_argument("--json", metavar="PATH", help="also write the training summary as JSON")
    m.set_defaults(func=run_mend)
    s = esub.add_parser("show", help="print what an editor file was trained on and its validation figures")
    s.add_argument("path")
    s.add_argument("--json", metavar="PATH")
    s.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _bool(text: str) -> bool:
    if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(text)
    return text.lower() in ("1", "true", "yes")


def resolve_population(name: str) -> str:
    """A population task from --zoo: a task name, or the folder (or manifest) of a user population, whose
    parent folder then becomes the zoo folder of this process."""
    from pathlib import Path

    from ..errors import AuditorError
    from ..zoo import TASKS, is_user_task, user_manifest

    path = Path(name).expanduser()
    if path.exists():
        folder = path.parent if path.is_file() else path
        if not (folder / "manifest.json").is_file():
            raise AuditorError(f"{name} is not a population folder (no manifest.json); give a task name "
                               f"({', '.join(TASKS)}, user-...) or the folder `auditor zoo build --data` made")
        os.environ["AUDITOR_ZOO_DIR"] = str(folder.resolve().parent)
        name = folder.name
    if name not in TASKS and not is_user_task(name):
        raise AuditorError(f"no population {name!r}; known: {', '.join(TASKS)}, or a population of models like "
                           "yours built from your data (`auditor zoo build --data my.csv --target COL --like "
                           "MODEL` prints its task name user-...)")
    if is_user_task(name):
        user_manifest(name)  # says how to build it when it is missing
    return name


def progress_bar(stream=None, width: int = 24):
    """A callback drawing `[####....]  40% message` on stderr: redrawn in place on a terminal, one line
    per update otherwise (logs, CI)."""
    stream = stream or sys.stderr
    tty = stream.isatty()
    start = time.perf_counter()

    def show(fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        filled = int(round(width * fraction))
        line = f"[{'#' * filled}{'.' * (width - filled)}] {100 * fraction:3.0f}% {message}"
        if tty:
            stream.write("\r" + line[:200].ljust(120) + ("\n" if fraction >= 1 else ""))
        else:
            stream.write(f"[{time.perf_counter() - start:6.1f} s] {line}\n")
        stream.flush()

    return show


def run_mend(args) -> int:
    """Train and write a MEND editor for one model (what `sample_models/build_mend.py --model` does, installed)."""
    from pathlib import Path

    from ..editors.mend import MendConfig, save_gradient_editor, train_mend
    from ..errors import AuditorError
    from .common import load_model_and_data, refuse_overwriting_inputs

    refuse_overwriting_inputs(args, outputs=("out", "json"))
    if args.steps is not None and args.steps < 1:
        raise AuditorError("--steps must be at least 1")
    bundle, data = load_model_and_data(args)
    model = Path(args.model)
    out = Path(args.out) if args.out else model.with_name(f"mend_{model.stem}.safetensors")
    if out.suffix != ".safetensors":
        raise AuditorError(f"--out {out.name}: a MEND editor is written as .safetensors")
    config = MendConfig(**({"steps": args.steps} if args.steps else {}))
    editor, info = train_mend(bundle, data, config, callback=progress_bar())
    save_gradient_editor(editor, out, info)
    summary = {"file": str(out), "seconds": round(info["seconds"], 1), "validation": info["validation"]}
    print(f"wrote {out} ({summary['seconds']} s): " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else
                                                               f"{k} {v}" for k, v in info["validation"].items()))
    if args.json:
        write_json(args.json, summary)
    return 0


def run_train(args) -> int:
    from ..editors.metanet.train import TrainSettings, requirement_kind, train_editor
    from ..errors import AuditorError
    from ..jobs import editor_output_path
    from ..zoo import build_population, default_size

    task = resolve_population(args.task)
    kind = requirement_kind(args.requirement)
    if args.workers < 1:
        raise AuditorError("--workers must be at least 1")
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    given = {k: v for k, v in vars(args).items() if k in fields and k not in ("requirement", "task")}
    if given.get("n_models") == TrainSettings().n_models:  # the default: the population's own size
        given["n_models"] = default_size(task)
    settings = TrainSettings(**given, task=task, requirement=kind.metric)
    out = args.out or editor_output_path(task, kind.metric)
    rank = int(os.environ.get("RANK", "0"))
    bar = progress_bar() if rank == 0 else (lambda f, m: None)
    if args.workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:  # torchrun ranks build their shares
        for split, limit in (("train", settings.train_limit), ("val", settings.val_limit)):
            build_population(task, settings.n_models, workers=args.workers, splits=(split,), limit=limit,
                             callback=lambda f, m: bar(f, f"building the population: {m}"))
    info = train_editor(settings, out=out, callback=bar, device=None if args.device == "auto" else args.device,
                        minutes=args.minutes or None, patience=args.patience or None)
    if rank == 0:
        bar(1.0, f"done: {info['training']['stopped']}")
        _print_info(info, str(out))
        if args.json:
            write_json(args.json, info)
    return 0


def _print_info(info: dict, path: str) -> None:
    tr = info["training"]
    print(f"{path}: {info['requirement']} editor for {info['task']} MLPs "
          f"({info['family']['n_members']} training members, {tr.get('steps_done', tr['steps'])} steps, "
          f"{tr['seconds']} s, "
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
