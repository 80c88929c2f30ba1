"""Mistakes to fix: `Fixes` (inputs, requested labels, equivalent inputs) built from data rows.

Equivalent inputs measure generality: an edit that fixes "this image is a 3" should also fix the
same image shifted by half a pixel (linear interpolation) or with a little noise; for a tabular
row, the same row with its numeric features nudged by a small fraction of their spread
(categorical one-hot inputs are kept). Half a pixel, not one: on 8x8 digits a one-pixel shift is
not equivalent for a small CNN trained without augmentation (the shipped digits_cnn keeps its
own correct prediction on only 42-70% of one-pixel shifted test images, on 81-97% at half a
pixel, and on 99% with the noise).

    >>> from auditor.data import load_data
    >>> data = load_data("digits")
    >>> fixes = parse_fixes(["12=3", "40=7"], data)        # rows 12 and 40 of the test split
    >>> fixes.X.shape, fixes.X_equiv.shape
    (torch.Size([2, 1, 8, 8]), torch.Size([16, 1, 8, 8]))
"""
from __future__ import annotations

import numpy as np
import torch

from .data.base import EVAL_SPLITS, AuditData
from .errors import AuditorError
from .requirements import Fixes

IMAGE_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (rows, cols): down, up, right, left by one pixel


def shift_images(X: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Images (N, C, H, W) shifted by (dy, dx) pixels; uncovered pixels are zero (the background)."""
    out = torch.zeros_like(X)
    H, W = X.shape[-2:]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = X[..., ys, xs]
    return out


def numeric_columns(data: AuditData) -> list[int]:
    """Input indices of numeric (not one-hot) features: from the stored preprocessing, else every
    input whose training values are not all 0/1."""
    prep = data.preprocessing
    if prep and prep.get("columns"):
        return sorted(i for c in prep["columns"] if c.get("type") == "numeric"
                      for i in data.feature_groups.get(c["name"], []))
    X = data.train.X.reshape(len(data.train), -1)
    binary = ((X == 0) | (X == 1)).all(0)
    return [int(i) for i in torch.nonzero(~binary).flatten()]


def equivalents(data: AuditData, X: torch.Tensor, n_noise: int = 4, noise: float | None = None,
                seed: int = 0, shift: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Equivalent copies of each row of X and the index of the row each copy came from.

    Images: shifts by `shift` pixels (0 < shift <= 1, linear interpolation) up, down, left and
    right, and `n_noise` copies with Gaussian noise (std `noise`, default 0.05 of the [0, 1]
    range), clipped to [0, 1]. Tabular: `n_noise + 4` copies whose numeric inputs move by
    Gaussian noise of `noise` (default 0.1) times their training spread.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(X)
    if data.kind == "image":
        noise = 0.05 if noise is None else noise
        if not 0 < shift <= 1:
            raise AuditorError(f"shift must be in (0, 1] pixels, got {shift}")
        copies = [(1 - shift) * X + shift * shift_images(X, dy, dx) for dy, dx in IMAGE_SHIFTS]
        for _ in range(n_noise):
            copies.append((X + noise * torch.randn(X.shape, generator=g)).clamp(0.0, 1.0))
    else:
        noise = 0.1 if noise is None else noise
        cols = numeric_columns(data)
        flat = data.train.X.reshape(len(data.train), -1)
        spread = flat[:, cols].std(0) if cols else torch.zeros(0)
        copies = []
        for _ in range(n_noise + len(IMAGE_SHIFTS)):
            c = X.clone().reshape(n, -1)
            if cols:
                c[:, cols] += noise * spread * torch.randn((n, len(cols)), generator=g)
            copies.append(c.reshape(X.shape))
    X_equiv = torch.cat(copies) if copies else X[:0]
    source = torch.arange(n).repeat(len(copies))
    return X_equiv, source


def make_fixes(data: AuditData, X: torch.Tensor, y, n_noise: int = 4, noise: float | None = None,
               seed: int = 0) -> Fixes:
    """`Fixes` for inputs X with requested labels y, equivalents built automatically."""
    y = torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)
    if len(y) != len(X):
        raise AuditorError(f"{len(X)} inputs but {len(y)} requested labels")
    n_classes = len(data.class_names)
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise AuditorError(f"requested labels must be class indices 0..{n_classes - 1}")
    X_equiv, source = equivalents(data, X, n_noise=n_noise, noise=noise, seed=seed)
    return Fixes(X=X, y=y, X_equiv=X_equiv, y_equiv=y[source])


def parse_label(text: str, class_names: list[str]) -> int:
    """A class name (exact match first) or a class index."""
    text = text.strip()
    if text in class_names:
        return class_names.index(text)
    try:
        idx = int(text)
    except ValueError:
        idx = -1
    if 0 <= idx < len(class_names):
        return idx
    raise AuditorError(f"unknown label {text!r}; use a class name ({', '.join(class_names)}) "
                       f"or an index 0..{len(class_names) - 1}")


def parse_fix(spec: str, data: AuditData, split: str = "test") -> tuple[str, int, int]:
    """`ROW=LABEL` or `SPLIT:ROW=LABEL` -> (split, row, label index)."""
    if "=" not in spec:
        raise AuditorError(f"bad fix {spec!r}: write ROW=LABEL, e.g. 12=3 (row 12 of the {split} split "
                           "should get label 3)")
    row_text, label_text = spec.split("=", 1)
    row_text = row_text.strip()
    if ":" in row_text:
        split, row_text = (s.strip() for s in row_text.split(":", 1))
    if split not in EVAL_SPLITS:
        raise AuditorError(f"bad fix {spec!r}: unknown split {split!r}; choose one of {', '.join(EVAL_SPLITS)}")
    n = len(data.split(split))
    try:
        row = int(row_text)
    except ValueError:
        raise AuditorError(f"bad fix {spec!r}: row {row_text!r} is not an integer index into the "
                           f"{split} split (0..{n - 1})") from None
    if not 0 <= row < n:
        raise AuditorError(f"bad fix {spec!r}: row {row} is outside the {split} split (0..{n - 1})")
    return split, row, parse_label(label_text, data.class_names)


def refuse_conflicts(parsed: list[tuple[str, int, int]], data: AuditData) -> None:
    """One row asked to become two different labels cannot be met: refused, naming the row."""
    wanted: dict[tuple[str, int], int] = {}
    for sp, row, label in parsed:
        if wanted.setdefault((sp, row), label) != label:
            names = data.class_names
            raise AuditorError(f"row {row} of the {sp} split is asked to become both {names[wanted[(sp, row)]]!r} and "
                               f"{names[label]!r}; give each row one label")


def parse_fixes(specs: list[str], data: AuditData, split: str = "test", seed: int = 0) -> Fixes:
    """`Fixes` from specs such as `["12=3", "train:40=>50K"]` (row index into `split` unless the
    spec names one; label by class name or index), with equivalents built automatically."""
    if not specs:
        raise AuditorError("no fixes given: pass at least one ROW=LABEL")
    parsed = [parse_fix(s, data, split) for s in specs]
    refuse_conflicts(parsed, data)
    X = torch.stack([data.split(sp).X[row] for sp, row, _ in parsed])
    return make_fixes(data, X, [label for _, _, label in parsed], seed=seed)


# -- many fixes at once: a CSV or pasted table -------------------------------------------------------
ROW_COLUMN = "row"
LABEL_COLUMNS = ("label", "correct_label", "correct")
MAX_FIXES = 10_000


def _label_column(frame, data: AuditData) -> str:
    target = (data.schema or {}).get("target")
    for name in (*LABEL_COLUMNS, target):
        if name and name in frame.columns:
            return name
    raise AuditorError(f"the fixes table has no label column: name the correct label's column 'label'"
                       f"{f' (or {target!r})' if target else ''}; its columns: {', '.join(map(str, frame.columns))}")


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and value != value) or not str(value).strip()


def fixes_table_specs(frame, data: AuditData, split: str = "test") -> list[str] | None:
    """`SPLIT:ROW=LABEL` specs for a table of `row` (index into `split`, or `SPLIT:ROW`) and `label`
    columns (an optional `split` column names each row's split); None when it has no `row` column."""
    if ROW_COLUMN not in frame.columns:
        return None
    label = _label_column(frame, data)
    splits = frame["split"].astype(str).str.strip() if "split" in frame.columns else None
    out = []
    for i, (row, lab) in enumerate(zip(frame[ROW_COLUMN], frame[label])):
        empty_row, empty_label = _blank(row), _blank(lab)
        if empty_row and empty_label:  # a line of empty cells (",,"): nothing asked
            continue
        if empty_row or empty_label:
            raise AuditorError(f"fixes table row {i + 1}: its {'row' if empty_row else 'label'} is empty")
        row = str(row).strip()
        if row.endswith(".0") and row[:-2].lstrip("-").isdigit():  # pandas reads an int column with a gap as float
            row = row[:-2]
        if splits is not None and ":" not in row:
            row = f"{splits.iloc[i]}:{row}"
        elif ":" not in row:
            row = f"{split}:{row}"
        if isinstance(lab, float) and lab.is_integer():  # a label column with a gap is read as float
            lab = int(lab)
        out.append(f"{row}={str(lab).strip()}")
    return out


def fixes_from_table(frame, data: AuditData, split: str = "test", seed: int = 0) -> tuple[Fixes, list[str]]:
    """`Fixes` from a table and a description of each fix.

    Either rows of the audited data (`row` column: an index into `split`, or `SPLIT:ROW`, and a
    `label` column) or, for tabular data, whole input rows: the model's raw feature columns (as in
    the data's CSV) plus the correct label in `label` (or the data's target column). Labels by class
    name or index. Every problem (a missing column, an unknown label, a row out of range) is an
    AuditorError that names the table row (1 = the first data row)."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise AuditorError("fixes must be a table (rows of the audited data, or input rows, with the correct label)")
    if frame.empty:
        raise AuditorError("the fixes table has no rows")
    if len(frame) > MAX_FIXES:
        raise AuditorError(f"the fixes table has {len(frame)} rows; at most {MAX_FIXES} fixes at once")
    frame = frame.rename(columns=lambda c: str(c).strip())
    specs = fixes_table_specs(frame, data, split)
    if specs is not None:
        for i, spec in enumerate(specs, start=1):
            try:
                parse_fix(spec, data, split)
            except AuditorError as exc:
                raise AuditorError(f"fixes table row {i}: {exc}") from None
        return parse_fixes(specs, data, split, seed=seed), specs
    if data.kind != "tabular":
        raise AuditorError(f"the fixes table needs a '{ROW_COLUMN}' column (row indices into the {split} split) and "
                           f"a 'label' column; its columns: {', '.join(map(str, frame.columns))}")
    label = _label_column(frame, data)
    labels = []
    for i, value in enumerate(frame[label], start=1):
        try:
            labels.append(parse_label(str(value), data.class_names))
        except AuditorError as exc:
            raise AuditorError(f"fixes table row {i}: {exc}") from None
    X = _input_rows(frame.drop(columns=[label]), data)
    names = [f"input {i}={data.class_names[y]}" for i, y in enumerate(labels, start=1)]
    return make_fixes(data, X, labels, seed=seed), names


def _input_rows(frame, data: AuditData) -> torch.Tensor:
    """Model inputs for raw feature rows (the data's preprocessing), or already-numeric input columns."""
    from .data.tabular import numeric_inputs, transform

    prep = data.preprocessing
    try:
        if prep and prep.get("columns"):
            needed = [c["name"] for c in prep["columns"]]
            missing = [c for c in needed if c not in frame.columns]
            if missing:
                raise AuditorError(f"the fixes table lacks the input columns {missing[:8]}; give either a 'row' "
                                   f"column (rows of the audited data) or every input column ({', '.join(needed)}) "
                                   "and 'label'")
            X = transform(frame, prep, "the fixes table")
        else:
            X = numeric_inputs(frame, data.feature_names)
    except AuditorError as exc:
        if "fixes table" in str(exc):
            raise
        raise AuditorError(f"the fixes table: {exc}") from None
    return torch.as_tensor(X, dtype=torch.float32).reshape(len(frame), *data.input_shape)


def read_fixes_csv(path, data: AuditData, split: str = "test", seed: int = 0) -> tuple[Fixes, list[str]]:
    """`fixes_from_table` of a CSV file (see there for the columns)."""
    from pathlib import Path

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise AuditorError(f"fixes file not found: {path}")
    if path.stat().st_size > 64 * 2**20:
        raise AuditorError(f"fixes file {path.name} is over 64 MiB; a fixes table is small")
    try:
        frame = pd.read_csv(path, skipinitialspace=True)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise AuditorError(f"fixes file {path.name} is not a readable CSV: {str(exc).splitlines()[0][:160]}") from None
    try:
        return fixes_from_table(frame, data, split, seed=seed)
    except AuditorError as exc:
        raise AuditorError(f"{path.name}: {exc}") from None


def parse_fixes_text(text: str, data: AuditData, split: str = "test") -> list[str]:
    """Fix specs from pasted text: `ROW=LABEL` items (one a line, or separated by commas or spaces), or a CSV
    with a header naming `row` and `label`. Checked: a bad item is an AuditorError naming it."""
    import io

    import pandas as pd

    text = (text or "").strip()
    if not text:
        return []
    first = text.splitlines()[0].lower()
    if "=" not in first and ROW_COLUMN in [c.strip() for c in first.split(",")]:
        try:
            frame = pd.read_csv(io.StringIO(text), skipinitialspace=True)
        except (ValueError, pd.errors.ParserError) as exc:
            raise AuditorError(f"the pasted table is not readable CSV: {str(exc).splitlines()[0][:160]}") from None
        specs = fixes_table_specs(frame.rename(columns=lambda c: str(c).strip()), data, split)
    else:
        specs = [s for s in text.replace(",", " ").replace(";", " ").split() if s]
    for spec in specs:
        parse_fix(spec, data, split)
    return specs


def fixes_digest(fixes: Fixes) -> str:
    """sha256 over the inputs and requested labels of `fixes` (what an edit's provenance names)."""
    import hashlib

    h = hashlib.sha256()
    for t in (fixes.X, fixes.y):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
