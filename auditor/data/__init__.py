"""Data sets: built-in names, CSV files with a schema, and a user's own image case (.npz)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import AuditorError
from .base import SPLITS, AuditData, Split, Stamp, stratified_split
from .images import (add_cue, load_digits_data, load_digits_spurious, load_digits_trojan, load_npz_case,
                     poison, spurious_cue, trojan_trigger)
from .tabular import (ADULT_SCHEMA, COMPAS_SCHEMA, TabularSchema, describe_inputs, fit_preprocessing,
                      from_frames, load_adult, load_compas, load_csv, read_csv, transform)

BUILTIN: dict[str, Callable[..., AuditData]] = {
    "adult": load_adult,
    "compas": load_compas,
    "digits": load_digits_data,
    "digits-trojan": load_digits_trojan,
    "digits-spurious": load_digits_spurious,
}
TABULAR_BUILTIN = {"adult", "compas"}


def load_data(source: str | Path, schema: TabularSchema | None = None, spec=None) -> AuditData:
    """A built-in name, a CSV/Parquet path (with a schema) or an `.npz` image case.

    With a model `spec`, tabular data is transformed by the model's stored preprocessing (or,
    when it has none, read as numeric columns in the order the spec lists).
    """
    prep = getattr(spec, "preprocessing", None)
    features = None
    if spec is not None and prep is None and spec.input_kind == "tabular":
        features = spec.input.get("features")
    name = str(source)
    if name in BUILTIN:
        if name in TABULAR_BUILTIN:
            return BUILTIN[name](preprocessing=prep)
        return BUILTIN[name]()
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz_case(path)
    if suffix in (".csv", ".parquet", ".tsv", ".txt"):
        if schema is None:
            raise AuditorError(f"{path.name}: a CSV needs a schema: give --target COLUMN (and --protected, "
                               "--categorical, --positive as needed)")
        return load_csv(path, schema, preprocessing=prep, features=features)
    if not path.exists():
        raise AuditorError(f"unknown data {name!r}: use a built-in name ({', '.join(BUILTIN)}) "
                           "or the path of a .csv, .parquet or .npz file")
    raise AuditorError(f"unknown data format {suffix!r} for {path.name}; use .csv, .parquet or .npz")


__all__ = ["ADULT_SCHEMA", "BUILTIN", "COMPAS_SCHEMA", "SPLITS", "AuditData", "Split", "Stamp",
           "TabularSchema", "add_cue", "describe_inputs", "fit_preprocessing", "from_frames", "load_adult",
           "load_compas", "load_csv", "load_data", "load_digits_data", "load_digits_spurious",
           "load_digits_trojan", "load_npz_case", "poison", "read_csv", "spurious_cue", "stratified_split",
           "transform", "trojan_trigger"]
