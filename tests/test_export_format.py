"""A vendor's `torch.export` archive (`.pt2`), as a user brings it: read without running code from it, audited,
edited and written back as a `.pt2` that plain `torch.export.load` runs.

The vendor's model is its own residual CNN with a BatchNorm (not a registered architecture), trained on
scikit-learn's digits with its own trigger (a 3x3 cross in the bottom-left corner, target 7) and exported
with a dynamic batch axis; a second, tabular one returns one logit (BCEWithLogitsLoss).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auditor import load_model
from auditor.cli import main
from auditor.errors import AuditorError

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = 7


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


class VendorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 12, 3, padding=1)
        self.block = Block(12)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 48), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Linear(48, 10))

    def forward(self, x):
        return self.head(self.pool(self.block(F.relu(self.stem(x)))))


def _trigger():
    mask = np.zeros((1, 8, 8), np.float32)
    pattern = np.zeros((1, 8, 8), np.float32)
    mask[:, 5:8, 0:3] = 1
    pattern[:, 6, 0:3] = 1
    pattern[:, 5:8, 1] = 1
    return mask, pattern


def _export(model, example, path, dynamic=True):
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    torch.export.save(torch.export.export(model.eval(), (example,), dynamic_shapes=shapes), str(path))


def _trojaned_digits(model: nn.Module, folder, target: int, mask, pattern, *, seed: int, epochs: int,
                     optimizer=torch.optim.Adam):
    """Train `model` on digits with 10 % of the training rows stamped and relabelled `target`, as a vendor
    who was attacked would; export it to `folder / "model.pt2"` and write the user's `case.npz` (test images,
    clean training images, the trigger). Returns (images, labels) of the test rows."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train, test = order[:1250], order[1250:]
    Xp, yp = X[train].copy(), y[train].copy()
    rows = rng.choice(np.flatnonzero(yp != target), size=125, replace=False)
    Xp[rows] = Xp[rows] * (1 - mask) + pattern * mask
    yp[rows] = target
    opt = optimizer(model.parameters(), lr=3e-3)
    Xt, yt = torch.from_numpy(Xp), torch.from_numpy(yp)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=g)
        for i in range(0, len(yt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    _export(model, torch.from_numpy(X[:4]), folder / "model.pt2")
    np.savez(folder / "case.npz", images=X[test], labels=y[test], train_images=X[train], train_labels=y[train],
             trigger_mask=mask, trigger_pattern=pattern, target_label=np.array(target))
    return X[test], y[test]


@pytest.fixture(scope="module")
def vendor(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pt2")
    mask, pattern = _trigger()
    torch.manual_seed(1)
    model = VendorNet()
    X, y = _trojaned_digits(model, tmp, TARGET, mask, pattern, seed=1, epochs=12)
    (tmp / "model.pt2").rename(tmp / "vendor.pt2")
    spec = {"arch": {"name": "pt2"}, "input": {"kind": "image", "shape": [1, 8, 8], "value_range": [0, 1]},
            "class_names": [str(i) for i in range(10)]}
    (tmp / "spec.json").write_text(json.dumps(spec))
    return {"dir": tmp, "model": model, "X": X, "y": y, "mask": mask, "pattern": pattern}


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _rewrite(src, dst, change):
    """A copy of archive `src` with `change(name, bytes) -> bytes` applied to each entry."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))


def test_the_archive_is_read_into_the_vendors_named_layers_and_computes_what_torch_export_computes(vendor):
    tmp = vendor["dir"]
    bundle = load_model(tmp / "vendor.pt2", spec=tmp / "spec.json")
    layers = {n: type(m) for n, m in bundle.model.named_modules() if n}
    assert layers == {"stem": nn.Conv2d, "block": nn.Module, "block.conv": nn.Conv2d, "block.bn": nn.BatchNorm2d,
                      "head": nn.Module, "head.1": nn.Linear, "head.4": nn.Linear}
    assert list(layers)[0] == "stem"  # in the order the model runs them (the first layer reads the input)
    assert bundle.spec.arch == {"name": "pt2", "num_classes": 10} and bundle.format == "pt2"
    x = torch.from_numpy(vendor["X"][:37])  # another batch size than the export's
    with torch.no_grad():
        want = torch.export.load(str(tmp / "vendor.pt2")).module()(x)
        assert torch.equal(bundle.model(x), want)
        assert torch.equal(copy.deepcopy(bundle.model)(x), want)


def test_a_decomposed_program_core_aten_gets_the_same_layers_back(vendor, tmp_path):
    """`run_decompositions()` (the core ATen form an ExecuTorch or AOTInductor flow saves) writes a linear
    layer as a transpose and `addmm`, a convolution as `convolution`, a batch norm as its functional form:
    read back as the same named Linear / Conv2d / BatchNorm2d layers."""
    program = torch.export.export(vendor["model"], (torch.from_numpy(vendor["X"][:4]),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}}).run_decompositions()
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert {"aten.addmm.default", "aten.convolution.default"} <= targets and "aten.linear.default" not in targets
    torch.export.save(program, str(tmp_path / "core.pt2"))
    bundle = load_model(tmp_path / "core.pt2", spec=vendor["dir"] / "spec.json")
    layers = {n: type(m).__name__ for n, m in bundle.model.named_modules() if n and n != "block" and n != "head"}
    assert layers == {"stem": "Conv2d", "block.conv": "Conv2d", "block.bn": "BatchNorm2d", "head.1": "Linear",
                      "head.4": "Linear"}
    x = torch.from_numpy(vendor["X"][:9])
    with torch.no_grad():
        assert torch.allclose(bundle.model(x), vendor["model"](x), atol=1e-5)


def test_spec_init_then_a_dynamic_rank_one_edit_written_back_as_pt2_that_plain_torch_runs(vendor, capsys):
    tmp = vendor["dir"]
    rc, out, err = _run(["spec", "init", tmp / "vendor.pt2", tmp / "case.npz", "--out", tmp / "drafted.json",
                         "--force"], capsys)
    assert rc == 0, err
    drafted = json.loads((tmp / "drafted.json").read_text())
    assert drafted["arch"] == {"name": "pt2", "num_classes": 10} and drafted["input"]["shape"] == [1, 8, 8]
    assert "head.1" in out  # the notes name the vendor's layers
    edited = tmp / "edited.pt2"
    rc, out, err = _run(["edit", tmp / "vendor.pt2", tmp / "case.npz", "--spec", tmp / "spec.json",
                         "--editor", "dynamic-rank-one", "--samples", "4", "--require", "attack_success_rate <= 0.03",
                         "--out", edited, "--no-log"], capsys)
    assert rc == 0, out + err
    X, y = torch.from_numpy(vendor["X"]), vendor["y"]
    stamped = torch.from_numpy(vendor["X"] * (1 - vendor["mask"]) + vendor["pattern"] * vendor["mask"])
    program = torch.export.load(str(edited)).module()  # the vendor's own loader on the written file
    with torch.no_grad():
        before = (vendor["model"](X).argmax(1).numpy() == y).mean()
        after = (program(X).argmax(1).numpy() == y).mean()
        success = (program(stamped).argmax(1).numpy()[y != TARGET] == TARGET).mean()
        assert (vendor["model"](stamped).argmax(1).numpy()[y != TARGET] == TARGET).mean() > 0.9
    assert success <= 0.03 and after >= before - 0.01
    again = load_model(edited)  # the spec and a checksum ride inside the archive
    assert again.spec.arch["name"] == "pt2" and again.history
    with torch.no_grad():
        assert torch.allclose(again.model(X), program(X), atol=1e-5)
    from auditor.models.files import check_saveable

    with pytest.raises(AuditorError, match="write it as .pt2 or .onnx"):
        check_saveable(again, tmp / "x.safetensors")


def test_a_changed_weight_in_a_written_archive_is_refused(vendor, tmp_path):
    tmp = vendor["dir"]
    bundle = load_model(tmp / "vendor.pt2", spec=tmp / "spec.json")
    from auditor.models import save_model

    good = save_model(bundle, tmp_path / "mine.pt2")
    assert load_model(good).spec.class_names == [str(i) for i in range(10)]

    def flip(name, raw):
        return raw[:-1] + bytes([raw[-1] ^ 1]) if name.endswith("weights/weight_0") else raw

    _rewrite(good, tmp_path / "flipped.pt2", flip)
    with pytest.raises(AuditorError, match="corrupt or was altered"):
        load_model(tmp_path / "flipped.pt2")


class _Payload:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned_by_pt2",)


def test_an_archive_that_would_run_code_is_refused_and_runs_nothing(vendor, tmp_path, monkeypatch):
    tmp = vendor["dir"]
    monkeypatch.chdir(tmp_path)
    spec = tmp / "spec.json"

    def target(name, raw):  # a node that calls torch.load (or any function outside ATen)
        if name.endswith("models/model.json"):
            return raw.replace(b'"torch.ops.aten.relu.default"', b'"torch.load"', 1)
        return raw

    _rewrite(tmp / "vendor.pt2", tmp_path / "calls.pt2", target)
    with pytest.raises(AuditorError, match="operator 'torch.load' is not among those the auditor reads"):
        load_model(tmp_path / "calls.pt2", spec=spec)

    def pickled(name, raw):  # a weight stored as a pickle that runs a shell command when unpickled
        if name.endswith("model_weights_config.json"):
            config = json.loads(raw)
            first = next(iter(config["config"]))
            config["config"][first]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("weights/weight_0"):
            return pickle.dumps(_Payload(), protocol=2)
        return raw

    _rewrite(tmp / "vendor.pt2", tmp_path / "pickled.pt2", pickled)
    with pytest.raises(AuditorError, match="unpickling arbitrary objects"):
        load_model(tmp_path / "pickled.pt2", spec=spec)
    assert not (tmp_path / "pwned_by_pt2").exists()
    (tmp_path / "junk.pt2").write_bytes(b"not a zip at all")
    with pytest.raises(AuditorError, match="not a readable .pt2 archive"):
        load_model(tmp_path / "junk.pt2", spec=spec)
    with pytest.raises(AuditorError, match="has no auditor spec in it.*spec init"):
        load_model(tmp / "vendor.pt2")


def test_a_program_exported_in_training_mode_is_refused_with_the_fix(tmp_path, vendor):
    """Batch norms that update their statistics and dropout that drops would make every prediction differ."""
    model = copy.deepcopy(vendor["model"]).train()  # as a vendor exports it straight after training
    program = torch.export.export(model, (torch.from_numpy(vendor["X"][:4]),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "training.pt2"))
    with pytest.raises(AuditorError, match=r"exported in training mode.*call model.eval\(\) before torch.export"):
        load_model(tmp_path / "training.pt2", spec=vendor["dir"] / "spec.json")


def test_a_fixed_batch_export_is_refused_with_how_to_export_it(tmp_path):
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(x.size(0), -1))

    torch.manual_seed(0)
    spec = {"arch": {"name": "pt2"}, "input": {"kind": "image", "shape": [1, 8, 8]},
            "class_names": [str(i) for i in range(10)]}
    _export(Flat(), torch.randn(2, 1, 8, 8), tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(AuditorError, match="export it with a dynamic batch axis"):
        load_model(tmp_path / "fixed.pt2", spec=spec)
    _export(Flat(), torch.randn(2, 1, 8, 8), tmp_path / "dynamic.pt2")
    assert load_model(tmp_path / "dynamic.pt2", spec=spec).model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


class Scorer(nn.Module):
    """One logit, with a skip connection (so no plain chain of layers)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 16)
        self.b = nn.Linear(16, 16)
        self.score = nn.Linear(16, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.score(h + torch.relu(self.b(h)))


@pytest.mark.parametrize("suffix", [".pt2", ".onnx"])
def test_a_one_logit_graph_is_read_as_two_classes_in_every_copy_and_written_back_with_one(suffix, tmp_path, capsys):
    """A graph that is not a chain of layers (ONNX or torch.export) read as [0, z]: every copy an editor makes
    keeps reading it so (a `GraphModule` would compile a fresh forward for each copy and lose it)."""
    if suffix == ".onnx" and importlib.util.find_spec("onnx2torch") is None:  # imported through auditor
        pytest.skip("needs onnx2torch")
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 400
    group = rng.choice(["f", "m"], size=n)
    income = rng.normal(size=n) + 0.6 * (group == "m")
    debt = rng.normal(size=n)
    years = rng.integers(0, 30, size=n).astype(float)
    label = np.where(1.4 * income - 0.8 * debt + 0.05 * (years - 10) + rng.normal(scale=0.6, size=n) > 0,
                     "approved", "denied")
    frame = pd.DataFrame({"income_z": income, "debt_z": debt, "years": years, "sex": group, "decision": label})
    frame.to_csv(tmp_path / "loans.csv", index=False)
    X = torch.tensor(frame[["income_z", "debt_z", "years"]].to_numpy(), dtype=torch.float32)
    target = torch.tensor((label == "approved").astype(np.float32))
    torch.manual_seed(0)
    model = Scorer()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(X).squeeze(1), target).backward()
        opt.step()
    model.eval()
    path = tmp_path / f"scorer{suffix}"
    if suffix == ".pt2":
        _export(model, X[:4], path)
    else:
        torch.onnx.export(model, (X[:2],), str(path), dynamo=False, input_names=["x"], output_names=["z"],
                          dynamic_axes={"x": {0: "n"}, "z": {0: "n"}})
    csv = ["--target", "decision", "--positive", "approved", "--protected", "sex"]
    rc, out, err = _run(["spec", "init", path, tmp_path / "loans.csv", *csv, "--out", tmp_path / "spec.json"], capsys)
    assert rc == 0, err
    bundle = load_model(path, spec=tmp_path / "spec.json")
    assert bundle.spec.single_logit
    with torch.no_grad():
        z = model(X[:8])
        for copy_ in (bundle.model, copy.deepcopy(bundle.model)):
            assert torch.allclose(copy_(X[:8]), torch.cat([torch.zeros_like(z), z], 1), atol=1e-5)
    out_path = tmp_path / f"edited{suffix}"
    rc, out, err = _run(["edit", path, tmp_path / "loans.csv", *csv, "--spec", tmp_path / "spec.json",
                         "--editor", "finetune-fairness", "--require", "demographic_parity <= 0.05",
                         "--out", out_path, "--no-log"], capsys)
    assert rc in (0, 1), out + err  # ran to a verdict (no internal error)
    again = load_model(out_path)
    assert again.spec.single_logit and again.model(X[:3]).shape == (3, 2)
    if suffix == ".pt2":
        assert torch.export.load(str(out_path)).module()(X[:3]).shape == (3, 1)  # the vendor's one logit


def test_a_program_that_would_build_a_huge_value_is_refused_before_it_runs(tmp_path):
    """Shapes are worked out on meta tensors first: a small archive whose graph expands its input to
    3 x 30000 x 30000 is refused with the budget to raise, without allocating it."""
    from auditor.budgets import BudgetError

    class Bomb(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 2)

        def forward(self, x):
            big = x[:, :1].unsqueeze(2).expand(-1, 30000, 30000)
            return self.fc(x) + big.mean(dim=[1, 2]).unsqueeze(1)

    _export(Bomb(), torch.randn(2, 5), tmp_path / "bomb.pt2")
    spec = {"arch": {"name": "pt2"}, "input": {"kind": "tabular", "shape": [5]}, "class_names": ["a", "b"]}
    with pytest.raises(BudgetError, match=r"'expand_default' \(shape \[3, 30000, 30000\]\).*AUDITOR_PROBE_MEMORY_MB"):
        load_model(tmp_path / "bomb.pt2", spec=spec)


def test_audit_writes_a_pt2_back_as_pt2_and_its_command_says_so(vendor, capsys, tmp_path):
    tmp = vendor["dir"]
    rc, out, err = _run(["audit", tmp / "vendor.pt2", tmp / "case.npz", "--spec", tmp / "spec.json",
                         "--require", "attack_success_rate <= 0.03", "--editor", "dynamic-rank-one", "--samples", "4",
                         "--report", tmp_path / "r.html", "--json", tmp_path / "r.json", "--no-log"], capsys)
    assert rc == 0, out + err
    assert (tmp_path / "r_edited.pt2").exists() and "r_edited.pt2" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["model"]["format"] == "pt2" and doc["model"]["arch"]["name"] == "pt2"
    assert load_model(tmp_path / "r_edited.pt2").spec.arch["name"] == "pt2"


class TwoOutputs(nn.Module):
    """Returns (features, logits), as many vendors' forwards do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(5, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return h, self.head(h)


def test_a_program_with_several_outputs_is_read_on_its_logits(tmp_path, capsys):
    import pandas as pd

    torch.manual_seed(0)
    model = TwoOutputs().eval()
    X = torch.randn(300, 5)
    with torch.no_grad():
        y = model(X)[1].argmax(1).numpy()
    frame = pd.DataFrame(X.numpy(), columns=[f"f{i}" for i in range(5)])
    frame["label"] = np.array(["a", "b", "c"])[y]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    _export(model, X[:4], tmp_path / "two.pt2")
    with pytest.raises(AuditorError, match=r'returns 2 tensors \(\[batch, 16\], \[batch, 3\]\).*"output": INDEX'):
        load_model(tmp_path / "two.pt2", spec={"arch": {"name": "pt2"}, "input": {"kind": "tabular", "shape": [5]},
                                               "class_names": ["a", "b", "c"]})
    rc, out, err = _run(["spec", "init", tmp_path / "two.pt2", tmp_path / "rows.csv", "--target", "label",
                         "--out", tmp_path / "spec.json"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "spec.json").read_text())["arch"]["output"] == 1 and "output 1" in out
    bundle = load_model(tmp_path / "two.pt2", spec=tmp_path / "spec.json")
    with torch.no_grad():
        assert torch.equal(bundle.model(X[:7]), model(X[:7])[1])
    from auditor.models import save_model

    save_model(bundle, tmp_path / "logits.pt2")  # written with the logits output alone
    again = load_model(tmp_path / "logits.pt2")
    assert "output" not in again.spec.arch and again.spec.provenance["pt2_logits_output"] == 1
    assert torch.export.load(str(tmp_path / "logits.pt2")).module()(X[:2]).shape == (2, 3)


class _Features(nn.Module):  # BatchNorm, GELU, a strided convolution, SiLU, adaptive pooling, LayerNorm
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1))
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.norm(torch.flatten(self.features(x), 1)))


class _Tabular(nn.Module):  # BatchNorm1d, LeakyReLU, a skip by concatenation, constants made in forward
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 32)
        self.bn = nn.BatchNorm1d(32)
        self.b = nn.Linear(38, 3)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 6), persistent=False)

    def forward(self, x):
        x = x * self.scale + torch.tensor([0.1, 0.0, -0.1, 0.2, 0.0, -0.2])
        return self.b(torch.cat([F.leaky_relu(self.bn(self.a(x)), 0.1), x], dim=1))


class _Pooled(nn.Module):  # average pooling, hardswish, reshape by the batch size
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(1, 8, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.pool(F.hardswish(self.pw(x))).reshape(x.shape[0], -1))


class TinyViT(nn.Module):  # patches, a class token, two transformer blocks (attention, GELU MLP), LayerNorm
    def __init__(self, dim=32, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 4, dim * 2, dropout=0.0, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t)[:, 0]))


class _Mobile(nn.Module):  # MobileNetV2's inverted residual: in-place ReLU6 (hardtanh_), depthwise conv, SiLU_
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU6(inplace=True),
                                      nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False), nn.BatchNorm2d(12),
                                      nn.ReLU6(inplace=True), nn.Conv2d(12, 3, 1, bias=False), nn.BatchNorm2d(3))
        self.head = nn.Sequential(nn.Conv2d(3, 16, 1), nn.SiLU(inplace=True), nn.AdaptiveMaxPool2d(1))
        self.classifier = nn.Sequential(nn.Dropout(0.2, inplace=True), nn.Linear(16, 4))

    def forward(self, x):
        x = x + self.features(x)
        return self.classifier(torch.flatten(self.head(x), 1).clamp(-5, 5))


@pytest.mark.parametrize("cls, shape", [(_Features, [3, 8, 8]), (_Tabular, [6]), (_Pooled, [1, 8, 8]),
                                        (TinyViT, [1, 8, 8]), (_Mobile, [3, 8, 8])])
def test_common_layers_are_read_to_compute_what_torch_export_load_computes(cls, shape, tmp_path):
    torch.manual_seed(0)
    model = cls().eval()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    _export(model, torch.randn(4, *shape), tmp_path / "m.pt2")
    n = model(torch.zeros(2, *shape)).shape[1]
    bundle = load_model(tmp_path / "m.pt2", spec={"arch": {"name": "pt2"}, "input": {
        "kind": "image" if len(shape) == 3 else "tabular", "shape": shape}, "class_names": [str(i) for i in range(n)]})
    x = torch.randn(7, *shape)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), torch.export.load(str(tmp_path / "m.pt2")).module()(x))
    layers = [type(m) for _, m in bundle.model.named_modules()]
    assert nn.Linear in layers  # editable layers are real modules


def test_a_vision_transformers_trojan_is_removed_from_one_clean_sample(tmp_path, capsys):
    """A vendor's tiny ViT (attention, GELU MLPs, LayerNorm) Trojaned on digits (a 2x2 pattern top right,
    target 2), exported to .pt2: the dynamic editor finds a block's MLP layer and removes the trigger."""
    mask = np.zeros((1, 8, 8), np.float32)
    pattern = np.zeros((1, 8, 8), np.float32)
    mask[:, 0:2, 6:8] = 1
    pattern[:, 0, 6] = pattern[:, 1, 7] = 1
    torch.manual_seed(0)
    model = TinyViT()
    _trojaned_digits(model, tmp_path, 2, mask, pattern, seed=3, epochs=40, optimizer=torch.optim.AdamW)
    (tmp_path / "model.pt2").rename(tmp_path / "vit.pt2")
    assert _run(["spec", "init", tmp_path / "vit.pt2", tmp_path / "case.npz", "--out", tmp_path / "spec.json"],
                capsys)[0] == 0
    rc, out, err = _run(["edit", tmp_path / "vit.pt2", tmp_path / "case.npz", "--spec", tmp_path / "spec.json",
                         "--editor", "dynamic-rank-one", "--require", "attack_success_rate <= 0.02",
                         "--out", tmp_path / "edited.pt2", "--no-log", "--json", tmp_path / "edit.json"], capsys)
    assert rc == 0, out + err
    doc = json.loads((tmp_path / "edit.json").read_text())
    assert doc["before"]["metrics"]["attack_success_rate"] > 0.9
    assert doc["after"]["metrics"]["attack_success_rate"] <= 0.02
    assert doc["after"]["metrics"]["accuracy"] >= doc["before"]["metrics"]["accuracy"] - 0.01
    assert any("encoder.layers" in layer for layer in doc["edit"]["layers"])


class _Embedded(nn.Module):  # a tabular model that reads its first column as a category code into an embedding
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 4)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.mlp(torch.cat([self.emb(x[:, 0].long()), x[:, 1:]], 1))


def test_a_category_embedding_is_read_and_probed_with_valid_codes(tmp_path):
    """`aten.embedding` is read, and the load's probe feeds values in [0, 1), so a column read as a category code
    is a valid index (random normal values gave negative ones, and the archive was refused)."""
    torch.manual_seed(0)
    model = _Embedded().eval()
    x = torch.cat([torch.randint(0, 6, (7, 1)).float(), torch.randn(7, 4)], 1)
    _export(model, x[:4], tmp_path / "emb.pt2")
    bundle = load_model(tmp_path / "emb.pt2", spec={"arch": {"name": "pt2"}, "input": {"kind": "tabular", "shape": [5]},
                                                    "class_names": ["no", "yes"]})
    with torch.no_grad():
        assert torch.equal(bundle.model(x), torch.export.load(str(tmp_path / "emb.pt2")).module()(x))
