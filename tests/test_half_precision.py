"""A vendor's model stored in half precision (float16 or bfloat16), as a user brings it: a state dict of their
own `nn.Sequential`, an ONNX graph, a `torch.export` archive. It is read exactly and computed in float32, every
edit is rounded to the file's precision before its figures are taken (the verdict is on the weights written),
and a `.safetensors` file is written back in that precision; the report says so."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from auditor import load_model
from auditor.cautions import reading_cautions
from auditor.cli import main
from auditor.editors import get_editor
from auditor.errors import AuditorError
from auditor.evaluate import evaluate
from auditor.models import ModelSpec
from auditor.models.files import save_model
from auditor.models.precision import HALF, round_to

pytestmark = pytest.mark.usefixtures("one_thread")


def _vendor_net() -> nn.Module:
    """The vendor's own scorer on COMPAS's numeric columns (a Dropout between its layers, as trained)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2)).eval()


def _spec() -> dict:
    return {"arch": {"name": "sequential"}, "input": {"kind": "tabular", "shape": [7]},
            "class_names": ["0", "1"]}


def _half_trojan(trojan_cnn, tmp_path, dtype: str):
    """The shipped Trojaned CNN as its vendor would ship it in `dtype`: rounded, written, read back."""
    half = trojan_cnn.copy()
    round_to(half.model, HALF[dtype])
    half.spec.weights_dtype = dtype
    path = save_model(half, tmp_path / f"trojan_{dtype}.safetensors")
    return load_model(path), path


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_state_dict_is_read_exactly_and_said(tmp_path, compas, dtype):
    net = _vendor_net()
    path = tmp_path / "scorer.safetensors"
    save_file({k: v.to(HALF[dtype]) for k, v in net.state_dict().items()}, str(path))
    bundle = load_model(path, spec=_spec())
    assert bundle.spec.weights_dtype == dtype
    assert all(p.dtype == torch.float32 for p in bundle.model.parameters())
    for got, value in zip(bundle.model.state_dict().values(), net.state_dict().values()):  # stored values, exactly
        assert torch.equal(got, value.to(HALF[dtype]).float())
    notes = reading_cautions(bundle, compas)
    assert any(f"stores its weights as {dtype}" in n for n in notes)
    # a float32 file says nothing of the kind, and carries no weights_dtype
    save_file(net.state_dict(), str(tmp_path / "f32.safetensors"))
    plain = load_model(tmp_path / "f32.safetensors", spec=_spec())
    assert plain.spec.weights_dtype is None and "weights_dtype" not in plain.spec.to_json()
    assert not any("stores its weights as" in n for n in reading_cautions(plain, compas))


def test_float64_weights_are_said_to_be_computed_in_float32(tmp_path, compas):
    net = _vendor_net()
    torch.save({k: v.double() for k, v in net.state_dict().items()}, tmp_path / "scorer.pt")
    bundle = load_model(tmp_path / "scorer.pt", spec=_spec())
    assert bundle.spec.weights_dtype == "float64"
    assert any("float64" in n and "float32" in n for n in reading_cautions(bundle, compas))


def test_a_spec_naming_another_precision_is_refused():
    with pytest.raises(AuditorError, match="weights_dtype"):
        ModelSpec.from_dict({**_spec(), "weights_dtype": "int8"})


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_trojan_in_a_half_precision_file_is_repaired_and_written_in_its_precision(
        tmp_path, trojan_cnn, digits_trojan, dtype):
    bundle, _ = _half_trojan(trojan_cnn, tmp_path, dtype)
    assert bundle.spec.weights_dtype == dtype
    before = evaluate(bundle, digits_trojan).metrics
    assert before["attack_success_rate"] > 0.9
    result = get_editor("dynamic-rank-one", samples=1, seed=0).edit(bundle, digits_trojan,
                                                                    ["attack_success_rate <= 0.02"])
    # the edited model holds only values its file's precision can store
    for t in result.bundle.model.state_dict().values():
        if t.is_floating_point():
            assert torch.equal(t, t.to(HALF[dtype]).float())
    note = next(e for e in result.log if e.get("action") == "rounded")
    assert note["step"] == "note" and note["dtype"] == dtype and note["rounding_error"] < 0.05
    after = evaluate(result.bundle, digits_trojan).metrics
    assert after["attack_success_rate"] <= 0.02
    assert before["accuracy"] - after["accuracy"] <= 0.01
    out = save_model(result.bundle, tmp_path / "fixed.safetensors")
    with safe_open(str(out), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {HALF[dtype]}
        assert json.loads(f.metadata()["auditor.spec"])["weights_dtype"] == dtype
    again = load_model(out)
    assert again.sha256 == result.bundle.sha256 or all(  # the same values (the file holds them in `dtype`)
        torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), result.bundle.model.state_dict().values()))
    assert evaluate(again, digits_trojan).metrics == after


def test_an_edit_lost_to_rounding_is_said(tmp_path, trojan_cnn, digits_trojan):
    bundle, _ = _half_trojan(trojan_cnn, tmp_path, "bfloat16")
    result = get_editor("rank-one", samples=1, seed=0, strength=1e-4).edit(bundle, digits_trojan)
    note = next(e for e in result.log if e.get("action") == "rounded")
    assert note["rounding_error"] > 0.5 and "mostly lost to rounding" in note["message"]


def test_audit_prints_the_rounding_and_writes_the_files_precision(tmp_path, trojan_cnn, capsys):
    _, path = _half_trojan(trojan_cnn, tmp_path, "float16")
    out = tmp_path / "fixed.safetensors"
    code = main(["audit", str(path), "digits-trojan", "--require", "attack_success_rate <= 0.02",
                 "--editor", "dynamic-rank-one", "--samples", "1", "--baselines", "none", "--no-localize",
                 "--out", str(out), "--json", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "stores its weights as float16" in text and "rounded to float16" in text
    with safe_open(str(out), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def _half_onnx(tmp_path, dtype_name: str = "float16"):
    net = _vendor_net().half()
    path = tmp_path / "scorer_fp16.onnx"
    torch.onnx.export(net, (torch.randn(3, 7).half(),), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}})
    return net, path


def test_a_float16_onnx_graph_is_computed_in_float32(tmp_path):
    net, path = _half_onnx(tmp_path)
    bundle = load_model(path, spec={**_spec(), "arch": {"name": "onnx", "num_classes": 2}})
    assert bundle.spec.weights_dtype == "float16"
    X = torch.randn(64, 7, generator=torch.Generator().manual_seed(1))
    ref = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 2))
    ref.load_state_dict({k.replace("3.", "2."): v.float() for k, v in net.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(X), ref(X), atol=1e-5, rtol=1e-5)
    out = save_model(bundle, tmp_path / "again.onnx")  # ONNX is written in float32, and says so on reading
    assert load_model(out).spec.weights_dtype is None


def test_a_half_precision_torch_export_archive_runs_in_float32(tmp_path):
    class Scorer(nn.Module):  # not a registered architecture: read as its graph; its cast to half runs in float32
        def __init__(self, cast=torch.float16):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(7, 16), nn.Linear(16, 16), nn.Linear(16, 2)
            self.cast = cast

        def forward(self, x):
            h = torch.nn.functional.gelu(self.a(x))
            return self.out(h + self.b(h).to(self.cast))

    torch.manual_seed(0)
    net = Scorer().eval().half()
    ep = torch.export.export(net, (torch.randn(3, 7).half(),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "scorer.pt2"
    torch.export.save(ep, str(path))
    bundle = load_model(path, spec={**_spec(), "arch": {"name": "pt2", "num_classes": 2}})
    assert bundle.spec.weights_dtype == "float16"
    X = torch.randn(64, 7, generator=torch.Generator().manual_seed(1))
    ref = Scorer(torch.float32).eval()
    ref.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    with torch.no_grad():
        got = bundle.model(X)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, ref(X), atol=1e-5, rtol=1e-5)
    assert np.isfinite(got.numpy()).all()


def test_compas_scorer_in_float16_keeps_its_precision_through_a_fairness_edit(tmp_path, compas):
    """The whole flow on a tabular model: a fine-tuning edit of a float16 file is evaluated as written."""
    net = _vendor_net()
    path = tmp_path / "scorer.safetensors"
    save_file({k: v.half() for k, v in net.state_dict().items()}, str(path))
    bundle = load_model(path, spec=_spec())
    result = get_editor("finetune-fairness", seed=0).edit(bundle, compas, ["demographic_parity <= 0.05"])
    assert result.changed
    for t in result.bundle.model.state_dict().values():
        assert torch.equal(t, t.half().float())
    out = save_model(result.bundle, tmp_path / "edited.safetensors")
    with safe_open(str(out), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_a_mixed_precision_checkpoint_is_computed_and_written_in_float32_and_said(tmp_path, compas):
    """float16 weights beside float32 ones (as a mixed-precision checkpoint keeps them): nothing is rounded to
    half (the float32 tensors would lose bits), the caution says how it is read and written."""
    net = _vendor_net()
    state = {k: (v.half() if k.endswith("weight") else v) for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "amp.pt")
    bundle = load_model(tmp_path / "amp.pt", spec=_spec())
    assert bundle.spec.weights_dtype == "mixed"
    assert any("several precisions" in n for n in reading_cautions(bundle, compas))
    result = get_editor("finetune-fairness", seed=0).edit(bundle, compas, ["demographic_parity <= 0.05"])
    assert not any(e.get("action") == "rounded" for e in result.log)
    out = save_model(result.bundle, tmp_path / "edited.safetensors")
    with safe_open(str(out), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
