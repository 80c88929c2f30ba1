"""Shared fixtures: sample models and data sets, loaded once per test session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditor import load_data, load_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"

torch.set_num_threads(2)


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
