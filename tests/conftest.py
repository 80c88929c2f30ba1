"""Shared fixtures: sample models and data sets, loaded once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from auditor import load_data, load_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

torch.set_num_threads(2)
# The suite's quality thresholds were set on the CPU: a GPU machine runs it there too unless asked
# (`AUDITOR_DEVICE=cuda pytest`: on an H100, 152 of 154 editor tests passed; see benchmarks/results/cuda/).
os.environ.setdefault("AUDITOR_DEVICE", "cpu")


@pytest.fixture(autouse=True, scope="session")
def _audit_log_in_tmp(tmp_path_factory):
    """Commands write to the audit log by default: keep the tests' entries out of ~/.auditor."""
    folder = tmp_path_factory.mktemp("auditlog")
    old = {k: os.environ.get(k) for k in ("AUDITOR_DB", "AUDITOR_LOG_KEY")}
    os.environ["AUDITOR_DB"] = str(folder / "audit.db")
    os.environ["AUDITOR_LOG_KEY"] = str(folder / "log.key")  # and its key out of ~/.auditor/log.key
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def one_thread():
    """Small models: one intra-op thread is faster than two contended ones on a shared 2-core box
    (restored afterwards). Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def adult():
    return load_data("adult")


@pytest.fixture(scope="session")
def compas():
    return load_data("compas")


@pytest.fixture(scope="session")
def digits_trojan():
    return load_data("digits-trojan")


@pytest.fixture(scope="session")
def digits_spurious():
    return load_data("digits-spurious")


@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


def _sample(name: str):
    return load_model(SAMPLES / f"{name}.safetensors")


@pytest.fixture
def adult_mlp():
    return _sample("adult_mlp")


@pytest.fixture
def compas_mlp():
    return _sample("compas_mlp")


@pytest.fixture
def digits_cnn():
    return _sample("digits_cnn")


@pytest.fixture
def trojan_cnn():
    return _sample("digits_cnn_trojan")


@pytest.fixture
def spurious_cnn():
    return _sample("digits_cnn_spurious")


@pytest.fixture
def navigation_mode(monkeypatch):
    """AppTest forgets before every run that `st.navigation` has run, so with a `pages/` folder beside
    app.py Streamlit would take each rerun for its older multipage mode; `pages.common.in_frame` then
    reruns inside app.py, which loses a button's click. The live server forgets nothing (the switch
    happens at most once, on its first run); here the flag is held the way the server holds it. Use it
    in every AppTest module: `pytestmark = pytest.mark.usefixtures("navigation_mode")`."""
    from streamlit.runtime.pages_manager import PagesManager

    init = PagesManager.__init__

    def navigation_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", navigation_init)
