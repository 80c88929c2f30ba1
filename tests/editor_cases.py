"""For tests that must hold for EVERY registered editor (no silent change, determinism,
concurrency): which sample model and data each editor runs on, with which requirements, fixes
and fast settings. Written against the registry, so editors that land later are covered
without edits here; an editor no sample supports is skipped with its own reason.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from auditor import load_data, load_model
from auditor.editors import EDITORS
from tests.conftest import SAMPLES

# (model, data) pairs, smallest first; an editor runs on the first one its targets prefer and it supports
PAIRS = [("digits_cnn_trojan", "digits-trojan"), ("digits_cnn_spurious", "digits-spurious"),
         ("compas_mlp", "compas"), ("digits_cnn", "digits"), ("adult_mlp", "adult")]
PREFER = {"attack_success_rate": "digits_cnn_trojan", "cue_gap": "digits_cnn_spurious",
          "cue_accuracy": "digits_cnn_spurious", "worst_group_accuracy": "digits_cnn_spurious",
          "demographic_parity": "compas_mlp", "equalized_odds": "compas_mlp", "features_used": "compas_mlp",
          "sparsity": "compas_mlp", "edit_success": "digits_cnn", "generality": "digits_cnn"}
# requirements that give each target something to do (plus a utility floor)
REQUIRE = {"attack_success_rate": "attack_success_rate <= 0.02", "cue_gap": "cue_gap <= 0.05",
           "cue_accuracy": "cue_gap <= 0.05", "worst_group_accuracy": "cue_gap <= 0.05",
           "demographic_parity": "demographic_parity <= 0.05", "equalized_odds": "equalized_odds <= 0.05",
           "features_used": "features_used <= 3", "sparsity": "sparsity >= 0.5", "edit_success": "edit_success >= 1"}
# caps on settings that set how long an editor works (only where the editor has the setting)
CAPS = {"steps": 20, "epochs": 1, "max_steps": 10, "max_edits": 3, "n_steps": 8, "bisection_steps": 3,
        "search": 2, "checks_per_epoch": 1}


@lru_cache(maxsize=None)
def sample(model: str, data: str):
    """(bundle, data) loaded once per process. Tests must never change them (some check they don't)."""
    bundle = load_model(SAMPLES / f"{model}.safetensors")
    return bundle, load_data(data, spec=bundle.spec)


def editor_names() -> list[str]:
    return sorted(EDITORS)


def fast_settings(cls) -> dict:
    if cls.Hyper is None:
        return {}
    out = {}
    for f in dataclasses.fields(cls.Hyper()):
        default = getattr(cls.Hyper(), f.name)
        if f.name in CAPS and isinstance(default, int) and not isinstance(default, bool) and default > CAPS[f.name]:
            out[f.name] = CAPS[f.name]
    return out


def pick_pair(cls) -> tuple[str, str]:
    """The sample (model, data) this editor runs on, or skip with every sample's reason."""
    preferred = [PREFER[t] for t in cls.targets if t in PREFER]
    order = sorted(PAIRS, key=lambda p: (p[0] not in preferred, PAIRS.index(p)))
    reasons = {}
    for model, data in order:
        bundle, d = sample(model, data)
        reason = cls().supports(bundle, d)
        if reason is None:
            return model, data
        reasons[model] = reason
    pytest.skip(f"editor {cls.name!r} supports no sample model: " + "; ".join(f"{m}: {r}" for m, r in reasons.items()))


def requirements_for(cls, data) -> list[str]:
    reqs = [REQUIRE[t] for t in cls.targets if t in REQUIRE][:1]
    floor = {"adult": "accuracy >= 0.8", "compas": "accuracy >= 0.6"}.get(data.name, "accuracy >= 0.9")
    return reqs + [floor]


def fixes_for(bundle, data, n: int = 2):
    """Mistakes to fix: the first `n` test rows the model gets wrong, with their true labels."""
    from auditor.fixes import make_fixes
    from auditor.models import predict_logits
    pred = predict_logits(bundle.model, data.test.X).argmax(1)
    wrong = torch.nonzero(pred != data.test.y).flatten()[:n]
    return make_fixes(data, data.test.X[wrong], data.test.y[wrong], seed=0)


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


@lru_cache(maxsize=None)
def reference_run(name: str) -> Run:
    """The editor `name` on its sample, seeded with 0, run once per process and shared by the no
    silent change, determinism and concurrency tests (it is their reference)."""
    from auditor.backend import seed_everything
    from auditor.errors import AuditorError
    editor, bundle, data, reqs, fixes = case(name)
    before = _digests(bundle, data, fixes)
    with intra_op_threads(REFERENCE_THREADS):
        seed_everything(0)
        try:
            result, refused = editor.edit(bundle, data, reqs, device="cpu", fixes=fixes), None
        except AuditorError as exc:
            result, refused = None, str(exc)
    return Run(name, bundle, data, reqs, fixes, before, _digests(bundle, data, fixes), result, refused,
               REFERENCE_THREADS)


# One intra-op thread for reference runs: the concurrency test runs several edits at once and
# matches this count in each worker (more threads than cores would only make them wait).
REFERENCE_THREADS = 1


@contextlib.contextmanager
def intra_op_threads(n: int):
    """torch's intra-op thread count for this OS thread, restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def data_digest(data) -> str:
    """sha256 of everything in a data set: every split's inputs, labels, groups, raw rows and
    corrupted twins, the stamp, names and preprocessing (`AuditData.sha256` is cached and
    covers fewer fields)."""
    h = hashlib.sha256(repr((data.name, data.kind, data.feature_names, data.feature_groups, data.protected,
                             data.class_names, data.preprocessing, data.schema)).encode())
    for s in ("train", "val", "test"):
        sp = data.split(s)
        for t in (sp.X, sp.y, sp.corrupted):
            h.update(b"-" if t is None else t.contiguous().numpy().tobytes())
        for f in (sp.groups, sp.raw):
            h.update(b"-" if f is None else pd.util.hash_pandas_object(f, index=True).values.tobytes())
            h.update(b"-" if f is None else repr(list(f.columns)).encode())
    if data.stamp is not None:
        h.update(data.stamp.mask.numpy().tobytes() + data.stamp.pattern.numpy().tobytes())
        h.update(f"{data.stamp.target}{data.stamp.kind}".encode())
    return h.hexdigest()


def fixes_digest(fixes) -> str:
    if fixes is None:
        return "-"
    return hashlib.sha256(b"".join(t.contiguous().numpy().tobytes() for t in (fixes.X, fixes.y, fixes.X_equiv,
                                                                           fixes.y_equiv))).hexdigest()


def file_digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def numbers(evaluation) -> dict:
    """Every number of an evaluation (metrics, per group, verdicts), for exact comparison."""
    d = evaluation.to_dict()
    return {"metrics": d["metrics"], "groups": d["groups"], "requirements": d["requirements"]}


def state(bundle) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in bundle.model.state_dict().items()}


@pytest.fixture
def navigation_mode(monkeypatch):
    """As in tests/test_app.py: AppTest forgets between runs that `st.navigation` was called and
    would run a page file alone; hold the flag the way the live server does. (Import this
    fixture into a test module to use it.)"""
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def navigation_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", navigation_init)
