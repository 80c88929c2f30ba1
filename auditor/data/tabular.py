"""Tabular data: a CSV plus a schema, and the vendored UCI Adult and ProPublica COMPAS sets.

Preprocessing (standardise numeric columns, one-hot encode categorical ones) is fitted on the
training split only and stored as plain JSON, so it travels in the model file.
"""
from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..budgets import check_matrix
from ..errors import AuditorError
from .base import CSV_DOC, SPLITS, AuditData, Split, stratified_split

FILES = Path(__file__).parent / "files"


@dataclass
class TabularSchema:
    """Which column is the target (and its positive label), which are protected, which are
    categorical, and which raw columns the model reads (default: all but target and protected)."""

    target: str
    positive: str | None = None
    protected: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    inputs: list[str] | None = None
    log1p: list[str] = field(default_factory=list)
    labels: list[str] | None = None  # display names of the negative and positive outcome
    split_column: str | None = None  # a column whose values (train/val/test) say which split a row is in
    fill_missing: bool = False  # when fitting: inputs with missing values get a "fill" (see `fit_preprocessing`)

    def input_columns(self, frame: pd.DataFrame) -> list[str]:
        if self.inputs is not None:
            return list(self.inputs)
        skip = {self.target, *self.protected, self.split_column}
        return [c for c in frame.columns if c not in skip]

    def to_dict(self) -> dict:
        return asdict(self)


def as_text(col: pd.Series) -> pd.Series:
    """Values as strings, a missing value as "nan" (pandas 3's `astype(str)` keeps NaN as NaN)."""
    return col.astype(object).where(col.notna(), "nan").astype(str)


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        close = ", ".join(map(str, list(frame.columns)[:20]))  # (another separator is read: `csv_dialect`)
        raise AuditorError(f"{what} column(s) {missing} not in the data; its columns are: {close}")


FILL_HINT = ("; if the model's own pipeline fills them (e.g. scikit-learn's SimpleImputer), give the value it fills "
             "in as \"fill\" in the column's entry of the spec's \"preprocessing\" (docs/formats.md, \"Model spec\"; "
             "`auditor spec init` drafts one)")


def _numeric_column(frame: pd.DataFrame, col: str, fill: float | None = None) -> np.ndarray:
    """A numeric input; a missing value is refused, or read as `fill` (the model's own imputation) when given."""
    values = pd.to_numeric(frame[col], errors="coerce")
    bad = values.isna() & frame[col].notna()
    if bad.any():
        shown = frame[col][bad].astype(str).str.strip()
        examples = ", ".join(repr(v) for v in shown.unique()[:3])
        if shown.str.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?").all():
            advice = "they look like numbers written with thousands separators: remove the commas in the file"
        elif (shown.head(50).str.contains(r"\d{1,4}[-/.]\d{1,2}").mean() > 0.9
              and pd.to_datetime(shown.head(50), errors="coerce", format="mixed").notna().mean() > 0.9):
            advice = ("they look like dates: a model reads numbers, so leave the column out of its inputs "
                      "(--inputs COL,COL,...) or turn it into a number (e.g. days since a start date) in the file")
        elif (bad.all() and shown.nunique() == len(shown)) or str(col).lower() in ("id", "row", "index") \
                or str(col).lower().endswith("_id"):
            advice = ("a different value in every row looks like an identifier: leave it out of the model's inputs "
                      "(--inputs COL,COL,...)")
        else:
            advice = "declare it categorical if it is one (--categorical), else fix the values"
        raise AuditorError(f"column {col!r} should be numeric but {int(bad.sum())} of {len(frame)} rows hold other "
                           f"values ({examples}); {advice}")
    if values.isna().any() and fill is not None:
        values = values.fillna(float(fill))
    if values.isna().any():
        raise AuditorError(f"column {col!r} has {int(values.isna().sum())} missing value(s) (blank or NaN) in "
                           f"{len(frame)} rows; the auditor does not impute: fill or drop them in the file, or "
                           f"leave the column out of the model's inputs (--inputs){FILL_HINT}")
    arr = values.to_numpy(dtype=np.float64)
    if not np.isfinite(arr).all() or np.abs(arr).max(initial=0) > 1e30:
        row = int(np.flatnonzero(~np.isfinite(arr) | (np.abs(arr) > 1e30))[0])
        raise AuditorError(f"column {col!r} holds a non-finite or huge value at row {row}: {arr[row]!r}")
    return arr


def _categorical_column(frame: pd.DataFrame, col: str, categories=(), fill: str | None = None) -> pd.Series:
    """A categorical input as text; blanks refused as for a numeric input (they used to become a silent 'nan'
    category, or all-zero rows), unless the fitted categories hold 'nan' itself or `fill` (the model's own
    imputation) says what they are read as."""
    values = frame[col]
    if values.isna().any() and fill is not None:
        values = values.astype(object).where(values.notna(), str(fill))
    if values.isna().any() and "nan" not in [str(v) for v in categories]:
        rows = np.flatnonzero(values.isna().to_numpy())
        raise AuditorError(f"categorical column {col!r} has {len(rows)} missing value(s) (blank or NaN) in "
                           f"{len(frame)} rows (first at row {int(rows[0])}); the auditor does not impute: fill them "
                           "in the file (a word such as 'unknown' makes its own category if the model was trained "
                           f"with one), drop those rows, or leave the column out of the model's inputs (--inputs)"
                           f"{FILL_HINT}")
    return as_text(values)


def fit_preprocessing(frame: pd.DataFrame, inputs: list[str], categorical: list[str],
                      log1p: list[str] = (), fill_missing: bool = False) -> dict:
    """Fit on the training rows: mean/std of numeric inputs, category lists of categorical ones.
    `fill_missing`: an input with missing values gets a "fill", as a SimpleImputer fitted on these rows
    would: a numeric column's median, a categorical one's commonest value (the first in sorted order on a
    tie); the mean/std are then those of the filled column."""
    _require_columns(frame, inputs, "input")
    prep: dict = {"columns": [], "version": 1}
    for col in inputs:
        fill = None
        if fill_missing and frame[col].isna().any() and frame[col].notna().any():
            if col in categorical:
                counts = as_text(frame[col].dropna()).value_counts()
                fill = sorted(counts.index[counts == counts.max()])[0]
            else:
                fill = float(pd.to_numeric(frame[col], errors="coerce").median())
        if col in categorical:
            cats = sorted(_categorical_column(frame, col, fill=fill).unique())
            prep["columns"].append({"name": col, "type": "categorical", "categories": cats,
                                    **({"fill": fill} if fill is not None else {})})
        else:
            x = _numeric_column(frame, col, fill)
            if col in log1p:
                x = np.log1p(np.clip(x, 0, None))
            std = float(x.std())
            if not std > 1e-12 * max(1.0, abs(float(x.mean()))):  # constant (or all but): do not blow up
                std = 1.0
            prep["columns"].append({"name": col, "type": "numeric", "mean": float(x.mean()),
                                    "std": std, "log1p": col in log1p, **({"fill": fill} if fill is not None else {})})
    return prep


def describe_inputs(prep: dict) -> tuple[list[str], dict[str, list[int]]]:
    """Model input names and the raw-feature groups behind them."""
    names: list[str] = []
    groups: dict[str, list[int]] = {}
    for c in prep["columns"]:
        start = len(names)
        if c["type"] == "categorical":
            names.extend(f"{c['name']}={v}" for v in c["categories"])
        else:
            names.append(c["name"])
        groups[c["name"]] = list(range(start, len(names)))
    return names, groups


def input_width(prep: dict) -> int:
    """How many model inputs a fitted preprocessing makes (one per category, one per numeric column)."""
    return sum(len(c.get("categories") or ()) if c.get("type") == "categorical" else 1 for c in prep["columns"])


def transform(frame: pd.DataFrame, prep: dict, what: str = "the data") -> np.ndarray:
    """Apply a fitted preprocessing; unseen categories become all-zero one-hot rows (then scaled, where a
    categorical column has "mean" and "std").

    The output's size (rows x width) is checked against the matrix budget before it is allocated,
    and it is allocated once (no intermediate rows x categories comparisons)."""
    _require_columns(frame, [c["name"] for c in prep["columns"] if not c.get("unused")], "input")
    width = input_width(prep)
    check_matrix(f"{what}: the model inputs", len(frame), width)
    out = np.zeros((len(frame), width), np.float32)
    at = 0
    for c in prep["columns"]:
        if c.get("unused") and c["name"] not in frame:  # the model reads nothing of it: its mean, no category
            at += len(c["categories"]) if c["type"] == "categorical" else 1
            continue
        if c["type"] == "categorical":
            values = _categorical_column(frame, c["name"], c["categories"], c.get("fill")).to_numpy()
            index: dict = {}
            for i, v in enumerate(c["categories"]):
                index.setdefault(str(v), []).append(i)
            for row, v in enumerate(values):
                for i in index.get(v, ()):
                    out[row, at + i] = 1.0
            if "mean" in c:  # one-hot inputs scaled as the vendor's pipeline does (a StandardScaler after them)
                block = slice(at, at + len(c["categories"]))
                out[:, block] = ((out[:, block] - np.asarray(c["mean"])) / np.asarray(c["std"])).astype(np.float32)
            at += len(c["categories"])
        else:
            x = _numeric_column(frame, c["name"], c.get("fill"))
            if c.get("log1p"):
                x = np.log1p(np.clip(x, 0, None))
            z = (x - c["mean"]) / c["std"]
            if not np.isfinite(z.astype(np.float32)).all():
                row = int(np.flatnonzero(~np.isfinite(z.astype(np.float32)))[0])
                raise AuditorError(f"column {c['name']!r} at row {row} holds {x[row]!r}, too far from the "
                                   "values the preprocessing was fitted on to scale")
            out[:, at] = z.astype(np.float32)
            at += 1
    return out


def fill_notes(frame: pd.DataFrame, prep: dict) -> list[str]:
    """What the preprocessing's fills did to this data: how many values of which column were missing."""
    said = []
    for c in prep["columns"]:
        blanks = int(frame[c["name"]].isna().sum()) if c.get("fill") is not None and c["name"] in frame else 0
        if blanks:
            said.append(f"{c['name']!r}: {blanks} read as {c['fill']!r}")
    if not said:
        return []
    return [f"missing input values were filled as the model's preprocessing says (\"fill\"), of {len(frame)} rows: "
            + "; ".join(said)]


def unseen_categories(frame: pd.DataFrame, prep: dict, stored: bool) -> list[str]:
    """A note per categorical column holding values its preprocessing has no category for (they are
    one-hot encoded as all zeros)."""
    notes = []
    for c in prep["columns"]:
        if c["type"] != "categorical" or c["name"] not in frame:
            continue
        values = as_text(frame[c["name"]])
        if c.get("fill") is not None:
            values = values[frame[c["name"]].notna().to_numpy()]  # missing ones are filled (`fill_notes`)
        unseen = values[~values.isin([str(v) for v in c["categories"]])]
        if len(unseen):
            counts = unseen.value_counts()
            shown = ", ".join(f"{v!r} ({n} rows)" for v, n in counts.head(4).items())
            where = "the model's stored preprocessing" if stored else "the training rows"
            more = f", ... ({len(c['categories'])} in all)" if len(c["categories"]) > 6 else ""
            notes.append(f"column {c['name']!r}: {len(unseen)} of {len(values)} rows hold values {where} has no "
                         f"category for ({shown}{', ...' if len(counts) > 4 else ''}); they are encoded as all zeros "
                         f"(known: {', '.join(map(repr, list(c['categories'])[:6]))}{more})"
                         + (f"; intended if {counts.index[0]!r} is the category a drop-first encoding leaves out"
                            if len(counts) == 1 else ""))
    return notes


def target_notes(frame: pd.DataFrame, schema: TabularSchema, positive: str) -> list[str]:
    """A note when the target holds more than two values, or values that differ from the positive label
    only in case or spaces: every value but the positive label is read as the negative outcome."""
    values = as_text(frame[schema.target]).str.strip()
    counts = values.value_counts()
    if len(counts) <= 2:
        return []
    near = [v for v in counts.index if v != positive and v.strip().lower() == positive.strip().lower()]
    shown = ", ".join(f"{v!r} ({n} rows)" for v, n in counts.head(6).items())
    note = (f"target {schema.target!r} holds {len(counts)} values ({shown}{', ...' if len(counts) > 6 else ''}); "
            f"every value but {positive!r} is read as the negative outcome")
    if near:
        note += (f"; {', '.join(map(repr, near))} {'differs' if len(near) == 1 else 'differ'} from {positive!r} only "
                 "in case or spaces: clean the column")
    return [note]


def numeric_inputs(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Already-numeric data taken in the model's column order (no stored preprocessing)."""
    _require_columns(frame, features, "model input")
    return np.stack([_numeric_column(frame, c) for c in features], axis=1).astype(np.float32) \
        if features else np.zeros((len(frame), 0), np.float32)


def class_order(values) -> list[str]:
    """A target's values in class order: by value when every one is a number ("2" before "10"), else as text."""
    values = [str(v) for v in values]
    try:
        return sorted(values, key=lambda v: (float(v), v))
    except ValueError:
        return sorted(values)


def _labels(frame: pd.DataFrame, schema: TabularSchema, positive: str | None = None,
            names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """0/1 labels and the class names; for a target of more than two values without a positive label, class
    indices in `class_order`. With `positive` (and `names`) given, taken as they are (a split of a file whose
    labels were read as a whole, so that every split codes the outcome the same way)."""
    col = frame[schema.target]
    if col.isna().any():
        raise AuditorError(f"target column {schema.target!r} has missing values at rows "
                           f"{np.flatnonzero(col.isna().to_numpy())[:5].tolist()}")
    values = as_text(col).str.strip()
    if positive is not None:
        return (values == positive).to_numpy().astype(np.int64), list(names or [])
    if schema.positive is not None:
        pos = same_number(str(schema.positive), values)
        if not (values == pos).any():
            raise AuditorError(f"positive label {pos!r} never occurs in target {schema.target!r}; "
                               f"its values are {sorted(values.unique())[:10]}")
        y = (values == pos).to_numpy().astype(np.int64)
        others = sorted(set(values.unique()) - {pos})
        negative = others[0] if len(others) == 1 else f"not {pos}"
        names = [negative, pos]
    else:
        uniq = class_order(values.unique())
        if len(uniq) > 2 or names and len(names) > 2:  # several classes: class k is the k-th value in order
            uniq = list(names) if names and len(names) > 2 else uniq  # a part of a file: the whole file's classes
            index = {v: k for k, v in enumerate(uniq)}
            unknown = sorted(set(values.unique()) - set(index))
            if unknown:
                raise AuditorError(f"target {schema.target!r} holds {unknown[:5]} in this part but not in the "
                                   f"classes read from the whole file ({uniq[:10]})")
            return values.map(index).to_numpy().astype(np.int64), list(uniq)
        pos = "1" if "1" in uniq else uniq[-1]
        y = (values == pos).to_numpy().astype(np.int64)
        names = [u for u in uniq if u != pos][:1] + [pos]
    if schema.labels:
        names = list(schema.labels)
    if len(np.unique(y)) < 2:
        raise AuditorError(f"target {schema.target!r} has only one class "
                           f"({values.iloc[0] if len(values) else '?'!r}); an audit needs both outcomes")
    return y, names


def from_frames(name: str, frames: dict[str, pd.DataFrame], schema: TabularSchema,
                preprocessing: dict | None = None, features: list[str] | None = None,
                source: str = "", description: str = "") -> AuditData:
    """Build AuditData from raw train/val/test frames.

    `preprocessing`: a model's stored transform (else one is fitted on train). `features`:
    take these numeric columns as they are (a model with no preprocessing).
    """
    whole = pd.concat(frames.values(), ignore_index=True)
    if len(whole) == 0:
        raise AuditorError(f"data set {name!r} has no rows")
    if len(set(map(str, whole.columns))) != len(whole.columns):
        dup = pd.Index(whole.columns)[pd.Index(whole.columns).duplicated()].tolist()
        raise AuditorError(f"data set {name!r} has duplicated column names: {dup}")
    _require_columns(whole, [schema.target], "target")
    _require_columns(whole, schema.protected, "protected")
    check_protected_values(whole, schema.protected, Path(source).name if _file_size(source) else name, numbered=False)
    _, whole_names = _labels(whole, schema)  # one-class and missing-target errors name the whole file
    positive = _positive_value(whole, schema) if len(whole_names) <= 2 else None  # None: several classes
    inputs = schema.input_columns(whole)
    preprocessing_given = preprocessing is not None
    if features is not None:
        prep = None
        feature_names = list(features)
        feature_groups = {f: [i] for i, f in enumerate(feature_names)}
    else:
        if preprocessing is None:
            preprocessing = fit_preprocessing(frames["train"], inputs, schema.categorical, schema.log1p,
                                              schema.fill_missing)
        prep = preprocessing
        # before naming or allocating anything: rows x one-hot width, and its ratio to the file's size
        shown = Path(source).name if _file_size(source) else name
        origin = f"{shown} with the model's stored preprocessing" if preprocessing_given else \
            f"{shown} with its categorical column(s)"
        check_matrix(origin, len(whole), input_width(prep), _file_size(source))
        feature_names, feature_groups = describe_inputs(prep)
    notes = target_notes(whole, schema, positive) if schema.positive is not None else []
    notes += protected_notes(whole, schema.protected)
    if prep is not None:
        notes += unseen_categories(whole, prep, preprocessing_given)
        notes += fill_notes(whole, prep)
        absent = [c["name"] for c in prep["columns"] if c.get("unused") and c["name"] not in whole]
        if absent:
            notes.append(f"input column(s) {', '.join(map(repr, absent))} are not in the data: the model no longer "
                         "reads them (a data-minimisation edit), so they are left out")
    read = [c["name"] for c in prep["columns"]] if prep is not None else feature_names
    notes += identifier_notes(whole, [c for c in read if c in whole.columns])
    used = [a for a in schema.protected if a in read]
    if used:
        notes.append(f"the model reads protected attribute(s) {', '.join(map(repr, used))} as input(s): its "
                     "decisions may depend on them directly")
    if (features is not None or preprocessing_given) and (schema.inputs or schema.categorical):
        as_categories = {c["name"] for c in prep["columns"] if c["type"] == "categorical"} if prep else set()
        unread = sorted((set(schema.inputs or []) | set(schema.categorical or [])) - set(read))
        as_numbers = sorted(set(schema.categorical or []) & set(read) - as_categories)
        moved = bool(schema.inputs) and set(schema.inputs) == set(read) and list(schema.inputs) != list(read)
        missing = sorted(set(read) - set(schema.inputs)) if schema.inputs else []
        parts = ([f"not read by the model: {', '.join(unread)}"] if unread else []) + \
            ([f"read as numbers, not categories: {', '.join(as_numbers)}"] if as_numbers else []) + \
            ([f"read although not given: {', '.join(missing)}"] if missing else []) + \
            (["given in another order than the model reads them"] if moved else [])
        if parts:  # the spec decides: what was given otherwise is said, column by column
            notes.append(f"the input columns given (--inputs/--categorical) differ from the model's spec, which says "
                         f"which columns it reads and how ({', '.join(read[:12])}{', ...' if len(read) > 12 else ''}): "
                         + "; ".join(parts))
    splits = {}
    class_names: list[str] = []
    for s, frame in frames.items():
        frame = frame.reset_index(drop=True)
        y, class_names = _labels(frame, schema, positive, whole_names)
        try:
            X = numeric_inputs(frame, feature_names) if prep is None else transform(frame, prep, name)
        except AuditorError as exc:  # counts are of this part's rows: say which part
            where = Path(source).name if source and Path(source).suffix else name
            raise AuditorError(f"{where} ({s} rows): {exc}") from None
        groups = frame[schema.protected].apply(as_text).reset_index(drop=True) if schema.protected \
            else pd.DataFrame(index=range(len(frame)))
        splits[s] = Split(torch.from_numpy(X), torch.from_numpy(y), groups, frame)
    return AuditData(name=name, kind="tabular", feature_names=feature_names, feature_groups=feature_groups,
                     protected=list(schema.protected), class_names=class_names, preprocessing=prep,
                     schema=schema.to_dict(), source=source, description=description, notes=notes, **splits)


def identifier_notes(frame: pd.DataFrame, inputs: list[str], min_rows: int = 50) -> list[str]:
    """A warning for each input column that holds a different whole number on every row (or a different
    text value), as identifiers do: read as a model input it says nothing about the person."""
    if len(frame) < min_rows:
        return []
    out = []
    for col in inputs:
        values = frame[col]
        if values.isna().any() or values.nunique() != len(values):
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        whole = numbers.notna().all() and bool((numbers == numbers.round()).all())
        if whole or not numbers.notna().any():
            out.append(f"column {col!r} holds a different {'whole number' if whole else 'value'} on every row, as an "
                       "identifier does, and is read as a model input: if it is an ID, leave it out (--inputs "
                       "lists the columns the model reads)")
    return out


def check_protected_values(frame: pd.DataFrame, protected: list[str], where: str, numbered: bool = True) -> None:
    """A missing protected value is refused: read as a group of its own ("nan") it would count in every
    fairness gap, and dropped it would change the rows audited; the user decides which."""
    for attr in protected:
        missing = frame[attr].isna() | as_text(frame[attr]).str.strip().eq("")
        if missing.any():
            rows = np.flatnonzero(missing.to_numpy())
            at = (f" (data rows {', '.join(map(str, rows[:5].tolist()))}{', ...' if len(rows) > 5 else ''}; 0 is "
                  "the first row after the header)") if numbered else ""
            raise AuditorError(
                f"{where}: protected column {attr!r} has {len(rows)} missing value(s){at}: give them a "
                "value of their own (e.g. 'unknown', which then counts as a group in the "
                "fairness metrics) or drop those rows; they are not guessed")


MANY_GROUPS = 12  # a numeric protected column with more distinct values than this is likely a measurement


def protected_notes(frame: pd.DataFrame, protected: list[str]) -> list[str]:
    """A note per numeric protected column with many distinct values (age, income): every value is a group of
    its own, so the fairness gaps compare tiny groups; bands are the user's to choose, not guessed."""
    notes = []
    for attr in protected:
        values = pd.to_numeric(frame[attr], errors="coerce")
        distinct = int(values.nunique())
        if values.notna().all() and distinct > MANY_GROUPS:
            notes.append(f"protected attribute {attr!r} is numeric with {distinct} distinct values, each read as a "
                         f"group of its own (from {values.min():g} to {values.max():g}): the fairness gaps compare "
                         f"its smallest groups; to audit bands, add a column of them to the file (e.g. {attr}_band "
                         "with values such as '<25', '25-44', '45+') and give that as --protected")
    return notes


def _file_size(source: str) -> int | None:
    try:
        path = Path(source)
        return path.stat().st_size if path.is_file() else None
    except (OSError, ValueError):
        return None


HEADER_MAX_BYTES = 16 * 2**20


def check_columns(path: Path) -> None:
    """Refuse a CSV with more columns than AUDITOR_MAX_COLUMNS from its header line alone: parsing a million
    columns took minutes and gigabytes before any check could run."""
    import csv

    from ..budgets import BudgetError, limit

    cap = int(limit("AUDITOR_MAX_COLUMNS"))
    with open(path, "rb") as f:
        line = f.readline(HEADER_MAX_BYTES + 1)
    if len(line) > HEADER_MAX_BYTES:
        raise BudgetError(f"data file {path.name}: its header line is over {HEADER_MAX_BYTES // 2**20} MB; a CSV "
                          "needs one header row of column names")
    n = len(next(csv.reader([line.decode("utf-8", "replace")]), []))
    if n > cap:
        raise BudgetError(f"data file {path.name} has {n:,} columns, over the limit of {cap:,}; keep the columns the "
                          "model reads and the audit needs, or raise the limit with AUDITOR_MAX_COLUMNS=N if you "
                          "trust the input")


_SEPARATORS = {";": "';'", "\t": "tab", "|": "'|'"}
_DECIMAL_COMMA = re.compile(r"^\s*-?\d+,\d+\s*$")
_DECIMAL_POINT = re.compile(r"^\s*-?\d+\.\d+\s*$")


def csv_dialect(head: bytes) -> tuple[str, str]:
    """(separator, decimal mark) of a CSV from its first bytes: a header line that holds no comma but ';', a
    tab or '|' (as spreadsheets in many locales save it); with ';', a decimal comma when the first rows'
    numbers are written `1,5` and none `1.5`. Else (',', '.')."""
    text = head.decode("utf-8", errors="replace")
    lines = [line for line in text.splitlines()[:200] if line.strip()]
    if not lines or "," in lines[0]:
        return ",", "."
    sep = next((s for s in _SEPARATORS if s in lines[0]), None)
    if sep is None:
        return ",", "."
    body = lines[1:-1] if len(head) >= 1 << 16 else lines[1:]  # a cut last line only when the head was cut
    cells = [c for line in body for c in line.split(sep)]
    comma = sep == ";" and any(_DECIMAL_COMMA.match(c) for c in cells) and not any(
        _DECIMAL_POINT.match(c) for c in cells)
    return sep, "," if comma else "."


def text_encoding(chunks: Iterable[bytes], name: str) -> str:
    """"utf-8" when the file's bytes are UTF-8 (a byte-order mark allowed), else "cp1252" when they are
    Windows-1252 text (what Excel on Windows saves as CSV in western locales); else an error that names the
    file and the fix."""
    import codecs

    utf8, western = codecs.getincrementaldecoder("utf-8")(), codecs.getincrementaldecoder("cp1252")()
    ok_utf8 = ok_western = True
    for chunk in chunks:
        if ok_utf8:
            try:
                utf8.decode(chunk)
            except UnicodeDecodeError:
                ok_utf8 = False
        if ok_western:
            try:
                western.decode(chunk)
            except UnicodeDecodeError:
                ok_western = False
        if not ok_utf8 and not ok_western:
            break
    if ok_utf8:
        try:
            utf8.decode(b"", final=True)  # a character cut at the very end
            return "utf-8"
        except UnicodeDecodeError:
            pass
    if ok_western:
        return "cp1252"
    raise AuditorError(f"data file {name} is neither UTF-8 nor Windows-1252 text; save it as UTF-8 (in Excel: "
                       "'CSV UTF-8 (Comma delimited)')")


def file_chunks(path: Path, size: int = 1 << 20):
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def dialect_note(name: str, sep: str, decimal: str, encoding: str = "utf-8") -> str | None:
    """What `csv_dialect` and `text_encoding` found, said with every result read from the file; None for a
    plain UTF-8 CSV."""
    parts = []
    if sep != ",":
        parts.append(f"as {_SEPARATORS[sep]}-separated" + (" with ',' as the decimal mark" if decimal == "," else "")
                     + " (its header line holds no comma)")
    if encoding == "cp1252":
        parts.append("as Windows-1252 text (it is not UTF-8: accented letters and symbols such as 'é' or '€' are "
                     "read as Excel on Windows writes them)")
    return f"{name} was read " + " and ".join(parts) if parts else None


def read_csv(path: str | Path) -> pd.DataFrame:
    """A CSV (any of the separators `csv_dialect` finds; `frame.attrs["read_as"]` says which) or Parquet."""
    path = Path(path)
    if not path.exists():
        raise AuditorError(f"data file not found: {path}")
    if path.suffix.lower() != ".parquet" and path.is_file():
        check_columns(path)
    sep, decimal = ",", "."
    encoding = text_encoding(file_chunks(path), path.name) if path.suffix.lower() != ".parquet" else "utf-8"
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            with open(path, "rb") as f:
                sep, decimal = csv_dialect(f.read(1 << 16))
            frame = pd.read_csv(path, sep=sep, decimal=decimal, skipinitialspace=True, encoding=encoding)
    except pd.errors.EmptyDataError:
        raise AuditorError(f"data file {path.name} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise AuditorError(f"cannot read {path.name} as CSV: {str(exc).splitlines()[0][:200]}") from None
    if len(frame) == 0:
        raise AuditorError(f"data file {path.name} has a header but no rows")
    if path.suffix.lower() != ".parquet":  # pandas renames a repeated header `x` to `x.1`: refuse instead
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, sep=sep,
                             skipinitialspace=True, encoding=encoding).iloc[0].tolist()
        seen = pd.Series(header).value_counts()
        if (seen > 1).any():
            name = seen.index[0]
            raise AuditorError(f"data file {path.name}: column {name!r} appears {int(seen.iloc[0])} times in "
                               "the header; give every column a distinct name")
    note = dialect_note(path.name, sep, decimal, encoding)
    if note:
        frame.attrs["read_as"] = note
    return frame


def same_number(label: str, values: pd.Series) -> str:
    """`label` as the target spells it: `--positive 1` for a target stored as 1.0 (the one value equal to it
    as a number); `label` itself when it occurs or no single value equals it."""
    if (values == label).any():
        return label
    try:
        want = float(label)
    except ValueError:
        return label
    equal = []
    for v in values.unique():
        try:
            if float(v) == want:
                equal.append(v)
        except ValueError:
            continue
    return str(equal[0]) if len(equal) == 1 else label


def _positive_value(frame: pd.DataFrame, schema: TabularSchema) -> str:
    """The target value read as the positive outcome (as `_labels` decides it for the whole file)."""
    if schema.positive is not None:
        return same_number(str(schema.positive), as_text(frame[schema.target]).str.strip())
    uniq = sorted(as_text(frame[schema.target]).str.strip().unique())
    return "1" if "1" in uniq else uniq[-1]


def split_frame(frame: pd.DataFrame, target: str, seed: int = 0,
                fractions=(0.6, 0.2, 0.2)) -> dict[str, pd.DataFrame]:
    y = as_text(frame[target]).to_numpy()
    parts = stratified_split(y, fractions, seed)
    return {s: frame.iloc[idx].reset_index(drop=True) for s, idx in zip(("train", "val", "test"), parts)}


def _carve_val(train: pd.DataFrame, target: str, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out 20 % of the training rows (stratified, seeded) as validation rows."""
    parts = stratified_split(as_text(train[target]).to_numpy(), (0.8, 0.2, 0.0), seed)
    if len(parts[0]) == 0 or len(parts[1]) == 0:
        raise AuditorError(f"{what} has too few rows ({len(train)}) to hold out validation rows; "
                           f"give --val-csv (or mark rows 'val' in the split column); see {CSV_DOC}")
    return train.iloc[parts[0]].reset_index(drop=True), train.iloc[parts[1]].reset_index(drop=True)


def _check_same_columns(frames: dict[str, tuple[str, pd.DataFrame]], needed: list[str]) -> None:
    """Every file of a partition has the columns the schema reads (named by file)."""
    for _, (name, frame) in frames.items():
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise AuditorError(f"{name} lacks column(s) {missing} that the schema reads; the train, val and "
                               f"test files need the same columns (see {CSV_DOC})")


def partition_by_column(frame: pd.DataFrame, column: str, name: str, target: str,
                        seed: int = 0) -> tuple[dict[str, pd.DataFrame], dict]:
    """Rows marked train/val/test in `column` (val held out of train when no row is marked val)."""
    if column not in frame.columns:
        close = ", ".join(map(str, list(frame.columns)[:20]))
        raise AuditorError(f"--split-column {column!r} is not a column of {name}; its columns are: {close}")
    values = as_text(frame[column]).str.strip()
    bad = sorted(set(values.unique()) - set(SPLITS))
    if bad:
        row = int(np.flatnonzero(~values.isin(SPLITS).to_numpy())[0])
        shown = ", ".join(repr(b) for b in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise AuditorError(f"split column {column!r} of {name} holds {shown} (first at row {row}); expected "
                           f"only train, val or test (see {CSV_DOC})")
    frames = {s: frame[values.to_numpy() == s].reset_index(drop=True) for s in SPLITS}
    for s in ("train", "test"):
        if len(frames[s]) == 0:
            raise AuditorError(f"split column {column!r} of {name} marks no row {s!r}; mark the training rows "
                               f"train and the rows to audit test (val is optional; see {CSV_DOC})")
    part = {"method": f"split column {column!r} of {name}", "train": f"rows of {name} marked train",
            "test": f"rows of {name} marked test", "files": {s: name for s in SPLITS}}
    if len(frames["val"]) == 0:
        frames["train"], frames["val"] = _carve_val(frames["train"], target, seed, f"the train rows of {name}")
        part["val"] = f"20 % of the rows of {name} marked train (stratified, seed {seed}), held out"
        part["train"] = f"the other 80 % of the rows of {name} marked train"
    else:
        part["val"] = f"rows of {name} marked val"
    return frames, part


def load_csv(path: str | Path, schema: TabularSchema, preprocessing: dict | None = None,
             features: list[str] | None = None, seed: int = 0, *, train_path: str | Path | None = None,
             val_path: str | Path | None = None) -> AuditData:
    """Any CSV (or Parquet) plus a schema, partitioned in one of three ways:

    - `train_path` (and optionally `val_path`) given: `path` holds the test rows, `train_path` the
      training rows, `val_path` the validation rows (else 20 % of the training rows are held out);
      metrics are taken on test by default.
    - `schema.split_column` given: that column of `path` says train/val/test for every row (any other
      value is refused); metrics on test by default.
    - neither: the file is split 60/20/20 (stratified, seeded) for the editors that need training and
      validation rows, and metrics are taken on **all** rows by default (`default_split == "all"`).

    `data.partition` says where every split's rows came from (see docs/formats.md).
    """
    name = Path(path).name
    frame = read_csv(path)
    _require_columns(frame, [schema.target], "target")
    _require_columns(frame, schema.protected, "protected")
    check_protected_values(frame, schema.protected, name)
    if val_path is not None and train_path is None:
        raise AuditorError(f"--val-csv needs --train-csv too (the training rows); see {CSV_DOC}")
    if train_path is not None and schema.split_column:
        raise AuditorError("give either --train-csv/--test-csv or --split-column, not both")
    if schema.split_column and schema.split_column in {schema.target, *schema.protected, *(schema.inputs or [])}:
        raise AuditorError(f"--split-column {schema.split_column!r} is also the target, a protected column or "
                           "a model input; the split column must be a column of its own")
    default_split = "test"
    if train_path is not None:
        files = {"test": (name, frame), "train": (Path(train_path).name, read_csv(train_path))}
        if val_path is not None:
            files["val"] = (Path(val_path).name, read_csv(val_path))
        for part_name, part_frame in files.values():
            _require_columns(part_frame, schema.protected, "protected")
            check_protected_values(part_frame, schema.protected, part_name)
        needed = [schema.target, *schema.protected, *schema.input_columns(frame)] if features is None \
            else [schema.target, *schema.protected, *features]
        if preprocessing is not None and features is None:
            needed += [c["name"] for c in preprocessing["columns"]]
        _check_same_columns(files, list(dict.fromkeys(needed)))
        frames = {s: f.reset_index(drop=True) for s, (_, f) in files.items()}
        part = {"method": "files given: " + ", ".join(f"{s} {n}" for s, (n, _) in files.items()),
                "train": files["train"][0], "test": name,
                "files": {s: str(p) for s, p in (("train", train_path), ("val", val_path), ("test", path))
                          if p is not None},
                "arguments": ["--train-csv", str(train_path), *(["--val-csv", str(val_path)] if val_path else [])]}
        if val_path is None:
            tr = files["train"][0]
            frames["train"], frames["val"] = _carve_val(frames["train"], schema.target, seed, tr)
            part["val"] = f"20 % of {tr} (stratified, seed {seed}), held out"
            part["train"] = f"the other 80 % of {tr}"
            part["files"]["val"] = str(train_path)
        else:
            part["val"] = files["val"][0]
        frames = {s: frames[s] for s in SPLITS}
    elif schema.split_column:
        _labels(frame, schema)
        frames, part = partition_by_column(frame, schema.split_column, name, schema.target, seed)
        part["files"] = {s: str(path) for s in SPLITS}
    else:
        _labels(frame, schema)  # missing targets and a single class are named before splitting
        frames = split_frame(frame, schema.target, seed)
        if any(len(f) == 0 for f in frames.values()):
            raise AuditorError(f"{name} has too few rows ({len(frame)}) to split 60/20/20 into train, "
                               "validation and test with both outcomes; give at least 5 rows of each outcome")
        part = {"method": f"no partition given: {name} split at random 60/20/20 (stratified by target, seed "
                          f"{seed}) for editors that need training rows; metrics on all rows unless --split says",
                "train": f"60 % of {name}", "val": f"20 % of {name}", "test": f"20 % of {name}",
                "files": {s: str(path) for s in SPLITS}}
        default_split = "all"
    data = from_frames(Path(path).stem, frames, schema, preprocessing, features, source=str(path))
    read_as = [f.attrs["read_as"] for f in [frame, *([p for _, p in files.values()][1:] if train_path else [])]
               if f.attrs.get("read_as")]
    data.notes = [*read_as, *data.notes]
    data.partition = part
    data.default_split = default_split
    return data


# --- UCI Adult -------------------------------------------------------------------------------
ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education-num", "marital-status",
                 "occupation", "relationship", "race", "sex", "capital-gain", "capital-loss",
                 "hours-per-week", "native-country", "income"]
ADULT_SCHEMA = TabularSchema(
    target="income", positive=">50K", protected=["sex", "race"],
    categorical=["workclass", "education", "marital-status", "occupation", "relationship", "native-country"],
    inputs=["age", "workclass", "education", "education-num", "marital-status", "occupation",
            "relationship", "capital-gain", "capital-loss", "hours-per-week", "native-country"],
    log1p=["capital-gain", "capital-loss"])


def _read_adult(file: str) -> pd.DataFrame:
    with gzip.open(FILES / file, "rt") as f:
        text = f.read()
    frame = pd.read_csv(io.StringIO(text), header=None, names=ADULT_COLUMNS, skipinitialspace=True,
                        comment="|", na_values=[], keep_default_na=False)
    frame = frame.dropna(subset=["income"])
    frame["income"] = frame["income"].str.rstrip(".")
    return frame.reset_index(drop=True)


def load_adult(preprocessing: dict | None = None, seed: int = 0) -> AuditData:
    """UCI Adult, official split: adult.data -> train (90%) + validation (10%), adult.test -> test.

    The model never sees `sex` or `race`; the audit groups by them. `fnlwgt` (a census sampling
    weight, not a property of the person) is not an input. Missing values (`?`) are a category.
    """
    train_full = _read_adult("adult.data.gz")
    test = _read_adult("adult.test.gz")
    parts = stratified_split(train_full["income"].to_numpy(), (0.9, 0.1, 0.0), seed)
    frames = {"train": train_full.iloc[parts[0]], "val": train_full.iloc[parts[1]], "test": test}
    data = from_frames("adult", frames, ADULT_SCHEMA, preprocessing, source="UCI Adult (vendored)",
                       description="UCI Adult census income; official train/test split")
    data.partition = {"method": "UCI Adult's official split (adult.data / adult.test)",
                      "train": f"90 % of adult.data (stratified, seed {seed})",
                      "val": f"10 % of adult.data (stratified, seed {seed})", "test": "adult.test"}
    return data


# --- ProPublica COMPAS -----------------------------------------------------------------------
COMPAS_SCHEMA = TabularSchema(
    target="two_year_recid", positive="1", protected=["race", "sex"], categorical=["c_charge_degree"],
    labels=["no recidivism", "recidivism within two years"],
    inputs=["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count", "c_charge_degree"])


def load_compas(preprocessing: dict | None = None, seed: int = 0) -> AuditData:
    """ProPublica COMPAS two-year recidivism with ProPublica's row filters; split 60/20/20.

    Races with fewer than 50 people after filtering (Asian, Native American) are grouped with
    "Other" so group metrics are not driven by a handful of rows. The COMPAS score itself is
    not an input.
    """
    with gzip.open(FILES / "compas-scores-two-years.csv.gz", "rt") as f:
        raw = pd.read_csv(f)
    raw = raw.loc[:, ~raw.columns.duplicated()]
    keep = ((raw["days_b_screening_arrest"] >= -30) & (raw["days_b_screening_arrest"] <= 30)
            & (raw["is_recid"] != -1) & (raw["c_charge_degree"] != "O") & (raw["score_text"] != "N/A"))
    frame = raw.loc[keep, ["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count",
                           "c_charge_degree", "race", "sex", "two_year_recid"]].reset_index(drop=True)
    counts = frame["race"].value_counts()
    frame["race"] = frame["race"].where(frame["race"].map(counts) >= 50, "Other")
    data = from_frames("compas", split_frame(frame, "two_year_recid", seed), COMPAS_SCHEMA, preprocessing,
                       source="ProPublica COMPAS two-year (vendored)",
                       description="ProPublica COMPAS two-year recidivism, ProPublica's filters")
    data.partition = {"method": f"random 60/20/20 (stratified by outcome, seed {seed})",
                      "train": "60 % of the filtered rows", "val": "20 % of the filtered rows",
                      "test": "20 % of the filtered rows"}
    return data
