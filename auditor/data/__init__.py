"""Data sets: built-in names, CSV files with a schema, and a user's own image case (.npz, or a folder or
.zip of image files)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import AuditorError
from .base import CSV_DOC, EVAL_SPLITS, FORMATS_DOC, NPZ_DOC, SPLITS, AuditData, Split, Stamp, stratified_split
from .folders import FOLDER_DOC, load_image_folder
from .images import (
    NPZ_ALIASES,
    NPZ_KEYS,
    add_cue,
    load_digits_data,
    load_digits_spurious,
    load_digits_trojan,
    load_npz_case,
    poison,
    spurious_cue,
    trojan_trigger,
)
from .tabular import (
    ADULT_SCHEMA,
    COMPAS_SCHEMA,
    TabularSchema,
    describe_inputs,
    fit_preprocessing,
    from_frames,
    load_adult,
    load_compas,
    load_csv,
    read_csv,
    transform,
)

BUILTIN: dict[str, Callable[..., AuditData]] = {
    "adult": load_adult,
    "compas": load_compas,
    "digits": load_digits_data,
    "digits-trojan": load_digits_trojan,
    "digits-spurious": load_digits_spurious,
}
TABULAR_BUILTIN = {"adult", "compas"}


def load_data(source: str | Path, schema: TabularSchema | None = None, spec=None, *,
              train: str | Path | None = None, val: str | Path | None = None) -> AuditData:
    """A built-in name, a CSV/Parquet path (with a schema), an `.npz` image case, or a folder (or .zip)
    of image files in class folders (`load_image_folder`).

    With a model `spec`, tabular data is transformed by the model's stored preprocessing (or,
    when it has none, read as numeric columns in the order the spec lists). For a CSV, `train`
    (and `val`) name the files of the user's own training (and validation) rows, and `source` holds
    the test rows; or `schema.split_column` names a column that says train/val/test per row; with
    neither, the whole file is audited by default (`data.default_split == "all"`). See docs/formats.md.
    """
    name = str(source)
    tabular_file = Path(name).suffix.lower() in (".csv", ".parquet", ".tsv", ".txt")
    named = None
    if spec is not None and tabular_file and schema is not None:  # a model fitted on an unnamed array
        named = _name_columns(spec, schema, name)
    prep = getattr(spec, "preprocessing", None)
    features = None
    if spec is not None and prep is None and spec.input_kind == "tabular":
        features = spec.input.get("features")
    if (train is not None or val is not None) and not tabular_file:
        raise AuditorError(f"--train-csv/--val-csv/--test-csv take a user's CSV or Parquet files, not {name!r}; "
                           f"see {CSV_DOC}")
    if schema is not None and schema.split_column and not tabular_file:
        raise AuditorError(f"--split-column applies to a user's CSV or Parquet file, not {name!r}")
    if name in BUILTIN:
        if name in TABULAR_BUILTIN:
            return BUILTIN[name](preprocessing=prep)
        return BUILTIN[name]()
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz_case(path)
    if path.is_dir() or suffix == ".zip":
        return load_image_folder(path, spec)
    if suffix in (".csv", ".parquet", ".tsv", ".txt"):
        if schema is None:
            raise AuditorError(f"{path.name}: a CSV needs a schema: give --target COLUMN (and --protected, "
                               f"--categorical, --positive as needed; see {CSV_DOC})")
        data = load_csv(path, schema, preprocessing=prep, features=features, train_path=train, val_path=val)
        if named:
            data.notes.insert(0, named)
        return data
    if not path.exists():
        raise AuditorError(f"unknown data {name!r}: use a built-in name ({', '.join(BUILTIN)}), the path of a "
                           ".csv, .parquet or .npz file, or a folder (or .zip) of images in class folders")
    raise AuditorError(f"unknown data format {suffix!r} for {path.name}; use .csv, .parquet or .npz, or a folder "
                       f"(or .zip) of images in class folders ({FOLDER_DOC})")


def _name_columns(spec, schema: TabularSchema, source: str) -> str | None:
    """`sklearn_format.name_columns` for a converted model fitted on an unnamed array (its columns read from
    the CSV's header only, without reading the file)."""
    from ..models.sklearn_format import name_columns, unnamed_columns

    if unnamed_columns(spec) is None:
        return None
    columns: list = []
    if not schema.inputs and Path(source).is_file():
        import pandas as pd

        columns = [str(c).strip() for c in (
            pd.read_parquet(source).columns if Path(source).suffix.lower() == ".parquet" else
            pd.read_csv(source, nrows=0, sep=None, engine="python").columns)]
    return name_columns(spec, schema.inputs, columns, Path(source).name)


__all__ = ["ADULT_SCHEMA", "BUILTIN", "COMPAS_SCHEMA", "CSV_DOC", "EVAL_SPLITS", "FOLDER_DOC", "FORMATS_DOC",
           "NPZ_ALIASES", "NPZ_DOC", "NPZ_KEYS", "SPLITS", "AuditData", "Split", "Stamp",
           "TabularSchema", "add_cue", "describe_inputs", "fit_preprocessing", "from_frames", "load_adult",
           "load_compas", "load_csv", "load_data", "load_digits_data", "load_image_folder", "load_digits_spurious",
           "load_digits_trojan", "load_npz_case", "poison", "read_csv", "spurious_cue", "stratified_split",
           "transform", "trojan_trigger"]
