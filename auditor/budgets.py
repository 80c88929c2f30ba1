"""Memory and time budgets, checked from declared sizes before anything is allocated.

A small file can declare a huge allocation: a model's stored preprocessing with 20 000 categories,
a CSV column with 200 000 distinct values read as categorical, an `.npz` member whose header
declares 10^12 values, an ONNX graph that builds a 16 000 x 16 000 constant. Each reader computes
what it is about to allocate from the declared sizes and calls `check` first; exceeding a budget is
an `AuditorError` (exit 2) naming the input and the limit, and the environment variable that
raises it.

The defaults keep any input of 10 MB or less under about 2 GB of memory. Raise them with:

    AUDITOR_MAX_MATRIX_MB     the input matrix a tabular data set becomes (rows x one-hot width x 4 bytes), 256
    AUDITOR_MAX_AMPLIFICATION that matrix over the size of the file it comes from, above 64 MB, 200
    AUDITOR_MAX_NPZ_MB        the arrays an .npz image case uses, as float32, 256
    AUDITOR_MAX_IMAGES_MB     the arrays a folder or .zip of image files becomes, as float32, 2048
    AUDITOR_MAX_NPZ_RATIO     uncompressed over compressed size of one .npz member above 1 MB, 1000
    AUDITOR_MAX_ONNX_MB       the declared initialisers and constants of an ONNX graph, 512
    AUDITOR_MAX_COLUMNS       the columns of a CSV, counted on its header line before it is parsed, 20000
    AUDITOR_PROBE_MEMORY_MB   the largest tensor (and, in a subprocess, the memory) of a model's probe run, 512
    AUDITOR_PROBE_SECONDS     the time of a probe run that is made in a subprocess, 60
"""
from __future__ import annotations

import os

from .errors import AuditorError

MB = 2**20
DEFAULTS = {"AUDITOR_MAX_MATRIX_MB": 256, "AUDITOR_MAX_AMPLIFICATION": 200, "AUDITOR_MAX_NPZ_MB": 256,
            "AUDITOR_MAX_IMAGES_MB": 2048, "AUDITOR_MAX_NPZ_RATIO": 1000, "AUDITOR_MAX_ONNX_MB": 512,
            "AUDITOR_PROBE_MEMORY_MB": 512,
            "AUDITOR_PROBE_SECONDS": 60, "AUDITOR_MAX_COLUMNS": 20000}
AMPLIFICATION_FLOOR = 64 * MB  # below this a matrix is never refused for its ratio to the file
RATIO_FLOOR = 1 * MB  # a member smaller than this uncompressed is never refused for its ratio


class BudgetError(AuditorError):
    """A declared size is over a budget (raised before allocating it)."""


def limit(name: str) -> float:
    """The budget `name` (an environment variable of `DEFAULTS`), read each time so that tests and
    long-running servers see a change."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return float(DEFAULTS[name])
    try:
        value = float(raw)
    except ValueError:
        raise AuditorError(f"{name}={raw[:40]!r} is not a number") from None
    if not value > 0:
        raise AuditorError(f"{name} must be positive; got {raw[:40]!r}")
    return value


def limit_bytes(name: str) -> int:
    return int(limit(name) * MB)


def size_text(n: float) -> str:
    for unit, scale in (("TB", 2**40), ("GB", 2**30), ("MB", MB), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def check(what: str, declared: float, name: str, *, hint: str = "") -> None:
    """Refuse `what` (the input and the object in it) when `declared` bytes exceed budget `name`."""
    cap = limit_bytes(name)
    if declared > cap:
        raise BudgetError(f"{what} would need {size_text(declared)}, over the limit of {size_text(cap)}"
                          f"{' (' + hint + ')' if hint else ''}; raise it with {name}=MB if you trust the input")


def check_matrix(what: str, rows: int, width: int, source_bytes: int | None = None) -> None:
    """A float32 matrix of `rows` x `width` built from an input of `source_bytes` (when a file)."""
    declared = float(rows) * float(width) * 4
    check(what, declared, "AUDITOR_MAX_MATRIX_MB", hint=f"{rows} rows x {width} inputs")
    if source_bytes and declared > AMPLIFICATION_FLOOR:
        ratio = declared / max(source_bytes, 1)
        cap = limit("AUDITOR_MAX_AMPLIFICATION")
        if ratio > cap:
            raise BudgetError(f"{what} would need {size_text(declared)} ({rows} rows x {width} inputs), {ratio:.0f} "
                              f"times its {size_text(source_bytes)} file, over the limit of {cap:g} times; raise it "
                              "with AUDITOR_MAX_AMPLIFICATION if you trust the input")
