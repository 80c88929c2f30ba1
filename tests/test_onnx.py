"""ONNX in and out: load -> evaluate -> edit -> export, and onnxruntime agrees with PyTorch.

Covers the shipped MLP (Adult) and CNN (Trojan digits), a foreign MLP with an activation our
registry does not have (no spec in the file: `--spec` needed), and a graph that is not a chain
(a residual block) that stays a `torch.fx.GraphModule`.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from auditor.models.onnx_format import _onnx2torch  # noqa: E402

try:  # through our importer: onnx2torch imports torchvision, which must not be installed
    _onnx2torch()
except Exception as exc:  # noqa: BLE001
    pytest.skip(f"onnx2torch is not usable ({exc}); `make install` installs it", allow_module_level=True)

from auditor import AuditorError, evaluate, load_model  # noqa: E402
from auditor.cli import main  # noqa: E402
from auditor.editors import get_editor  # noqa: E402
from auditor.models import editable_layers, save_model  # noqa: E402
from auditor.models.onnx_format import export_onnx, onnxruntime_max_diff  # noqa: E402
from tests.conftest import SAMPLES  # noqa: E402
from tests.fixtures import tabular_data  # noqa: E402


def _ort_logits(path, X: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: X.numpy()})[0]


def _torch_logits(bundle, X: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return bundle.model.eval()(X).numpy()


def test_mlp_onnx_roundtrip_is_the_same_model(tmp_path, adult_mlp, adult):
    path = export_onnx(adult_mlp, tmp_path / "adult.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["auditor.spec"])["arch"]["name"] == "mlp"
    loaded = load_model(path)  # spec from the ONNX metadata
    assert loaded.format == "onnx" and loaded.sha256 == adult_mlp.sha256
    assert [n for n, _ in editable_layers(loaded.model)] == ["fc1", "fc2", "out"]
    X = adult.test.X
    assert np.abs(_ort_logits(path, X) - _torch_logits(adult_mlp, X)).max() < 1e-4
    assert np.array_equal(_torch_logits(loaded, X), _torch_logits(adult_mlp, X))
    assert evaluate(loaded, adult).metrics["accuracy"] > 0.84


def test_cnn_onnx_load_edit_export_and_onnxruntime_agrees(tmp_path, trojan_cnn, digits_trojan):
    path = save_model(trojan_cnn, tmp_path / "trojan.onnx")  # save_model dispatches on the suffix
    loaded = load_model(path)
    before = evaluate(loaded, digits_trojan, ["attack_success_rate <= 0.02"])
    assert before.metrics["attack_success_rate"] > 0.9
    editor = "dynamic-rank-one" if "dynamic-rank-one" in _editors() else "magnitude-pruning"
    result = get_editor(editor).edit(loaded, digits_trojan, ["attack_success_rate <= 0.02", "accuracy >= 0.95"],
                                     device="cpu")
    after = evaluate(result.bundle, digits_trojan)
    if editor == "dynamic-rank-one":
        assert after.metrics["attack_success_rate"] < 0.1 and after.metrics["accuracy"] > 0.93
    out = export_onnx(result.bundle, tmp_path / "trojan_edited.onnx")
    X = torch.cat([digits_trojan.test.X, digits_trojan.corrupt("test")])
    got = _ort_logits(out, X)
    assert np.abs(got - _torch_logits(result.bundle, X)).max() < 1e-4
    assert np.abs(got - _torch_logits(trojan_cnn, X)).max() > 1e-3  # the edit is in the file
    again = load_model(out)
    assert again.sha256 == result.bundle.sha256 and again.history[-1]["editor"] == editor
    assert load_model(path).sha256 == trojan_cnn.sha256  # the original file is untouched


def _editors():
    from auditor.editors import EDITORS
    return EDITORS


def _export_plain(module: nn.Module, path, n_in: int) -> None:
    """An ONNX file as a vendor would send it: no auditor metadata."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.randn(2, n_in),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})


def _toy_data(n_in: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, n_in)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return tabular_data(X, y, {"g": np.where(X[:, 2] > 0, "a", "b").tolist()})


FOREIGN_SPEC = {"arch": {"name": "onnx", "num_classes": 2}, "input": {"kind": "tabular"}, "class_names": ["0", "1"]}


class Residual(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.inner = nn.Linear(n, n)
        self.head = nn.Linear(n, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.inner(x)) + x)


@pytest.mark.parametrize("kind", ["tanh-chain", "residual"])
def test_foreign_onnx_needs_a_spec_then_audits_edits_and_exports(tmp_path, kind):
    torch.manual_seed(0)
    n = 6
    module = (nn.Sequential(nn.Linear(n, 16), nn.Tanh(), nn.Linear(16, 2)) if kind == "tanh-chain"
              else Residual(n))
    path = tmp_path / "vendor.onnx"
    _export_plain(module, path, n)
    with pytest.raises(AuditorError, match="no auditor spec in its ONNX metadata; pass one with --spec") as err:
        load_model(path)
    assert "auditor spec init vendor.onnx DATA" in str(err.value)  # how to draft one
    (tmp_path / "spec.json").write_text(json.dumps(FOREIGN_SPEC))
    bundle = load_model(path, spec=tmp_path / "spec.json")
    assert bundle.spec.arch["in_features"] == n  # read from the graph
    assert type(bundle.model).__name__ == ("Sequential" if kind == "tanh-chain" else "OnnxModel")
    layers = [name for name, _ in editable_layers(bundle.model)]
    assert len(layers) == 2 and all(isinstance(m, nn.Linear) for _, m in editable_layers(bundle.model))
    data = _toy_data(n)
    X = data.test.X
    assert np.abs(_torch_logits(bundle, X) - module(X).detach().numpy()).max() < 1e-5
    # hookable: a forward hook on the first layer sees its output
    seen = []
    handle = editable_layers(bundle.model)[0][1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    evaluate(bundle, data)
    handle.remove()
    assert seen and seen[0][-1] == (16 if kind == "tanh-chain" else n)
    result = get_editor("magnitude-pruning", sparsity=0.5).edit(bundle, data, device="cpu")
    assert evaluate(result.bundle, data).metrics["sparsity"] >= 0.49
    out = export_onnx(result.bundle, tmp_path / "vendor_edited.onnx")
    assert np.abs(_ort_logits(out, X) - _torch_logits(result.bundle, X)).max() < 1e-5
    again = load_model(out)  # our export carries the spec now
    assert again.sha256 == result.bundle.sha256


def test_onnx_through_the_cli(tmp_path, compas_mlp):
    onnx_path = export_onnx(compas_mlp, tmp_path / "compas.onnx")
    codes = []
    for model in (SAMPLES / "compas_mlp.safetensors", onnx_path):
        out = tmp_path / f"{model.suffix[1:]}.json"
        codes.append(main(["evaluate", str(model), "compas", "--require", "accuracy >= 0.6", "--json", str(out)]))
    a, b = (json.loads((tmp_path / f"{s}.json").read_text()) for s in ("safetensors", "onnx"))
    assert codes == [0, 0]
    assert a["metrics"] == pytest.approx(b["metrics"]) and b["model"]["format"] == "onnx"


def test_export_refuses_a_model_onnxruntime_disagrees_with(tmp_path, adult_mlp, monkeypatch):
    import auditor.models.onnx_format as fmt
    monkeypatch.setattr(fmt, "onnxruntime_max_diff", lambda *a, **k: 0.5)
    with pytest.raises(AuditorError, match="disagrees with the PyTorch model"):
        export_onnx(adult_mlp, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists() and not list(tmp_path.glob("*.tmp"))


def test_onnxruntime_max_diff_on_the_cnn(tmp_path, digits_cnn):
    path = export_onnx(digits_cnn, tmp_path / "cnn.onnx", verify=False)
    assert onnxruntime_max_diff(digits_cnn.model, path, [1, 8, 8]) < 1e-4


def test_an_opset_20_export_with_average_pooling_is_read_through_the_version_converter(tmp_path, digits):
    """torch's exporter writes opset 20 by default, where an AdaptiveAvgPool2d becomes AveragePool 19, which
    onnx2torch does not convert: the graph is read as opset 17 (the same computation, said in the spec's
    provenance) and agrees with onnxruntime."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 10)).eval()
    path = tmp_path / "pool.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (digits.test.X[:1],), str(path), dynamo=False, opset_version=20,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    assert {n.op_type for n in onnx.load(str(path)).graph.node} >= {"AveragePool"}
    spec = {"arch": {"name": "onnx", "num_classes": 10}, "input": {"kind": "image", "shape": [1, 8, 8]},
            "class_names": [str(i) for i in range(10)]}
    bundle = load_model(path, spec=spec)
    assert bundle.spec.provenance["onnx_opset_converted"] == {"from": 20, "to": 17}
    X = digits.test.X[:32].numpy()
    want = ort.InferenceSession(str(path)).run(None, {"x": X})[0]
    with torch.no_grad():
        assert np.abs(bundle.model(torch.from_numpy(X)).numpy() - want).max() < 1e-4


def test_a_layer_norm_without_shape_information_is_read_at_its_weights_size(tmp_path, digits):
    """onnx2torch built a LayerNorm over no dimensions where the graph carries no shape for its input (here a
    reshape to a computed size), and such a model failed to load ("normalized_shape = [0]")."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.out = nn.Conv2d(1, 2, 3, padding=1), nn.LayerNorm(128), nn.Linear(128, 10)

        def forward(self, x):  # a vendor's own flatten: its shape is computed in the graph, not declared
            h = torch.relu(self.conv(x))
            return self.out(self.norm(h.reshape(h.shape[0], h.numel() // h.shape[0])))

    model = Net().eval()
    path = tmp_path / "ln.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (digits.test.X[:2],), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    proto = onnx.load(str(path))
    assert "LayerNormalization" in {n.op_type for n in proto.graph.node}
    spec = {"arch": {"name": "onnx", "num_classes": 10}, "input": {"kind": "image", "shape": [1, 8, 8]},
            "class_names": [str(i) for i in range(10)]}
    bundle = load_model(path, spec=spec)
    norms = [m for m in bundle.model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(tuple(m.normalized_shape) == (128,) for m in norms)
    with torch.no_grad():
        X = digits.test.X[:16]
        assert (bundle.model(X) - model(X)).abs().max() < 1e-4
    # written back as ONNX under the vendor's own value names: its output, exported without a name, is
    # numbered ("9"), a name torch's exporter refuses ("Invalid name"), so the file could not be written
    vendor_out = proto.graph.output[0].name
    assert vendor_out.isdigit()
    back = export_onnx(bundle, tmp_path / "ln_back.onnx")
    written = onnx.load(str(back))
    assert [v.name for v in written.graph.input] == ["x"] and [v.name for v in written.graph.output] == [vendor_out]
    assert np.abs(_ort_logits(back, X) - model(X).detach().numpy()).max() < 1e-4


def test_a_graph_that_ends_in_its_own_softmax_is_audited_on_its_logits(tmp_path):
    """A vendor's forward that returns torch.softmax(logits): the editors used to read the probabilities as
    logits (said, not fixed). The final Softmax is now split off: the logits before it are audited and edited,
    and an export puts the Softmax back under the vendor's input and output names."""
    from auditor.cautions import reading_cautions

    torch.manual_seed(0)
    n = 6
    net = nn.Sequential(nn.Linear(n, 16), nn.ReLU(), nn.Linear(16, 2))
    path = tmp_path / "probs.onnx"
    _export_plain(nn.Sequential(net, nn.Softmax(dim=1)), path, n)
    (tmp_path / "spec.json").write_text(json.dumps(FOREIGN_SPEC))
    bundle = load_model(path, spec=tmp_path / "spec.json")
    data = _toy_data(n)
    X = data.test.X
    assert np.abs(_torch_logits(bundle, X) - net(X).detach().numpy()).max() < 1e-5  # the logits, not probabilities
    assert bundle.spec.provenance["onnx_head"]["recognised"].startswith("the network's own final Softmax")
    assert not any("look like probabilities" in c for c in reading_cautions(bundle, data))
    result = get_editor("magnitude-pruning", sparsity=0.5).edit(bundle, data, device="cpu")
    out = export_onnx(result.bundle, tmp_path / "edited.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"] and [o.name for o in sess.get_outputs()] == ["y"]
    want = torch.softmax(torch.as_tensor(_torch_logits(result.bundle, X)), 1).numpy()
    assert np.abs(sess.run(None, {"x": X.numpy()})[0] - want).max() < 1e-5
    assert np.abs(_torch_logits(load_model(out), X) - _torch_logits(result.bundle, X)).max() < 1e-5


def test_a_graph_that_ends_in_the_sigmoid_of_one_score_is_read_as_one_logit(tmp_path):
    """A binary network that returns sigmoid(z) as its one output used to be read as the logit itself, so every
    row went to class 1 (sigmoid > 0). The Sigmoid is now split off and z read as one logit ([0, z]); an export
    puts the Sigmoid back: one probability column under the vendor's names."""
    torch.manual_seed(0)
    n = 6
    net = nn.Sequential(nn.Linear(n, 16), nn.ReLU(), nn.Linear(16, 1))
    path = tmp_path / "sig.onnx"
    _export_plain(nn.Sequential(net, nn.Sigmoid()), path, n)
    (tmp_path / "spec.json").write_text(json.dumps(FOREIGN_SPEC))  # a hand-written spec: two classes
    bundle = load_model(path, spec=tmp_path / "spec.json")
    assert bundle.spec.single_logit and bundle.spec.provenance["onnx_head"]["scores"] == "sigmoid-one"
    data = _toy_data(n)
    X = data.test.X
    with torch.no_grad():
        z = net(X)
    assert np.abs(_torch_logits(bundle, X) - torch.cat([torch.zeros_like(z), z], 1).numpy()).max() < 1e-5
    pred = evaluate(bundle, data).metrics["accuracy"]
    assert pred == pytest.approx(float(((z.squeeze(1) > 0).long() == data.test.y).double().mean()), abs=1e-9)
    result = get_editor("magnitude-pruning", sparsity=0.5).edit(bundle, data, device="cpu")
    out = export_onnx(result.bundle, tmp_path / "edited.onnx")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["y"]
    got = sess.run(None, {"x": X.numpy()})[0]
    want = torch.softmax(torch.as_tensor(_torch_logits(result.bundle, X)), 1)[:, 1:].numpy()
    assert got.shape == (len(X), 1) and np.abs(got - want).max() < 1e-5
    back = load_model(out)
    assert back.spec.single_logit and np.abs(_torch_logits(back, X) - _torch_logits(result.bundle, X)).max() < 1e-5


def test_a_graph_that_reads_images_channels_last_is_audited_and_written_back_so(tmp_path):
    """A TensorFlow-style export (input N, H, W, C): spec init sees it, the auditor feeds its (C, H, W) images
    through a transpose (same predictions as the model it came from), and an edit is written back with the
    vendor's own (N, H, W, C) input under its own name."""
    from auditor import load_data
    from auditor.models.draft import draft_spec

    base = load_model(SAMPLES / "digits_cnn_trojan.safetensors")

    class ChannelsLast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base.model

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2))

    path = tmp_path / "nhwc.onnx"
    torch.onnx.export(ChannelsLast().eval(), (torch.zeros(1, 8, 8, 1),), str(path), dynamo=False,
                      input_names=["pixels"], output_names=["y"], dynamic_axes={"pixels": {0: "n"}, "y": {0: "n"}})
    data = load_data("digits-trojan")
    draft = draft_spec(path, data)
    assert draft.spec["input"]["layout"] == "channels_last" and draft.spec["input"]["shape"] == [1, 8, 8]
    bundle = load_model(path, spec=draft.spec)
    with torch.no_grad():
        assert torch.allclose(bundle.model(data.test.X), base.model(data.test.X), atol=1e-4)
    result = get_editor("dynamic-rank-one", samples=1, seed=0).edit(bundle, data, ["attack_success_rate <= 0.02"])
    out = save_model(result.bundle, tmp_path / "fixed.onnx")
    proto = onnx.load(str(out))
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    assert [i.name for i in inputs] == ["pixels"]
    assert [d.dim_value for d in inputs[0].type.tensor_type.shape.dim][1:] == [8, 8, 1]
    again = load_model(out)
    assert again.spec.input["layout"] == "channels_last"
    assert evaluate(again, data).metrics["attack_success_rate"] <= 0.02


def _vendor_export(cls, tmp_path):
    """A vendor's 1x8x8 digits model of class `cls` exported as torch's TorchScript exporter writes it."""
    torch.manual_seed(0)
    net = cls().eval()
    path = tmp_path / "vendor.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(2, 1, 8, 8),), str(path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    return net, path


def _digits_spec(digits) -> dict:
    return {"arch": {"name": "onnx", "num_classes": 10}, "input": {"kind": "image", "shape": [1, 8, 8]},
            "class_names": digits.class_names}


class _Block(nn.Module):
    """torchvision's BasicBlock, small: its layer names are the ones a vendor's ResNet has."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.layer1 = nn.Sequential(_Block(8, 8), _Block(8, 8))
        self.layer2 = nn.Sequential(_Block(8, 16, 2))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _TinyMobile(nn.Module):
    """Containers in containers, as MobileNet's `features.6.0` (scoped `/features/features.6/features.6.0/Conv`)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU6()),
                                      nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU6()),
                                      nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU6()))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


@pytest.mark.parametrize("cls, names", [
    (_TinyResNet, ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2", "layer2.0.conv1",
                   "layer2.0.conv2", "layer2.0.downsample.0", "fc"]),
    (_TinyMobile, ["features.0.0", "features.1.0", "features.2.0", "classifier.1"])])
def test_a_graph_exported_from_pytorch_keeps_the_vendors_layer_names(cls, names, tmp_path, digits):
    """torch's ONNX export scopes each node by the module it came from (`/layer2/layer2.0/downsample/downsample.0/
    Conv`): the layers are audited under the vendor's own names, in the order the model runs them, and keep them
    when written back. (Untrained batch norms fold into equal zero biases, which the exporter shares through
    Identity nodes: onnx2torch failed on them with a KeyError.)"""
    net, path = _vendor_export(cls, tmp_path)
    spec = _digits_spec(digits)
    bundle = load_model(path, spec=spec)
    assert [n for n, _ in editable_layers(bundle.model)] == names
    X = digits.split("test").X[:32]
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(X), net(X), atol=1e-5, rtol=1e-4)
    out = save_model(bundle, tmp_path / "again.onnx")  # written back and read again under the same names
    assert [n for n, _ in editable_layers(load_model(out).model)] == [n for n, _ in editable_layers(bundle.model)]


class _Reshaping(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x.reshape(-1, 64))))


def test_a_graph_as_torchs_default_exporter_writes_it_is_read(tmp_path, digits):
    """torch's default (dynamo) exporter writes the weights to `model.onnx.data` beside the graph, names nodes
    `node_Gemm_1` (no scopes: the layers are named from their weights' state-dict names) and sets allowzero=1
    on every Reshape (onnx2torch reads none). A weights file outside the model's folder, or missing, is refused."""
    from onnx import helper

    net, path = _vendor_export(_Reshaping, tmp_path)
    proto = onnx.load(str(path))
    for i, node in enumerate(proto.graph.node):
        node.name = f"node_{node.op_type}_{i}"
        if node.op_type == "Reshape":
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("allowzero", 1)])
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="vendor.onnx.data", size_threshold=0)
    assert (tmp_path / "vendor.onnx.data").exists()
    spec = _digits_spec(digits)
    bundle = load_model(path, spec=spec)
    assert [n for n, _ in editable_layers(bundle.model)] == ["fc1", "fc2"]
    X = digits.split("test").X[:16]
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(X), net(X), atol=1e-5, rtol=1e-4)
    (tmp_path / "elsewhere").mkdir()
    for t in proto.graph.initializer:  # a weights file named outside the model's folder
        for e in t.external_data:
            if e.key == "location":
                e.value = "../vendor.onnx.data"
    onnx.save_model(proto, str(tmp_path / "elsewhere" / "bad.onnx"))
    with pytest.raises(AuditorError, match="not a file in the model's own folder"):
        load_model(tmp_path / "elsewhere" / "bad.onnx", spec=spec)
    (tmp_path / "vendor.onnx.data").rename(tmp_path / "moved.data")
    with pytest.raises(AuditorError, match="keeps its weights in vendor.onnx.data, which is not beside it"):
        load_model(path, spec=spec)
