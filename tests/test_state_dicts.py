"""State dicts as people save them, the generic `sequential` architecture, the spec's JSON Schema,
custom classes with a reused spec, and `auditor spec init` (issue 12, items 2-5)."""
from __future__ import annotations

import contextlib
import io
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from auditor.cli import main
from auditor.errors import AuditorError
from auditor.models import ModelSpec, load_model, save_model
from auditor.models.infer import as_registered, infer_layers
from auditor.models.spec import spec_schema
from tests.fixtures import fit_classifier

MLP_SPEC = {"arch": {"name": "mlp", "in_features": 4, "hidden": [8], "num_classes": 2},
            "input": {"kind": "tabular", "features": ["a", "b", "c", "d"], "shape": [4]}, "class_names": ["0", "1"]}


def _seq_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def _same(bundle, module, shape=(4,)):
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(bundle.model(x), module(x), atol=1e-6)


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "model_state_dict+optimizer", "module.",
                                  "model.", "_orig_mod.", "checkpoint+module."])
def test_sequential_state_dicts_load_as_the_registered_mlp(tmp_path, wrap):
    module = _seq_mlp()
    sd = module.state_dict()  # 0.weight, 0.bias, 2.weight, 2.bias
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd},
        "model_state_dict+optimizer": {"model_state_dict": sd, "optimizer": {"lr": 0.1}, "epoch": 7},
        "module.": OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        "model.": OrderedDict((f"model.{k}", v) for k, v in sd.items()),
        "_orig_mod.": OrderedDict((f"_orig_mod.{k}", v) for k, v in sd.items()),
        "checkpoint+module.": {"state_dict": OrderedDict((f"module.{k}", v) for k, v in sd.items())},
    }[wrap]
    torch.save(obj, tmp_path / "m.pt")
    bundle = load_model(tmp_path / "m.pt", spec=MLP_SPEC)
    assert [n for n, _ in bundle.model.named_children()] == ["fc1", "act1", "out"]
    _same(bundle, module)
    # written natively, it loads again without a spec
    again = load_model(save_model(bundle, tmp_path / "m.safetensors"))
    assert again.sha256 == bundle.sha256


def test_integer_names_past_nine_keep_their_order(tmp_path):
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(4, 4), nn.ReLU()]
    module = nn.Sequential(*layers, nn.Linear(4, 2)).eval()  # 0, 2, ..., 10, 12
    from safetensors.torch import save_file
    save_file(module.state_dict(), str(tmp_path / "m.safetensors"))  # safetensors sorts names: 10 < 2
    spec = {**MLP_SPEC, "arch": {"name": "mlp", "in_features": 4, "hidden": [4] * 6, "num_classes": 2}}
    _same(load_model(tmp_path / "m.safetensors", spec=spec), module)


def test_generic_sequential_from_explicit_layers_and_inferred(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 10)).eval()
    with torch.no_grad():  # non-trivial running statistics
        module[1].running_mean.uniform_(-0.5, 0.5)
        module[1].running_var.uniform_(0.5, 2)
    torch.save(module.state_dict(), tmp_path / "cnn.pt")
    explicit = {"arch": {"name": "sequential", "num_classes": 10, "layers": [
        {"type": "conv2d", "in": 1, "out": 4, "kernel": 3, "padding": 1}, {"type": "batchnorm2d", "features": 4},
        "relu", {"type": "maxpool2d", "kernel": 2}, {"type": "conv2d", "in": 4, "out": 6, "kernel": 3, "padding": 1},
        "relu", "flatten", {"type": "linear", "in": 96, "out": 10}]},
        "input": {"kind": "image", "shape": [1, 8, 8]}}
    bundle = load_model(tmp_path / "cnn.pt", spec=explicit)
    _same(bundle, module, (1, 8, 8))
    # the state dict's own names fit the integer names of the built nn.Sequential
    assert "0.weight" in bundle.model.state_dict() and "7.weight" in bundle.model.state_dict()
    # without layers: inferred under the stated assumptions (here: the pool after the last convolution;
    # a pool after the first one gives the same widths and cannot be told from the weights)
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(6 * 4 * 4, 10)).eval()
    with torch.no_grad():
        module[1].running_mean.uniform_(-0.5, 0.5)
    torch.save({"model": module.state_dict()}, tmp_path / "cnn2.pt")
    inferred = load_model(tmp_path / "cnn2.pt", spec={**explicit, "arch": {"name": "sequential", "num_classes": 10}})
    _same(inferred, module, (1, 8, 8))
    assert inferred.spec.arch["layers"]  # written out
    again = load_model(save_model(inferred, tmp_path / "cnn.safetensors"))
    _same(again, module, (1, 8, 8))


def test_infer_layers_assumptions():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).state_dict()
    layers, notes = infer_layers(mlp, [5])
    assert layers == [{"type": "linear", "in": 5, "out": 7}, "relu", {"type": "linear", "in": 7, "out": 3}]
    assert as_registered(mlp) == {"name": "mlp", "in_features": 5, "hidden": [7], "num_classes": 3}
    valid = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).state_dict()
    layers, notes = infer_layers(valid, [1, 8, 8])
    assert layers[0]["padding"] == 0 and "no padding" in " ".join(notes)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict()
    assert as_registered(cnn, [1, 8, 8])["name"] == "cnn"


@pytest.mark.parametrize("state, spec, match", [
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).state_dict(), MLP_SPEC,
     "tensor '2.weight' of shape (3, 8) is where the architecture expects 'out.weight' of shape (2, 8)"),
    (lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict(), MLP_SPEC,
     "tensor '0.weight' of shape (8, 5) is where the architecture expects 'fc1.weight' of shape (8, 4)"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)).state_dict(), MLP_SPEC,
     "expects 'out.weight' of shape (2, 8)"),
    (lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(7, 2)).state_dict(),
     {**MLP_SPEC, "arch": {"name": "sequential"}}, "tensor '2.weight' takes 7 inputs but the layer before it gives 8"),
    (lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(50, 2)).state_dict(),
     {"arch": {"name": "sequential"}, "input": {"kind": "image", "shape": [1, 8, 8]}},
     "tensor '2.weight' takes 50 inputs, which no assumed padding/pooling"),
    (lambda: {"weights": torch.zeros(3)}, MLP_SPEC, "tensor 'weights' of shape (3,) is where"),
    (lambda: {"weights": torch.zeros(3)}, {**MLP_SPEC, "arch": {"name": "sequential"}}, "belongs to no layer"),
])
def test_state_dicts_that_fit_no_architecture_give_one_line_naming_the_tensor(tmp_path, state, spec, match):
    torch.manual_seed(0)
    torch.save(state(), tmp_path / "m.pt")
    with pytest.raises(AuditorError) as err:
        load_model(tmp_path / "m.pt", spec=spec)
    assert match in str(err.value) and "\n" not in str(err.value), str(err.value)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out, errs = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(errs):
        rc = main(["evaluate", str(tmp_path / "m.pt"), "adult", "--spec", str(tmp_path / "spec.json")])
    assert rc == 2 and errs.getvalue().count("\n") == 1 and match in errs.getvalue()


def test_a_pickle_that_is_not_a_state_dict_names_its_keys(tmp_path):
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "m.pt")
    with pytest.raises(AuditorError, match=r"does not hold a state dict.*its keys: epoch, optimizer"):
        load_model(tmp_path / "m.pt", spec=MLP_SPEC)


# --- the spec's schema -------------------------------------------------------------------------
def test_schema_examples_are_valid_specs_and_every_field_is_explained():
    schema = spec_schema()
    assert len(schema["examples"]) >= 5
    for example in schema["examples"]:
        ModelSpec.from_dict({k: v for k, v in example.items() if k != "$comment"})
    for key, prop in schema["properties"].items():
        target = schema["$defs"][prop["$ref"].split("/")[-1]] if "$ref" in prop else prop
        assert target.get("description"), key
    for key, prop in schema["$defs"]["input"]["properties"].items():
        assert prop.get("description") or key == "kind", key


@pytest.mark.parametrize("change, match", [
    (lambda s: s["input"].update(kind="table"), "'input.kind': 'table' is not one of"),
    (lambda s: s["input"].update(shapes=[4]), "'input': Additional properties are not allowed ('shapes'"),
    (lambda s: s["arch"].update(hidden=[0]), "bad parameters for architecture 'mlp': 'arch.hidden.0'"),
    (lambda s: s.update(preprocessing={"columns": [{"name": "a", "type": "numeric", "mean": 0}]}),
     "'preprocessing.columns.0': 'std' is a required property"),
    (lambda s: s.update(arch={"name": "sequential", "layers": [{"type": "conv2d", "in": 1, "out": 2, "pad": 1}]}),
     "'arch.layers.0': Additional properties are not allowed ('pad'"),
    (lambda s: s.update(arch={"name": "sequential", "layers": ["relux"]}), "'arch.layers.0': 'relux' is not one of"),
])
def test_bad_specs_name_the_key_and_point_to_the_docs(change, match):
    spec = json.loads(json.dumps(MLP_SPEC))
    change(spec)
    with pytest.raises(AuditorError) as err:
        ModelSpec.from_dict(spec)
    assert match in str(err.value) and "docs/formats.md" in str(err.value), str(err.value)


# --- custom classes ----------------------------------------------------------------------------
NO_ARGS = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.body(x)
"""

SOME_ARGS = """
from torch import nn


class Net(nn.Module):
    def __init__(self, in_features, hidden, width_multiplier):
        super().__init__()
        self.a = nn.Linear(in_features, hidden[0] * width_multiplier)
        self.b = nn.Linear(hidden[0] * width_multiplier, 2)

    def forward(self, x):
        return self.b(self.a(x).relu())
"""


def test_a_custom_class_with_a_reused_mlp_spec(tmp_path):
    """The spec of an `mlp` (in_features, hidden, num_classes) also describes a class that takes none of
    them: only the arguments its constructor accepts are passed (was a TypeError)."""
    (tmp_path / "net.py").write_text(NO_ARGS)
    module = _seq_mlp()
    torch.save({"state_dict": module.state_dict()}, tmp_path / "w.pt")  # saved from nn.Sequential: 0.weight
    bundle = load_model(tmp_path / "w.pt", spec=MLP_SPEC, arch_file=tmp_path / "net.py", arch_class="Net",
                        trust_code=True)
    _same(bundle, module)
    assert bundle.spec.arch["name"] == "custom" and bundle.spec.arch["num_classes"] == 2
    (tmp_path / "args.py").write_text(SOME_ARGS)
    with pytest.raises(AuditorError, match=r"Net\(in_features, hidden, width_multiplier\) needs 'width_multiplier'"):
        load_model(tmp_path / "w.pt", spec=MLP_SPEC, arch_file=tmp_path / "args.py", arch_class="Net",
                   trust_code=True)
    spec = {**MLP_SPEC, "arch": {"name": "custom", "in_features": 4, "hidden": [4], "width_multiplier": 2}}
    bundle = load_model(tmp_path / "w.pt", spec=spec, arch_file=tmp_path / "args.py", arch_class="Net",
                        trust_code=True)
    _same(bundle, module)


# --- spec init on a CSV whose model was trained on standardised columns ---------------------------
def test_spec_init_finds_standardisation_and_refuses_to_overwrite(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 300
    frame = pd.DataFrame({"income": rng.normal(50000, 15000, n), "age": rng.integers(18, 80, n).astype(float),
                          "region": rng.choice(["north", "south"], n), "sex": rng.choice(["f", "m"], n)})
    z = (frame[["income", "age"]] - frame[["income", "age"]].mean()) / frame[["income", "age"]].std(ddof=0)
    frame["label"] = (z["income"] - z["age"] + (frame["region"] == "north") + rng.normal(0, 0.3, n) > 0.5).astype(int)
    frame.to_csv(tmp_path / "d.csv", index=False)
    X = torch.tensor(np.c_[z.to_numpy(), (frame["region"] == "north"), (frame["region"] == "south")],
                     dtype=torch.float32)
    y = torch.tensor(frame["label"].to_numpy())
    torch.manual_seed(0)
    model = fit_classifier(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), X, y, 200, 0.05)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    argv = ["spec", "init", str(tmp_path / "m.pt"), str(tmp_path / "d.csv"), "--target", "label",
            "--protected", "sex", "--categorical", "region", "--out", str(tmp_path / "spec.json")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    spec = json.loads((tmp_path / "spec.json").read_text())
    cols = {c["name"]: c for c in spec["preprocessing"]["columns"]}
    assert cols["income"]["std"] > 1000 and cols["region"]["categories"] == ["north", "south"]
    assert spec["input"]["feature_groups"] == {"income": [0], "age": [1], "region": [2, 3]}
    assert "standardised with the mean/std" in out.getvalue() and "replace them" in out.getvalue()
    errs = io.StringIO()
    with contextlib.redirect_stderr(errs), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 2
    assert "exists; pass --force" in errs.getvalue()


def test_spec_init_that_cannot_fit_writes_nothing(tmp_path):
    torch.save(_seq_mlp().state_dict(), tmp_path / "m.pt")
    errs = io.StringIO()
    with contextlib.redirect_stderr(errs), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["spec", "init", str(tmp_path / "m.pt"), "digits", "--out", str(tmp_path / "spec.json")])
    assert rc == 2 and errs.getvalue().count("\n") == 1 and not (tmp_path / "spec.json").exists()
    assert "tensor '0.weight' is a Linear layer taking 4 inputs" in errs.getvalue(), errs.getvalue()
