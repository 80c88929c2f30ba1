"""Options and helpers shared by the subcommands: model, data, requirements, output."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AuditorError

if TYPE_CHECKING:  # the modules themselves are imported when a command runs: `--help` stays light
    from ..data import AuditData, TabularSchema
    from ..evaluate import Evaluation
    from ..models import ModelBundle

# auditor.models.reading.DEFAULT_MAX_BYTES in MiB, written out so that registering the arguments
# does not import torch (tests/test_cli_startup.py keeps the two equal).
DEFAULT_MAX_MODEL_MB = 512.0


def _csv_list(text: str | None) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else []


def add_model_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file: .safetensors (spec inside), .onnx, or a state dict .pt with --spec")
    p.add_argument("data", help="built-in data (adult, compas, digits, digits-trojan, digits-spurious), "
                                "a .csv/.parquet with --target, or an .npz image case")
    p.add_argument("--spec", help="JSON model spec for a state dict (or to override a stored one)")
    p.add_argument("--target", help="CSV: the target column")
    p.add_argument("--positive", help="CSV: the target value that counts as the positive outcome")
    p.add_argument("--protected", help="CSV: comma-separated protected attributes (grouped by, not model inputs)")
    p.add_argument("--categorical", help="CSV: comma-separated categorical columns")
    p.add_argument("--inputs", help="CSV: comma-separated model input columns (default: all but target "
                                    "and protected)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to evaluate on")
    p.add_argument("--max-model-mb", type=float, default=DEFAULT_MAX_MODEL_MB,
                   help="refuse model files larger than this (MiB)")
    p.add_argument("--arch-file", metavar="FILE.py", help="your own nn.Module class's Python file "
                   "(runs its code: needs --trust-code); MODEL then holds its weights")
    p.add_argument("--arch-class", metavar="NAME", help="the nn.Module class in --arch-file")
    p.add_argument("--trust-code", action="store_true", help="allow running the code in --arch-file "
                   "(only for code you have read and trust)")


def add_require_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--require", action="append", default=[], metavar="EXPR",
                   help='requirement such as "demographic_parity <= 0.05" (repeatable)')


def schema_from_args(args) -> TabularSchema | None:
    if not args.target:
        return None
    from ..data import TabularSchema

    return TabularSchema(target=args.target, positive=args.positive, protected=_csv_list(args.protected),
                         categorical=_csv_list(args.categorical),
                         inputs=_csv_list(args.inputs) or None)


def load_model_and_data(args) -> tuple[ModelBundle, AuditData]:
    from ..data import load_data
    from ..evaluate import check_compatible
    from ..models import load_model

    bundle = load_model(args.model, spec=args.spec, max_bytes=int(args.max_model_mb * 2**20),
                        arch_file=getattr(args, "arch_file", None), arch_class=getattr(args, "arch_class", None),
                        trust_code=getattr(args, "trust_code", False))
    data = load_data(args.data, schema_from_args(args), spec=bundle.spec)
    check_compatible(bundle, data)
    return bundle, data


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, sort_keys=True))
    except OSError as exc:
        raise AuditorError(f"cannot write {path}: {exc.strerror}") from None


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def print_evaluation(ev: Evaluation, out=None) -> None:
    out = out or sys.stdout
    print(f"data {ev.data_name} ({ev.split} split, {ev.rows} rows), model sha256 {ev.model_sha256[:16]}", file=out)
    print(format_table([[k, fmt(v)] for k, v in ev.metrics.items()], ["metric", "value"]), file=out)
    for attr, groups in ev.groups.items():
        cols = [c for c in next(iter(groups.values()))]
        rows = [[g, *(fmt(vals[c]) for c in cols)] for g, vals in groups.items()]
        print(f"\nby {attr}", file=out)
        print(format_table(rows, ["group", *cols]), file=out)
    if ev.requirements:
        print("\nrequirements", file=out)
        rows = [[r.expr, fmt(r.value), "PASS" if r.passed else "FAIL"] for r in ev.requirements]
        print(format_table(rows, ["requirement", "value", "verdict"]), file=out)
