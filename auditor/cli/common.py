"""Options and helpers shared by the subcommands: model, data, requirements, output."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AuditorError, inert

if TYPE_CHECKING:  # the modules themselves are imported when a command runs: `--help` stays light
    from ..data import AuditData, TabularSchema
    from ..models import ModelBundle

# auditor.models.reading.DEFAULT_MAX_BYTES in MiB, written out so that registering the arguments
# does not import torch (tests/test_cli_startup.py keeps the two equal).
DEFAULT_MAX_MODEL_MB = 512.0


def _csv_list(text: str | None) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()] if text else []


def add_csv_schema_args(p, prefix: str = "") -> None:
    """--target, --positive, --protected, --categorical, --inputs: how a CSV's columns are read
    (`schema_from_args`)."""
    p.add_argument("--target", help=f"{prefix}the target column")
    p.add_argument("--positive", help=f"{prefix}the target value that counts as the positive outcome")
    p.add_argument("--protected", help=f"{prefix}comma-separated protected attributes (grouped by, not model inputs)")
    p.add_argument("--categorical", help=f"{prefix}comma-separated categorical columns")
    p.add_argument("--inputs", help=f"{prefix}comma-separated model input columns (default: all but target "
                                    "and protected)")


def add_model_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file: .safetensors (spec inside), .onnx, .pt2 (torch.export), .skops, "
                   "or a state dict .pt with --spec")
    p.add_argument("data", nargs="?", help="built-in data (adult, compas, digits, digits-trojan, digits-spurious), "
                                           "a .csv/.parquet with --target, an .npz image case, or a folder (or "
                                           ".zip) of images in class folders (formats: docs/formats.md); may be "
                                           "left out when --test-csv names the file")
    p.add_argument("--spec", help="JSON model spec for a state dict (or to override a stored one)")
    add_csv_schema_args(p, "CSV: ")
    p.add_argument("--split", default=None, choices=["all", "train", "val", "test"],
                   help="rows to evaluate on: all, train, val or test (default: test for built-in data and data "
                        "with a partition; all for a CSV or .npz given without one)")
    p.add_argument("--train-csv", metavar="FILE", help="CSV: your own training rows (preprocessing is fitted on "
                   "them when the model has none stored; editors draw clean samples from them); DATA (or "
                   "--test-csv) then holds the test rows")
    p.add_argument("--val-csv", metavar="FILE", help="CSV: your own validation rows (with --train-csv; default: "
                   "20%% of the training rows are held out)")
    p.add_argument("--test-csv", metavar="FILE", help="CSV: the test rows (the same as giving the file as DATA)")
    p.add_argument("--split-column", metavar="COL", help="CSV: a column whose values (train, val or test) say "
                   "which split each row belongs to; it is not a model input")
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


def add_editor_setting_args(p: argparse.ArgumentParser) -> None:
    """--layer, --set and --fix: what an edit is told beyond its editor, samples and seed."""
    p.add_argument("--layer", help="layer to edit (rank-one editors; default: the top-ranked one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other editor setting, e.g. --set max_edits=4 (repeatable)")
    p.add_argument("--fix", action="append", default=[], metavar="ROW=LABEL",
                   help="a mistake to fix: row ROW of --split (or SPLIT:ROW) should get LABEL (repeatable)")
    p.add_argument("--fixes", metavar="FILE.csv",
                   help="many mistakes to fix at once: a CSV with columns row (index into --split, or SPLIT:ROW) "
                        "and label, or (tabular data) the model's input columns and label; labels by name or index")


def schema_from_args(args) -> TabularSchema | None:
    if not args.target:
        return None
    from ..data import TabularSchema

    return TabularSchema(target=args.target, positive=args.positive, protected=_csv_list(args.protected),
                         categorical=_csv_list(args.categorical),
                         inputs=_csv_list(args.inputs) or None, split_column=getattr(args, "split_column", None))


def data_source(args) -> str:
    """DATA, or the file --test-csv names (given once); refuses a partition that does not add up."""
    data, test_csv = getattr(args, "data", None), getattr(args, "test_csv", None)
    train_csv = getattr(args, "train_csv", None)
    if test_csv and data and Path(test_csv) != Path(data):
        raise AuditorError(f"the test rows are given twice (DATA {data} and --test-csv {test_csv}); give one")
    if test_csv and not train_csv:
        raise AuditorError("--test-csv goes with --train-csv (your own partition); to audit one file give it as "
                           "DATA, with --split-column COL when a column says train/val/test")
    source = data or test_csv
    if not source:
        raise AuditorError("give DATA: a built-in name (adult, compas, digits, digits-trojan, digits-spurious), "
                           "a .csv/.parquet with --target, an .npz image case, a folder (or .zip) of images in class "
                           "folders, or --train-csv and --test-csv")
    if (train_csv or getattr(args, "split_column", None)) and not args.target:
        raise AuditorError(f"{Path(source).name}: a CSV needs a schema: give --target COLUMN "
                           "(see docs/formats.md#csv-and-schema-options)")
    return source


def load_model_and_data(args) -> tuple[ModelBundle, AuditData]:
    from ..data import load_data
    from ..evaluate import check_compatible
    from ..models import load_model

    bundle = load_model(args.model, spec=args.spec, max_bytes=int(args.max_model_mb * 2**20),
                        arch_file=getattr(args, "arch_file", None), arch_class=getattr(args, "arch_class", None),
                        trust_code=getattr(args, "trust_code", False))
    source = data_source(args)
    data = load_data(source, schema_from_args(args), spec=bundle.spec, train=getattr(args, "train_csv", None),
                     val=getattr(args, "val_csv", None))
    check_compatible(bundle, data)
    warn_foreign_stamp(bundle, str(source))
    args.data = source
    if hasattr(args, "split"):
        args.split = data.resolve_split(args.split)
        if Path(source).is_file():  # a user's file: say which rows are audited
            print(announce_rows(data, args.split))
    return bundle, data


def warn_foreign_stamp(bundle, data_name: str) -> None:
    """On stderr: a built-in trigger/cue tested on a model that is not that sample tests the sample's
    trigger, not necessarily the model's (a clean verdict there is no all-clear)."""
    from ..audit.uploads import stamp_question

    question = stamp_question(bundle, data_name)
    if question is not None:
        stated = question["question"].split("? ", 1)[-1]
        print(f"auditor: note: {stated} Give your model's own .npz case to test its own "
              "(see docs/formats.md#image-cases-npz).", file=sys.stderr)


def announce_rows(data: AuditData, split: str) -> str:
    """The line a command prints about the rows it audits (louder when no partition was given)."""
    line = data.describe_split(split)
    if data.default_split == "all" and split == "all":
        how = ("add train_images/train_labels to the .npz" if data.kind == "image"
               else "give --train-csv/--test-csv or --split-column")
        line += (" -- no partition given, so every row is audited; editors that need clean rows draw them from "
                 f"{data.partition.get('train', 'a random part of it')} ({how} to choose; see docs/formats.md)")
    return line


def write_json(path: str | Path, payload: dict) -> None:
    """Write through a fresh file renamed into place (a link at `path` is replaced, never written through)."""
    from ..atomic import write_file

    path = Path(path)
    if path.is_dir():
        raise AuditorError(f"cannot write {path}: it is a folder; name a file")
    try:
        write_file(path, json.dumps(payload, indent=2, sort_keys=True))
    except OSError as exc:
        raise AuditorError(f"cannot write {path}: {exc.strerror}") from None


_INPUT_FLAGS = ("model", "data", "spec", "train_csv", "val_csv", "test_csv", "arch_file")


def refuse_overwriting_inputs(args, outputs=("out", "report", "pdf", "json")) -> None:
    """Refuse, before anything runs, an output path that is one of the inputs or the audit log (its database,
    anchor or key; the same file by any name: a link, `..`, another spelling) or a folder, so that a vendor's
    original or the audit history is never overwritten."""
    from ..atomic import same_file
    from ..store import default_db_path, default_key_path

    inputs = [(f, getattr(args, f, None)) for f in _INPUT_FLAGS]
    db = getattr(args, "db", None) or default_db_path()  # the audit log, its anchor and key: never outputs
    inputs += [("db", str(db)), ("db", f"{db}.anchor"),
               ("log_key", str(getattr(args, "log_key", None) or default_key_path()))]
    inputs = [(f, p) for f, p in inputs if isinstance(p, str) and p and Path(p).exists()]
    for out_flag in outputs:
        out = getattr(args, out_flag, None)
        if not out:
            continue
        if Path(out).is_dir():
            raise AuditorError(f"--{out_flag.replace('_', '-')} {out} is a folder: name a file in it")
        for in_flag, path in inputs:
            if same_file(out, path):
                raise AuditorError(f"--{out_flag.replace('_', '-')} {out} is the input {in_flag.replace('_', '-')} "
                                   f"{path}: it would be overwritten; write to another file")


MAX_CELL = 200  # characters of one table cell


def _cell(value: object) -> str:
    s = inert(value)
    return s if len(s) <= MAX_CELL else s[:MAX_CELL - 3] + "..."


def format_table(rows: list[list[str]], header: list[str]) -> str:
    """Rows under a header, in columns; values made inert (no terminal escapes) and cut to MAX_CELL."""
    header = [_cell(c) for c in header]
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def fmt(value: float | None, key: str | None = None) -> str:
    """A number for the terminal: with `key` (a metric), in its unit as the dashboard and the report show
    it (`auditor.present.format_value`: 0.0099 -> `0.99 %`, gaps in pp, counts as integers)."""
    if value is None:
        return "-"
    if key is not None:
        from ..present import format_value

        return format_value(key, value)
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def fmt_interval(iv: dict | None, key: str) -> str:
    """`[0.25 – 1.97 %]` for a dict with `low`/`high`, else empty."""
    if not iv or iv.get("low") is None or iv.get("high") is None:
        return ""
    from ..present import format_interval

    return f"[{format_interval(key, iv['low'], iv['high'])}]"
