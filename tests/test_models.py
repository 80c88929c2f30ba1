import json
import os
import pickle

import pytest
import torch

from auditor import AuditorError, UnsafeModelError, check_compatible, load_model, save_model
from auditor.models import read_metadata, weights_sha256
from tests.conftest import SAMPLES
from tests.fixtures import tiny_mlp_bundle


def test_safetensors_roundtrip_keeps_weights_spec_and_hash(tmp_path):
    b = tiny_mlp_bundle(4, (3,))
    path = save_model(b, tmp_path / "m.safetensors", extra_metadata={"note": {"k": 1}})
    loaded = load_model(path)
    assert loaded.sha256 == b.sha256 == weights_sha256(b.model.state_dict())
    assert loaded.spec == b.spec
    assert json.loads(read_metadata(path)["note"]) == {"k": 1}
    x = torch.randn(5, 4)
    assert torch.equal(loaded.model(x), b.model(x))


def test_hash_changes_with_one_weight():
    b = tiny_mlp_bundle()
    h = b.sha256
    with torch.no_grad():
        b.model.fc1.weight[0, 0] += 1e-6
    assert b.sha256 != h


def test_loading_never_changes_the_file():
    path = SAMPLES / "adult_mlp.safetensors"
    before = path.read_bytes()
    load_model(path)
    assert path.read_bytes() == before


def test_state_dict_with_spec(tmp_path):
    b = tiny_mlp_bundle(4, (3,))
    torch.save(b.model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "spec.json").write_text(b.spec.to_json())
    loaded = load_model(tmp_path / "w.pt", spec=tmp_path / "spec.json")
    assert loaded.sha256 == b.sha256 and loaded.format == "torch-state-dict"
    with pytest.raises(AuditorError, match="pass its spec"):
        load_model(tmp_path / "w.pt")


class _CreatesAFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"fc1.weight": _CreatesAFile(marker)}, f)
    # torch.save'd whole model objects are refused the same way
    spec = tiny_mlp_bundle().spec
    with pytest.raises(UnsafeModelError) as err:
        load_model(path, spec=spec)
    assert "safetensors" in str(err.value) and "convert" in str(err.value).lower()
    assert not marker.exists()


def test_whole_module_pickle_is_refused(tmp_path):
    b = tiny_mlp_bundle()
    path = tmp_path / "module.pt"
    torch.save(b.model, path)
    with pytest.raises(UnsafeModelError, match="state_dict"):
        load_model(path, spec=b.spec)


def test_truncated_and_corrupt_safetensors(tmp_path):
    good = save_model(tiny_mlp_bundle(), tmp_path / "m.safetensors").read_bytes()
    cases = {"truncated.safetensors": good[: len(good) - 10], "tiny.safetensors": good[:4],
             "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" + good[24:],
             "huge_header.safetensors": (10**12).to_bytes(8, "little") + good[8:]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AuditorError) as err:
            load_model(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_unknown_architecture_and_mismatched_spec(tmp_path):
    b = tiny_mlp_bundle(4, (3,))
    spec = json.loads(b.spec.to_json())
    path = save_model(b, tmp_path / "m.safetensors")
    with pytest.raises(AuditorError, match="unknown architecture 'transformer'"):
        load_model(path, spec={**spec, "arch": {"name": "transformer"}})
    with pytest.raises(AuditorError, match="fc1.weight has shape"):
        load_model(path, spec={**spec, "arch": {**spec["arch"], "in_features": 5}})


def test_nan_weights_refused(tmp_path):
    b = tiny_mlp_bundle()
    with torch.no_grad():
        b.model.out.bias[0] = float("nan")
    path = save_model(b, tmp_path / "nan.safetensors")
    with pytest.raises(AuditorError, match="NaN"):
        load_model(path)


def test_size_limit(tmp_path):
    path = save_model(tiny_mlp_bundle(), tmp_path / "m.safetensors")
    with pytest.raises(AuditorError, match="over the limit"):
        load_model(path, max_bytes=100)


def test_input_size_mismatch(adult):
    with pytest.raises(AuditorError, match="expects 3 inputs but data 'adult' gives 100"):
        check_compatible(tiny_mlp_bundle(3), adult)


def test_unknown_format(tmp_path):
    (tmp_path / "m.h5").write_bytes(b"x")
    with pytest.raises(AuditorError, match="unknown model format"):
        load_model(tmp_path / "m.h5")
