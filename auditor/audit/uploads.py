"""Files a person uploads in the dashboard: written under a safe name for the loaders, and a CSV's
first rows read to offer its columns as schema choices."""
from __future__ import annotations

import functools
import io
import re
from pathlib import Path

import pandas as pd

from ..errors import AuditorError

UPLOAD_PREFIX = "auditor-upload-"
# the positive-label choice for a CSV target of more than two values read as that many classes
EVERY_VALUE_A_CLASS = "(none: every value is a class of its own)"
UPLOAD_KEEP_HOURS = 24.0


def upload_folder(keep_hours: float = UPLOAD_KEEP_HOURS) -> Path:
    """A new private folder for one load's uploaded files; upload folders older than `keep_hours`
    (their models and data were read into memory long ago) are removed first."""
    import shutil
    import tempfile
    import time

    cutoff = time.time() - keep_hours * 3600
    for old in Path(tempfile.gettempdir()).glob(UPLOAD_PREFIX + "*"):
        try:
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX))


def discard_upload(folder: str | Path) -> None:
    """Remove a load's upload folder (the load failed: nothing refers to it)."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


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
    from ..data.tabular import csv_dialect, text_encoding

    sep, decimal = csv_dialect(data[:1 << 16])
    encoding = text_encoding([data], "the uploaded file")
    try:
        return pd.read_csv(io.BytesIO(data), nrows=200, skipinitialspace=True, sep=sep, decimal=decimal,
                           encoding=encoding)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise AuditorError(f"the uploaded file is not a readable CSV: {str(exc).splitlines()[0][:160]}") from None


def csv_values(data: bytes, column: str, limit: int = 1000) -> list[str]:
    """The distinct values of one column over every row of an uploaded CSV (as text, sorted; at most
    `limit`), to offer as the positive label: the first rows may hold only one outcome."""
    from ..data.tabular import csv_dialect, text_encoding

    sep, _ = csv_dialect(data[:1 << 16])
    encoding = text_encoding([data], "the uploaded file")
    try:
        col = pd.read_csv(io.BytesIO(data), usecols=[column], dtype=str, skipinitialspace=True, sep=sep,
                          encoding=encoding)[column]
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise AuditorError(f"the uploaded file is not a readable CSV: {str(exc).splitlines()[0][:160]}") from None
    return sorted(col.dropna().str.strip().unique().tolist())[:limit]


# -- which trigger or cue an uploaded model is tested with ---------------------------------------
# Built-in Trojan/cue data stamps the trigger (cue) a *sample* model was trained with. Paired with any
# other model it would test a trigger that model may never have seen: a green "attack success 0 %"
# that means nothing. So the page asks, and these say what to ask and what each answer loads.
SAMPLE_FOR_DATA = {"digits-trojan": "digits_cnn_trojan", "digits-spurious": "digits_cnn_spurious"}
STAMP_CHOICES = ("sample", "case", "none")


def is_text_column(column: pd.Series) -> bool:
    """Whether a column holds text (pre-selected as categorical on the Load page): NumPy `object`
    columns and pandas' string dtype (the default for text under pandas 3), not numbers or booleans."""
    return bool(pd.api.types.is_string_dtype(column.dtype) or pd.api.types.is_object_dtype(column.dtype))


def is_sample_model(bundle, data_name: str) -> bool:
    """Whether `bundle` is the sample model whose trigger/cue built-in `data_name` stamps (or an edited copy)."""
    sample = SAMPLE_FOR_DATA.get(data_name)
    return sample is not None and (bundle.spec.provenance or {}).get("name") == sample


@functools.lru_cache(maxsize=4)
def _builtin_stamp_label(data_name: str) -> str:
    from ..data import BUILTIN
    from ..present import stamp_label

    return stamp_label(BUILTIN[data_name]())


def stamp_question(bundle, data_name: str) -> dict | None:
    """None when built-in `data_name` may be paired with `bundle` as is (no stamp, or the model is that
    sample; `bundle` None: not loaded yet, so ask); else what to ask: {"question", "options": {choice:
    label}, "help"}. Choices: "sample" (the built-in stamp, labelled as the sample's), "case" (the
    model's own, from an `.npz` case), "none" (clean data only)."""
    if data_name not in SAMPLE_FOR_DATA or (bundle is not None and is_sample_model(bundle, data_name)):
        return None
    kind = "trigger" if data_name.endswith("trojan") else "cue"
    sample_label = _builtin_stamp_label(data_name)
    return {"question": f"Which {kind} does this model have? Built-in {data_name!r} stamps the {kind} of the "
                        f"sample model {SAMPLE_FOR_DATA[data_name]!r}, not necessarily your model's.",
            "options": {"sample": f"{sample_label[0].upper()}{sample_label[1:]}",
                        "case": f"My model's own {kind}: from an .npz case (images, labels, target, mask and "
                                "pattern)",
                        "none": f"No {kind}: clean digits only (accuracy; no attack success can be measured)"},
            "help": f"Testing a {kind} the model never had reports it clean whatever it learned; the verdict, "
                    f"the sidebar and the report name the {kind} that was tested."}


def data_for_stamp_choice(data_name: str, choice: str | None) -> str | None:
    """The built-in data to load for an answer to `stamp_question` (`None`: load the user's `.npz` case)."""
    if choice not in STAMP_CHOICES:
        raise AuditorError(f"choose which trigger or cue applies ({', '.join(STAMP_CHOICES)}); got {choice!r}")
    if choice == "case":
        return None
    return data_name if choice == "sample" else "digits"


DRAFTED_SPEC_NAME = "drafted_spec.json"  # what the dashboard offers the drafted spec as (and names it by)


def load_with_drafted_spec(model_path: str | Path, read_data, *, arch_file=None, arch_class=None,
                           trust_code: bool = False):
    """A model that carries no spec, loaded with one drafted from the data (`auditor spec init`'s
    `draft_spec`): `read_data(spec)` reads the data (without a spec for the draft, then as the model will
    see it). Returns the bundle, the data and the `Draft` (what was guessed, what the user must confirm)."""
    from ..data.folders import MixedImageSizes
    from ..models import load_model
    from ..models.draft import draft_spec, reading_at_input_size

    sized = {}
    try:
        data = read_data(None)
    except MixedImageSizes:  # photos of several sizes: at the input size the model file fixes, if it does
        got = reading_at_input_size(Path(model_path))
        if got is None:
            raise
        reading, sized = got
        data = read_data(reading)
    draft = draft_spec(model_path, data, arch_file=arch_file, arch_class=arch_class, trust_code=trust_code, **sized)
    bundle = load_model(model_path, spec=draft.spec, arch_file=arch_file, arch_class=arch_class,
                        trust_code=trust_code)
    return bundle, read_data(bundle.spec), draft
