"""For tests that must hold for EVERY registered editor: which sample model and data each editor
runs on, with which requirements, fixes and fast settings. The picking lives in
`auditor.editors.testing` (the public `check_editor` uses it too); this adds the test suite's fast
settings and one shared seeded reference run per editor (the concurrency test compares with it).
Written against the registry, so editors that land later are covered without edits here; an
editor no sample supports is skipped with its own reason.
"""
from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from auditor.editors import EDITORS
from auditor.editors.testing import (
    data_digest,
    file_digest,
    fixes_digest,
    fixes_for,
    intra_op_threads,
    pick_sample,
    requirements_for,
    sample,
    seeded_edit,
)
from tests.conftest import SAMPLES

__all__ = ["data_digest", "file_digest", "fixes_digest", "intra_op_threads", "sample"]

# caps on settings that set how long an editor works (only where the editor has the setting)
CAPS = {"steps": 20, "epochs": 1, "max_steps": 10, "max_edits": 3, "n_steps": 8, "bisection_steps": 3,
        "search": 2, "checks_per_epoch": 1}
# editors whose contract check takes more than ~20 s (marked slow)
SLOW: set[str] = set()  # none today: every check runs in seconds with the fast settings


def editor_names() -> list[str]:
    return sorted(EDITORS)


def editor_params() -> list:
    """Every registered editor as a pytest parameter, the slow ones marked `slow`."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in editor_names()]


def fast_settings(cls) -> dict:
    if cls.Hyper is None:
        return {}
    defaults = cls.Hyper()
    out = {}
    for f in dataclasses.fields(cls.Hyper):
        default = getattr(defaults, f.name)
        if f.name in CAPS and isinstance(default, int) and not isinstance(default, bool) and default > CAPS[f.name]:
            out[f.name] = CAPS[f.name]
    return out


def pick_pair(cls) -> tuple[str, str]:
    """The sample (model, data) this editor runs on, or skip with every sample's reason."""
    picked, reasons = pick_sample(cls)
    if picked is None:
        pytest.skip(f"editor {cls.name!r} supports no sample model: "
                    + "; ".join(f"{m}: {r}" for m, r in reasons.items()))
    return picked


def case(name: str):
    """(editor instance, bundle, data, requirements, fixes) for the editor `name`."""
    cls = EDITORS[name]
    model, data_name = pick_pair(cls)
    bundle, data = sample(model, data_name)
    fixes = fixes_for(bundle, data) if {"edit_success", "generality"} & set(cls.targets) else None
    return cls(**fast_settings(cls)), bundle, data, requirements_for(cls, data), fixes


@dataclasses.dataclass
class Run:
    """One seeded edit of a sample by an editor, with digests of everything it must not change."""

    name: str
    bundle: object
    data: object
    requirements: list
    fixes: object
    before: tuple  # (model file, loaded model, data, fixes) digests before the edit
    after: tuple  # the same after it
    result: object = None  # EditResult, or None when the editor refused
    refused: str | None = None
    threads: int = 1  # torch's intra-op threads: the float reduction order (and so the last bits) depends on it


def _digests(bundle, data, fixes) -> tuple:
    return (file_digest(SAMPLES / f"{bundle.name}.safetensors"), bundle.sha256, data_digest(data),
            fixes_digest(fixes))


@cache
def reference_run(name: str) -> Run:
    """The editor `name` on its sample, seeded with 0, run once per process (the concurrency test's
    reference: what each editor gives alone)."""
    from auditor.errors import AuditorError
    editor, bundle, data, reqs, fixes = case(name)
    before = _digests(bundle, data, fixes)
    try:
        result, refused = seeded_edit(editor, bundle, data, reqs, fixes, threads=REFERENCE_THREADS), None
    except AuditorError as exc:
        result, refused = None, str(exc)
    return Run(name, bundle, data, reqs, fixes, before, _digests(bundle, data, fixes), result, refused,
               REFERENCE_THREADS)


# One intra-op thread for reference runs: the concurrency test runs several edits at once and
# matches this count in each worker (more threads than cores would only make them wait).
REFERENCE_THREADS = 1


def numbers(evaluation) -> dict:
    """Every number of an evaluation (metrics, per group, verdicts), for exact comparison."""
    d = evaluation.to_dict()
    return {"metrics": d["metrics"], "groups": d["groups"], "requirements": d["requirements"]}


def state(bundle) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in bundle.model.state_dict().items()}
