"""`auditor spec init MODEL DATA [data options] --out spec.json`: draft a model spec.

Reads the input width and kind off the weights (or a probe run of an ONNX graph or your own class),
the class names off the data, and whether the CSV's columns look standardised already; prints what
it guessed and what you must confirm, writes the spec and checks that the model evaluates with it.
Formats: docs/formats.md ("Model spec"). Exit 0 written, 2 bad input (nothing written).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from . import COMMANDS
from .common import add_model_data_args


def register(sub) -> None:
    p = sub.add_parser("spec", help=COMMANDS["spec"], description="Model specs (docs/formats.md, 'Model spec').")
    actions = p.add_subparsers(dest="spec_command", metavar="ACTION")
    init = actions.add_parser("init", help="draft a spec from MODEL and DATA",
                              description="Draft a spec for MODEL (a state dict .pt/.pth/.bin/.ckpt, a "
                                          ".safetensors file, an .onnx graph, a torch.export .pt2 archive, a "
                                          "scikit-learn .skops file, or weights for --arch-file) from "
                                          "DATA: input width and kind from the weights or a probe run, class "
                                          "names from the data, whether the CSV's columns look standardised. "
                                          "Prints what it guessed and what you must confirm. Exit 0 written, "
                                          "2 bad input.")
    add_model_data_args(init)
    init.add_argument("--out", required=True, metavar="SPEC.json", help="where to write the drafted spec")
    init.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    init.set_defaults(func=run_init)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _data(args, spec=None, schema=None):
    """DATA as the other commands read it (with the model's spec: as the model will see it)."""
    from ..data import load_data
    from . import common

    source = common.data_source(args)
    extra = {k: v for k, v in (("train", getattr(args, "train_csv", None)), ("val", getattr(args, "val_csv", None)))
             if v}
    return load_data(source, schema or common.schema_from_args(args), spec=spec, **extra)


def _guessed_schema(args):
    """The schema for drafting: text columns with few values read as categorical, missing values filled."""
    from ..data.tabular import read_csv
    from ..models.draft import guess_schema
    from . import common

    schema = common.schema_from_args(args)
    source = common.data_source(args)
    if schema is None or Path(source).suffix.lower() not in (".csv", ".parquet", ".tsv", ".txt"):
        return schema, []
    return guess_schema(read_csv(getattr(args, "train_csv", None) or source), schema)


def run_init(args) -> int:
    from ..data.folders import MixedImageSizes
    from ..errors import AuditorError
    from ..evaluate import evaluate
    from ..models import load_model
    from ..models.draft import draft_spec, reading_at_input_size
    from ..models.reading import resolve_spec
    from ..models.spec import ModelSpec

    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise AuditorError(f"--out must end in .json; got {out.name}")
    if out.exists() and not args.force:
        raise AuditorError(f"{out} exists; pass --force to overwrite it")
    base = resolve_spec(args.spec) if args.spec else None
    max_bytes = int(args.max_model_mb * 2**20)
    schema, guessed = _guessed_schema(args)
    resize = base.input.get("resize") if base is not None and isinstance(base.input, dict) else None
    # image files of several sizes: read at the given spec's size as it resizes them (pixels in [0, 1], the
    # readings spec init tries start from there)
    reading = (ModelSpec(arch={"name": "custom"}, input={k: base.input[k] for k in ("kind", "shape", "resize")
                                                         if k in base.input}) if resize is not None else None)
    sized = {"resize": resize}
    try:
        data = _data(args, spec=reading, schema=schema)
    except MixedImageSizes:  # photos of several sizes: at the input size the model file fixes, if it does
        got = None if reading is not None else reading_at_input_size(Path(args.model), max_bytes)
        if got is None:
            raise
        reading, sized = got
        data = _data(args, spec=reading, schema=schema)
    draft = draft_spec(args.model, data, arch_file=args.arch_file, arch_class=args.arch_class,
                       trust_code=args.trust_code, max_bytes=max_bytes,
                       arch=dict(base.arch) if base is not None else None, **sized)
    # the written spec must load the model and evaluate on the data, else nothing is written
    bundle = load_model(args.model, spec=draft.spec, max_bytes=max_bytes, arch_file=args.arch_file,
                        arch_class=args.arch_class, trust_code=args.trust_code)
    draft.guessed[:0] = guessed
    checked = _data(args, bundle.spec, schema)
    ev = evaluate(bundle, checked, split=checked.resolve_split(None) if hasattr(checked, "resolve_split") else "test")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(draft.spec, indent=2) + "\n")
    except OSError as exc:
        raise AuditorError(f"cannot write {out}: {exc.strerror}") from None
    print(f"drafted {out} for {Path(args.model).name} on {data.name}")
    print("\nguessed:")
    for line in draft.guessed:
        print(f"  {line}")
    print("\nconfirm before you rely on it:")
    for line in draft.confirm + [w for w in ev.warnings if w not in draft.confirm]:
        print(f"  - {line}")
    acc = ev.metrics.get("accuracy")
    print(f"\nchecked: the model loads with it and evaluates on {ev.rows} rows ({ev.split})"
          + (f", accuracy {acc:.4f}" if acc is not None else ""))
    code = (f" --arch-file {args.arch_file} --arch-class {args.arch_class} --trust-code"
            if draft.spec["arch"].get("name") == "custom" else "")
    print(f"next: auditor evaluate {args.model} {args.data} --spec {out}{code} ...", file=sys.stdout)
    return 0

