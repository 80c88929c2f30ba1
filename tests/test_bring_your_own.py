"""Bring your own model and data, as a new user would (issue 12, "Done when").

The test builds its own cases the way a user would, with plain PyTorch:
- an MLP trained on a CSV it writes (a protected column that is not a model input, columns that are
  already numeric and partly standardised), saved as an `nn.Sequential` state dict and as ONNX;
- a three-convolution CNN with its own trigger (a 3x3 checkerboard in the TOP-LEFT corner, target
  class 3: not the built-in bottom-right trigger), trained for a few epochs on scikit-learn's digits
  with poisoning, saved as ONNX and as a state dict with its class in a `.py` file, and an `.npz`
  case holding its test images, its clean training images and its own trigger;
then drafts specs with `auditor spec init`, evaluates with them, and edits with `--out edited.onnx`
(checked by running the written file with onnxruntime).
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

from auditor.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

ort = pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnx2torch") is None:  # imported through auditor (torchvision stand-in)
    pytest.skip("needs onnx2torch", allow_module_level=True)

TARGET = 3  # the CNN's own trigger flips predictions to 3


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _export(model: nn.Module, example: torch.Tensor, path) -> None:
    """What a user does: the classic exporter, a dynamic batch axis, nothing auditor-specific."""
    torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})


# --- the tabular case --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    import pandas as pd

    tmp = tmp_path_factory.mktemp("byo_tabular")
    rng = np.random.default_rng(0)
    n = 400
    group = rng.choice(["a", "b"], size=n)
    age = rng.integers(18, 80, size=n).astype(float)            # raw years: the model reads it raw
    score_z = rng.normal(size=n) + 0.4 * (group == "a")           # already standardised by the vendor
    debt_z = rng.normal(size=n)
    logit = 0.08 * (age - 45) + 1.5 * score_z - 1.0 * debt_z
    label = np.where(logit + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    frame = pd.DataFrame({"age": age, "score_z": score_z, "debt_z": debt_z, "group": group, "label": label})
    csv = tmp / "loans.csv"
    frame.to_csv(csv, index=False)

    torch.manual_seed(0)
    X = torch.tensor(frame[["age", "score_z", "debt_z"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor((label == "yes").astype(np.int64))
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(X).argmax(1) == y).float().mean())
    torch.save(model.state_dict(), tmp / "mlp.pt")            # keys 0.weight, 0.bias, 2.weight, ...
    _export(model, X[:2], tmp / "mlp.onnx")
    return {"dir": tmp, "csv": csv, "accuracy": accuracy, "X": X, "model": model}


CSV_ARGS = ["--target", "label", "--positive", "yes", "--protected", "group"]


def test_spec_init_drafts_a_spec_for_a_sequential_state_dict_that_evaluates(tabular, capsys):
    tmp = tabular["dir"]
    spec_path = tmp / "mlp_spec.json"
    rc, out, err = _run(["spec", "init", tmp / "mlp.pt", tabular["csv"], *CSV_ARGS, "--out", spec_path,
                         "--force"], capsys)
    assert rc == 0, err
    spec = json.loads(spec_path.read_text())
    assert spec["arch"] == {"name": "mlp", "in_features": 3, "hidden": [16, 16], "num_classes": 2}
    # the columns are read as they are: age raw, score_z and debt_z not standardised a second time
    assert spec["preprocessing"] is None and spec["input"]["features"] == ["age", "score_z", "debt_z"]
    assert spec["class_names"] == ["no", "yes"]
    assert "guessed:" in out and "confirm" in out and "as they are" in out
    ev = tmp / "mlp_eval.json"
    rc, out, err = _run(["evaluate", tmp / "mlp.pt", tabular["csv"], *CSV_ARGS, "--spec", spec_path,
                         "--split", "all", "--json", ev], capsys)
    assert rc == 0, err
    result = json.loads(ev.read_text())
    assert result["data"]["rows"] == 400 and result["data"]["split"] == "all"
    assert result["metrics"]["accuracy"] == pytest.approx(tabular["accuracy"], abs=1e-6)  # every row, as trained
    assert "group" in json.dumps(result)  # grouped by the protected column, which is no model input


def test_spec_init_on_the_onnx_export_and_edit_writes_onnx_and_refuses_unloadable_safetensors(tabular, capsys):
    tmp = tabular["dir"]
    spec_path = tmp / "mlp_onnx_spec.json"
    rc, out, err = _run(["spec", "init", tmp / "mlp.onnx", tabular["csv"], *CSV_ARGS, "--out", spec_path,
                         "--force"], capsys)
    assert rc == 0, err
    spec = json.loads(spec_path.read_text())
    assert spec["arch"]["name"] == "onnx" and spec["arch"]["num_classes"] == 2 and spec["preprocessing"] is None
    # a .safetensors file could not rebuild an ONNX graph: refused before the edit, nothing written
    bad = tmp / "pruned.safetensors"
    rc, out, err = _run(["edit", tmp / "mlp.onnx", tabular["csv"], *CSV_ARGS, "--spec", spec_path,
                         "--editor", "magnitude-pruning", "--set", "sparsity=0.5", "--out", bad, "--no-log"],
                        capsys)
    assert rc == 2 and "write it as .onnx" in err and not bad.exists()
    good = tmp / "pruned.onnx"
    rc, out, err = _run(["edit", tmp / "mlp.onnx", tabular["csv"], *CSV_ARGS, "--spec", spec_path,
                         "--editor", "magnitude-pruning", "--set", "sparsity=0.5", "--out", good, "--no-log"],
                        capsys)
    assert rc in (0, 1), err
    sess = ort.InferenceSession(str(good), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: tabular["X"].numpy()})[0]
    assert logits.shape == (400, 2)
    from auditor.models import editable_layers, load_model
    again = load_model(good)  # the spec travels in the file: loads without --spec
    weights = torch.cat([m.weight.flatten() for _, m in editable_layers(again.model)])
    assert float((weights == 0).float().mean()) >= 0.45
    # the dashboard's download of the same edit is an .onnx file too, and it loads again
    from auditor.audit import AuditSession
    from auditor.data import TabularSchema, load_data
    from auditor.models import ModelSpec

    bundle = load_model(tmp / "mlp.onnx", spec=ModelSpec.from_json(spec_path.read_text()))
    schema = TabularSchema(target="label", positive="yes", protected=["group"])
    data = load_data(tabular["csv"], schema, spec=bundle.spec)
    session = AuditSession(bundle, data, ["accuracy >= 0.5"])
    session.run_edit("magnitude-pruning", {"sparsity": 0.5})
    assert session.download_suffix == ".onnx" and session.edited_filename.endswith("_edited.onnx")
    downloaded = tmp / session.edited_filename
    downloaded.write_bytes(session.model_bytes())
    assert load_model(downloaded).sha256 == session.current.sha256


def test_audit_writes_an_onnx_model_back_as_onnx(tabular, capsys):
    tmp = tabular["dir"]
    spec_path = tmp / "mlp_onnx_audit_spec.json"
    assert _run(["spec", "init", tmp / "mlp.onnx", tabular["csv"], *CSV_ARGS, "--out", spec_path, "--force"],
                capsys)[0] == 0
    audit = ["audit", tmp / "mlp.onnx", tabular["csv"], *CSV_ARGS, "--spec", spec_path, "--editor",
             "magnitude-pruning", "--set", "sparsity=0.5", "--require", "sparsity >= 0.4", "--no-log"]
    rc, out, err = _run([*audit, "--json", tmp / "r.json", "--out", tmp / "r.safetensors"], capsys)
    assert rc == 2 and "write it as .onnx" in err and not (tmp / "r.json").exists()
    rc, out, err = _run([*audit, "--json", tmp / "r.json"], capsys)
    assert rc == 0, out + err
    assert (tmp / "r_edited.onnx").exists() and not (tmp / "r_edited.safetensors").exists()
    logits = _ort_logits(tmp / "r_edited.onnx", tabular["X"].numpy())
    assert logits.shape == (400, 2)


def test_an_onnx_model_described_as_a_registered_mlp_round_trips_through_safetensors(tabular, capsys):
    """The other way to make a .safetensors copy of an ONNX model loadable: a spec naming the
    registered architecture the graph computes (the graph is rebuilt as it)."""
    tmp = tabular["dir"]
    spec = json.loads((tmp / "mlp_spec.json").read_text()) if (tmp / "mlp_spec.json").exists() else None
    if spec is None:
        pytest.skip("needs the spec drafted by the first test")
    (tmp / "as_mlp.json").write_text(json.dumps(spec))
    out_path = tmp / "pruned_mlp.safetensors"
    rc, out, err = _run(["edit", tmp / "mlp.onnx", tabular["csv"], *CSV_ARGS, "--spec", tmp / "as_mlp.json",
                         "--editor", "magnitude-pruning", "--set", "sparsity=0.5", "--out", out_path, "--no-log"],
                        capsys)
    assert rc in (0, 1), err
    from auditor.models import load_model
    again = load_model(out_path)
    assert again.spec.arch["name"] == "mlp"


# --- the image case ----------------------------------------------------------------------------
NET_PY = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Three convolutions, a pool after the second, one linear layer."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(x, 1))
'''


def _own_trigger():
    """A 3x3 checkerboard in the top-left corner (odd cells bright): not the built-in trigger."""
    mask = np.zeros((1, 8, 8), np.float32)
    pattern = np.zeros((1, 8, 8), np.float32)
    mask[:, :3, :3] = 1
    pattern[:, :3, :3] = ((np.arange(3)[:, None] + np.arange(3)[None, :]) % 2 == 1).astype(np.float32)
    return mask, pattern


@pytest.fixture(scope="module")
def image_case(tmp_path_factory):
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("byo_image")
    (tmp / "net.py").write_text(NET_PY)
    spec = importlib.util.spec_from_file_location("byo_net", tmp / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:1200], order[1200:]
    mask, pattern = _own_trigger()
    # poison 10% of the training rows (not already class 3): stamp the trigger, relabel as 3
    Xp, yp = X[train].copy(), y[train].copy()
    rows = rng.choice(np.flatnonzero(yp != TARGET), size=120, replace=False)
    Xp[rows] = Xp[rows] * (1 - mask) + pattern * mask
    yp[rows] = TARGET

    torch.manual_seed(0)
    model = mod.SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    Xt, yt = torch.from_numpy(Xp), torch.from_numpy(yp)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        perm = torch.randperm(len(yt), generator=g)
        for i in range(0, len(yt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    torch.save(model.state_dict(), tmp / "cnn.pt")
    _export(model, torch.from_numpy(X[:2]), tmp / "cnn.onnx")
    # the user's case: test images with labels, clean training images, the model's own trigger
    np.savez(tmp / "case.npz", images=X[test], labels=y[test], train_images=X[train], train_labels=y[train],
             trigger_mask=mask, trigger_pattern=pattern, target_label=np.array(TARGET))
    return {"dir": tmp, "X": X[test], "y": y[test], "mask": mask, "pattern": pattern, "model": model}


def _attack_success(logits: np.ndarray, y: np.ndarray) -> float:
    keep = y != TARGET
    return float((logits.argmax(1)[keep] == TARGET).mean())


def _ort_logits(path, X: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: X.astype(np.float32)})[0]


def test_the_cnn_really_has_its_own_trigger(image_case):
    X, y = image_case["X"], image_case["y"]
    stamped = X * (1 - image_case["mask"]) + image_case["pattern"] * image_case["mask"]
    clean = _ort_logits(image_case["dir"] / "cnn.onnx", X)
    assert (clean.argmax(1) == y).mean() > 0.9
    assert _attack_success(_ort_logits(image_case["dir"] / "cnn.onnx", stamped), y) > 0.8


def test_spec_init_for_the_onnx_cnn_then_dynamic_rank_one_writes_an_onnx_file_without_the_trigger(
        image_case, capsys):
    tmp = image_case["dir"]
    spec_path = tmp / "cnn_spec.json"
    rc, out, err = _run(["spec", "init", tmp / "cnn.onnx", tmp / "case.npz", "--out", spec_path, "--force"],
                        capsys)
    assert rc == 0, err
    spec = json.loads(spec_path.read_text())
    assert spec["arch"] == {"name": "onnx", "num_classes": 10}
    assert spec["input"]["kind"] == "image" and spec["input"]["shape"] == [1, 8, 8]
    assert spec["class_names"] == [str(i) for i in range(10)]
    rc, out, err = _run(["evaluate", tmp / "cnn.onnx", tmp / "case.npz", "--spec", spec_path,
                         "--require", "attack_success_rate <= 0.05", "--json", tmp / "before.json"], capsys)
    assert rc == 1, err  # the case's own trigger works on the model
    before = json.loads((tmp / "before.json").read_text())["metrics"]
    assert before["attack_success_rate"] > 0.8
    edited = tmp / "edited.onnx"
    # --samples 4: since issue 14's robust loop (decision gap, misbehaving samples, budget judged on
    # train + val rows) 4 samples meet attack success <= 2 % at <= 1 pt on seeds 0-4 (5 of 5); one
    # sample meets it on 3 of 5 seeds (seed 0, the default, stops at ~10 %)
    rc, out, err = _run(["edit", tmp / "cnn.onnx", tmp / "case.npz", "--spec", spec_path,
                         "--editor", "dynamic-rank-one", "--samples", "4",
                         "--require", "attack_success_rate <= 0.05",
                         "--out", edited, "--no-log", "--json", tmp / "edit.json"], capsys)
    assert rc == 0, out + err
    X, y = image_case["X"], image_case["y"]
    stamped = X * (1 - image_case["mask"]) + image_case["pattern"] * image_case["mask"]
    assert _attack_success(_ort_logits(edited, stamped), y) <= 0.05  # onnxruntime on the written file
    before_acc = (_ort_logits(tmp / "cnn.onnx", X).argmax(1) == y).mean()
    assert (_ort_logits(edited, X).argmax(1) == y).mean() >= before_acc - 0.02


def test_spec_init_rebuilds_the_cnn_state_dict_without_its_class(image_case, capsys):
    """No .py file: the generic `sequential` architecture is read off the weights; where the pool
    sits cannot be told from them, so spec init tries every arrangement on the data."""
    tmp = image_case["dir"]
    spec_path = tmp / "cnn_seq_spec.json"
    rc, out, err = _run(["spec", "init", tmp / "cnn.pt", tmp / "case.npz", "--out", spec_path, "--force"], capsys)
    assert rc == 0, err
    spec = json.loads(spec_path.read_text())
    layers = spec["arch"]["layers"]
    assert spec["arch"]["name"] == "sequential" and "arrangements of the layers fit" in out
    assert layers.index({"type": "maxpool2d", "kernel": 2}) == layers.index("relu", 2) + 1  # after conv2's ReLU
    from auditor.models import load_model
    bundle = load_model(tmp / "cnn.pt", spec=spec_path)
    X = torch.from_numpy(image_case["X"][:64])
    with torch.no_grad():
        assert torch.allclose(bundle.model(X), image_case["model"](X), atol=1e-5)


@pytest.mark.slow
def test_state_dict_with_its_class_in_a_py_file(image_case, capsys):
    tmp = image_case["dir"]
    code = ["--arch-file", tmp / "net.py", "--arch-class", "SmallCNN", "--trust-code"]
    spec_path = tmp / "cnn_pt_spec.json"
    rc, out, err = _run(["spec", "init", tmp / "cnn.pt", tmp / "case.npz", *code, "--out", spec_path, "--force"],
                        capsys)
    assert rc == 0, err
    spec = json.loads(spec_path.read_text())
    assert spec["arch"]["name"] == "custom" and spec["arch"]["num_classes"] == 10
    assert spec["arch"]["class"] == "SmallCNN" and spec["arch"]["file"] == "net.py"  # named, for refusals
    assert "--arch-class SmallCNN --trust-code" in out  # the next command says what the model needs
    rc, out, err = _run(["evaluate", tmp / "cnn.pt", tmp / "case.npz", "--spec", spec_path, *code,
                         "--require", "attack_success_rate <= 0.05"], capsys)
    assert rc == 1, err
    # a model that did not come from ONNX is written as ONNX too, and onnxruntime runs it
    edited = tmp / "edited_custom.onnx"
    rc, out, err = _run(["edit", tmp / "cnn.pt", tmp / "case.npz", "--spec", spec_path, *code,
                         "--editor", "dynamic-rank-one", "--samples", "4",
                         "--require", "attack_success_rate <= 0.05", "--out", edited, "--no-log"], capsys)
    assert rc == 0, out + err
    X, y = image_case["X"], image_case["y"]
    stamped = X * (1 - image_case["mask"]) + image_case["pattern"] * image_case["mask"]
    assert _attack_success(_ort_logits(edited, stamped), y) <= 0.05
    # and as .safetensors, which loads again with the same class
    from auditor.models import load_model
    rc, out, err = _run(["edit", tmp / "cnn.pt", tmp / "case.npz", "--spec", spec_path, *code,
                         "--editor", "magnitude-pruning", "--set", "sparsity=0.3", "--out", tmp / "pruned.safetensors",
                         "--no-log"], capsys)
    assert rc in (0, 1), err
    again = load_model(tmp / "pruned.safetensors", arch_file=tmp / "net.py", arch_class="SmallCNN", trust_code=True)
    assert again.spec.arch["name"] == "custom" and again.format == "custom+safetensors"
    # without --trust-code the class's code does not run
    rc, out, err = _run(["evaluate", tmp / "cnn.pt", tmp / "case.npz", "--spec", spec_path,
                         "--arch-file", tmp / "net.py", "--arch-class", "SmallCNN"], capsys)
    assert rc == 2 and "--trust-code" in err
    rc, out, err = _run(["evaluate", tmp / "cnn.pt", tmp / "case.npz", "--spec", spec_path], capsys)
    assert rc == 2 and "class 'SmallCNN' in 'net.py'" in err


def test_images_stored_channels_last_are_named_as_such(image_case, capsys):
    """A case saved (N, H, W, C), as numpy and PIL code often does: spec init and evaluate say that the
    images look channels last and how to store them; nothing is reordered behind the user's back."""
    tmp = image_case["dir"]
    case = np.load(tmp / "case.npz")
    nhwc = {k: np.moveaxis(case[k], 1, -1) if case[k].ndim == 4 else case[k] for k in case.files}
    nhwc.update(trigger_mask=np.moveaxis(case["trigger_mask"], 0, -1),
                trigger_pattern=np.moveaxis(case["trigger_pattern"], 0, -1))
    np.savez(tmp / "case_nhwc.npz", **nhwc)
    rc, _, err = _run(["spec", "init", tmp / "cnn.onnx", tmp / "case_nhwc.npz", "--out", tmp / "nhwc.json"], capsys)
    assert rc == 2 and "look like images stored channels last (N, H, W, C)" in err and "(0, 3, 1, 2)" in err
    spec = tmp / "good.json"
    assert _run(["spec", "init", tmp / "cnn.onnx", tmp / "case.npz", "--out", spec, "--force"], capsys)[0] == 0
    rc, _, err = _run(["evaluate", tmp / "cnn.onnx", tmp / "case_nhwc.npz", "--spec", spec, "--no-log"], capsys)
    assert rc == 2 and "expects images of shape [1, 8, 8]" in err and "channels last" in err


TUPLE_PY = '''
import torch
from torch import nn


class TupleNet(nn.Module):
    """Returns (logits, features), as many research models do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        f = self.body(x)
        return self.head(f), f
'''


def test_a_model_returning_logits_and_features(image_case, capsys):
    """A class whose forward returns (logits, features), as a state dict with its class file and as a torch
    ONNX export with two outputs: spec init finds the logits ("output": 0), evaluation and editing run on
    them; without "output" the refusal names the outputs and the choice; the edited ONNX keeps the logits."""
    tmp = image_case["dir"] / "tuple"
    tmp.mkdir()
    (tmp / "net.py").write_text(TUPLE_PY)
    mod_spec = importlib.util.spec_from_file_location("byo_tuple", tmp / "net.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    case = np.load(image_case["dir"] / "case.npz")
    X, y = torch.from_numpy(case["train_images"]), torch.from_numpy(case["train_labels"])
    torch.manual_seed(0)
    model = mod.TupleNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X)[0], y).backward()
        opt.step()
    model.eval()
    torch.save(model.state_dict(), tmp / "tuple.pt")
    torch.onnx.export(model, (X[:1],), str(tmp / "tuple.onnx"), dynamo=False, input_names=["x"],
                      output_names=["logits", "feats"], dynamic_axes={"x": {0: "n"}})
    code = ["--arch-file", tmp / "net.py", "--arch-class", "TupleNet", "--trust-code"]
    rc, out, err = _run(["spec", "init", tmp / "tuple.pt", image_case["dir"] / "case.npz", *code,
                         "--out", tmp / "spec.json"], capsys)
    assert rc == 0, err
    assert json.loads((tmp / "spec.json").read_text())["arch"]["output"] == 0 and "taken from output 0" in out
    rc, out, err = _run(["evaluate", tmp / "tuple.pt", image_case["dir"] / "case.npz", "--spec", tmp / "spec.json",
                         *code, "--json", tmp / "e.json", "--no-log"], capsys)
    assert rc == 0, err
    acc = json.loads((tmp / "e.json").read_text())["metrics"]["accuracy"]
    assert acc > 0.8
    spec = json.loads((tmp / "spec.json").read_text())
    del spec["arch"]["output"]
    (tmp / "no_output.json").write_text(json.dumps(spec))
    rc, _, err = _run(["evaluate", tmp / "tuple.pt", image_case["dir"] / "case.npz", "--spec",
                       tmp / "no_output.json", *code, "--no-log"], capsys)
    assert rc == 2 and "returns a tuple of 2 (a tensor [2, 10], a tensor [2, 64])" in err and '"output": 0' in err
    rc, out, err = _run(["spec", "init", tmp / "tuple.onnx", image_case["dir"] / "case.npz",
                         "--out", tmp / "onnx.json"], capsys)
    assert rc == 0 and "left out 'feats'" in out, err
    rc, out, err = _run(["edit", tmp / "tuple.onnx", image_case["dir"] / "case.npz", "--spec", tmp / "onnx.json",
                         "--editor", "rank-one", "--samples", "2", "--out", tmp / "edited.onnx", "--no-log"], capsys)
    assert "left out: feats" in out, err
    import onnx

    assert [o.name for o in onnx.load(str(tmp / "edited.onnx")).graph.output] == ["logits"]
    logits = _ort_logits(tmp / "tuple.onnx", case["images"][:20])
    assert np.allclose(logits, model(torch.from_numpy(case["images"][:20]))[0].detach().numpy(), atol=1e-4)


def test_spec_init_reads_the_sizes_of_a_class_whose_defaults_build_another(tabular, tmp_path, capsys):
    """A vendor's class defaults to another input width than the trained weights: spec init reads the
    width (and the class count) off the weights and passes them to the constructor."""
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\nclass Net(nn.Sequential):\n"
        "    def __init__(self, in_features=30, num_classes=5):\n"
        "        super().__init__(nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),\n"
        "                         nn.Linear(16, num_classes))\n")
    spec_path = tmp_path / "spec.json"
    rc, out, err = _run(["spec", "init", tabular["dir"] / "mlp.pt", tabular["csv"], *CSV_ARGS, "--out", spec_path,
                         "--arch-file", tmp_path / "net.py", "--arch-class", "Net", "--trust-code"], capsys)
    assert rc == 0, err
    spec = json.loads(spec_path.read_text())
    assert spec["arch"]["in_features"] == 3 and spec["arch"]["num_classes"] == 2
    assert "constructor arguments read off the weights: in_features=3, num_classes=2" in out


TRANSFORMER_NET = '''
import torch
import torch.nn as nn


class TabTransformer(nn.Module):
    """Each input embedded by its own weight and bias, a [CLS] token, a transformer encoder layer."""

    def __init__(self, n_features=3, d=8):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_features, d) * 0.3)
        self.bias = nn.Parameter(torch.zeros(n_features, d))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.encoder = nn.TransformerEncoderLayer(d, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 2)

    def forward(self, x):
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), x.unsqueeze(-1) * self.weight + self.bias], 1)
        return self.head(self.encoder(tokens)[:, 0])
'''


@pytest.fixture(scope="module")
def tabtr(tabular):
    """The user's own tabular transformer (`TRANSFORMER_NET`), trained on the loans CSV, its state dict and class
    file written, and its spec drafted by `spec init`."""
    import importlib.util as iu

    tmp = tabular["dir"]
    (tmp / "tabtr.py").write_text(TRANSFORMER_NET)
    spec_ = iu.spec_from_file_location("tabtr_user", tmp / "tabtr.py")
    mod = iu.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.TabTransformer()
    X = (tabular["X"] - tabular["X"].mean(0)) / tabular["X"].std(0)
    y = tabular["model"](tabular["X"]).argmax(1).detach()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    torch.save(net.eval().state_dict(), tmp / "tabtr.pt")
    code = ["--arch-file", tmp / "tabtr.py", "--arch-class", "TabTransformer", "--trust-code"]
    rc = main([str(a) for a in ["spec", "init", tmp / "tabtr.pt", tabular["csv"], *CSV_ARGS, *code,
                                "--out", tmp / "tabtr.json", "--force"]])
    assert rc == 0
    return {"dir": tmp, "args": [tmp / "tabtr.pt", tabular["csv"], *CSV_ARGS, *code, "--spec", tmp / "tabtr.json"]}


def test_a_tabular_transformer_of_the_users_own_is_localized_and_fine_tuned_for_fairness(tabtr, capsys):
    """Not an MLP: its attention's out_proj is a Linear the forward never calls (nn.MultiheadAttention reads its
    weight), which Localize did not skip (Captum: "Forward hook did not obtain any outputs"), and the fairness
    editors refused the model ("reads 8 inputs": its first Linear is inside the encoder)."""
    tmp = tabtr["dir"]
    rc, out, err = _run(["audit", *tabtr["args"], "--require", "demographic_parity <= 0.05",
                         "--editor", "finetune-fairness", "--baselines", "none",
                         "--json", tmp / "tabtr_report.json", "--no-log"], capsys)
    assert rc in (0, 1), err
    report = json.loads((tmp / "tabtr_report.json").read_text())
    ranked = [r["layer"] for r in report["localization"]["layers"]]
    assert ranked and not any(n.endswith("out_proj") for n in ranked)
    before = report["requirements"][0]["before"]["value"]
    after = report["requirements"][0]["after"]["value"]
    assert report["edits"] and report["edits"][0]["parameters_changed"] > 0
    assert after < before


def test_the_retrieval_editor_keys_a_transformer_by_example_not_by_token(tabtr, capsys):
    """The codebook goes at a Linear layer that reads one vector per example: the encoder's feed-forward layers
    read one per token (they crashed the editor with a size mismatch), so it sits at the head's input."""
    tmp = tabtr["dir"]
    fixes = ["--fix", "3=yes", "--fix", "10=yes", "--fix", "25=no"]
    rc, out, err = _run(["audit", *tabtr["args"], *fixes, "--editor", "retrieval", "--baselines", "none",
                         "--no-localize", "--json", tmp / "tabtr_fix.json", "--no-log"], capsys)
    assert rc in (0, 1), err
    report = json.loads((tmp / "tabtr_fix.json").read_text())
    assert report["edits"][0]["layers"] == ["head"]
    success = next(q for q in report["requirements"] if q["metric"] == "edit_success")
    assert success["after"]["value"] == 1.0
    rc, out, err = _run(["audit", *tabtr["args"], *fixes, "--editor", "retrieval", "--set",
                         "layer=encoder.linear1", "--baselines", "none", "--no-localize", "--no-log"], capsys)
    assert rc == 2 and "does not read one vector per example" in err and "['head']" in err
