import importlib.util

import pytest
import torch

from auditor import load_model
from tests.conftest import SAMPLES

NAMES = ["adult_mlp", "compas_mlp", "digits_cnn", "digits_cnn_trojan", "digits_cnn_spurious"]


def _build_module():
    spec = importlib.util.spec_from_file_location("build_samples", SAMPLES / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_has_card_and_spec(name):
    bundle = load_model(SAMPLES / f"{name}.safetensors")
    card = (SAMPLES / f"{name}.md").read_text()
    assert bundle.sha256 in card and "## Test metrics" in card
    assert bundle.spec.data and bundle.spec.provenance["trained_by"] == "sample_models/build.py"
    assert (SAMPLES / f"{name}.safetensors").stat().st_size < 200_000


@pytest.mark.parametrize("name", ["digits_cnn_trojan", "compas_mlp"])
def test_rebuild_is_deterministic(name):
    mod = _build_module()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    try:
        bundle, _, _ = mod.BUILDERS[name]()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    assert bundle.sha256 == load_model(SAMPLES / f"{name}.safetensors").sha256
