"""Files a person uploads in the dashboard: written under a safe name for the loaders, and a CSV's
first rows read to offer its columns as schema choices."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd

from ..errors import AuditorError


def read_upload(data: bytes, filename: str, directory: str | Path) -> Path:
    """Write uploaded bytes to `directory` under a sanitised `filename` (the loaders read files)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name).lstrip(".") or "upload"
    path = directory / name
    path.write_bytes(data)
    return path


def csv_columns(data: bytes) -> pd.DataFrame:
    """The first rows of an uploaded CSV, to offer its columns as schema choices."""
    try:
        return pd.read_csv(io.BytesIO(data), nrows=200, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise AuditorError(f"the uploaded file is not a readable CSV: {str(exc).splitlines()[0][:160]}") from None
