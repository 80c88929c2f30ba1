"""The retrieval editor (GRACE codebook): the editor contract, its codebook in the model file (saved,
loaded, refused where it cannot be held), and what it does: fixes stay, far inputs keep their prediction."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from auditor.editors import get_editor
from auditor.editors.retrieval import Retrieval
from auditor.editors.testing import check_editor
from auditor.errors import AuditorError
from auditor.fixes import make_fixes, parse_fixes
from auditor.models import load_model, predict_logits, save_model
from auditor.models.adapters import CodebookLinear, attach_codebook
from auditor.models.reading import SPEC_KEY
from auditor.requirements import compute_metrics, predict
from tests.conftest import SAMPLES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_cnn(digits):
    return load_model(SAMPLES / "digits_cnn.safetensors")


@pytest.fixture(scope="module")
def digits():
    from auditor import load_data

    return load_data("digits")


def wrong_labels(bundle, data, rows):
    """Requests that a correctly classified test row gets the next class (a label it surely does not have)."""
    y = data.test.y[rows]
    return make_fixes(data, data.test.X[rows], (y + 1) % len(data.class_names), seed=0)


def test_the_editor_contract_holds():
    report = check_editor(Retrieval)
    assert {"no-silent-change", "revert", "determinism", "thread-safety", "refusal"} <= set(report.checks)
    assert report.changed and report.layers


def test_an_empty_codebook_is_the_plain_layer(digits_cnn):
    copy = digits_cnn.copy()
    book = attach_codebook(copy.model, "fc1")
    assert isinstance(book, CodebookLinear) and book.entries == 0
    assert copy.sha256 == digits_cnn.sha256
    X = torch.rand(5, 1, 8, 8)
    assert torch.equal(copy.model(X), digits_cnn.model(X))


def test_fixes_hold_and_far_inputs_keep_their_prediction(digits_cnn, digits):
    fixes = wrong_labels(digits_cnn, digits, torch.arange(0, 40, 4))
    result = get_editor("retrieval").edit(digits_cnn, digits, fixes=fixes, device="cpu")
    assert [p.shape for p in digits_cnn.model.parameters()] == [p.shape for p in result.bundle.model.parameters()]
    assert torch.equal(predict_logits(result.bundle.model, fixes.X).argmax(1), fixes.y)
    m = compute_metrics(result.bundle.model, digits, "test", reference=digits_cnn.model, fixes=fixes).metrics
    assert m["edit_success"] == 1.0
    n = len(digits.test)  # the edited rows, and per entry at most its budget (0.1 %) of the other rows
    assert m["changed_predictions"] <= (10 + 10 * 0.001 * (n - 10)) / n + 1e-9
    book = dict(result.bundle.model.named_modules())[result.extras["layer"]]
    assert book.entries == 10 and bool((book.codebook_radii > 0).all())


def test_codebook_survives_save_and_load_and_is_refused_as_onnx(digits_cnn, digits, tmp_path):
    fixes = parse_fixes(["5=3", "9=0"], digits)
    edited = get_editor("retrieval").edit(digits_cnn, digits, fixes=fixes, device="cpu").bundle
    path = save_model(edited, tmp_path / "e.safetensors")
    back = load_model(path)
    assert back.sha256 == edited.sha256 and back.spec.adapters[0]["type"] == "codebook"
    assert torch.equal(predict_logits(back.model, digits.test.X), predict_logits(edited.model, digits.test.X))
    assert predict(back.model, fixes.X).tolist() == [3, 0]
    with pytest.raises(AuditorError, match="codebook.*safetensors"):
        save_model(edited, tmp_path / "e.onnx")


def test_a_tampered_codebook_is_refused_on_load(digits_cnn, digits, tmp_path):
    edited = get_editor("retrieval").edit(digits_cnn, digits, fixes=parse_fixes(["5=3"], digits)).bundle
    path = save_model(edited, tmp_path / "e.safetensors")
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    spec = json.loads(meta[SPEC_KEY])
    for case, (st, sp) in {
        "values of another size": ({**state, "fc1.codebook_values": torch.zeros(2, 32)}, spec),
        "no adapter in the spec": (state, {k: v for k, v in spec.items() if k != "adapters"}),
        "adapter at a conv layer": (state, {**spec, "adapters": [{"type": "codebook", "layer": "conv1"}]}),
        "unknown adapter type": (state, {**spec, "adapters": [{"type": "lora", "layer": "fc1"}]}),
    }.items():
        bad = tmp_path / f"{case.replace(' ', '_')}.safetensors"
        save_file(st, str(bad), metadata={SPEC_KEY: json.dumps(sp)})
        with pytest.raises(AuditorError):
            load_model(bad)


def test_conflicting_fixes_split_and_a_repeated_input_is_replaced(digits_cnn, digits):
    ed = get_editor("retrieval")
    X = digits.test.X[:1]
    y = int(predict(digits_cnn.model, X)[0])
    twin = (X + 0.02 * torch.randn(X.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    first = ed.edit(digits_cnn, digits, fixes=make_fixes(digits, X, [(y + 1) % 10])).bundle
    second = ed.edit(first, digits, fixes=make_fixes(digits, twin, [(y + 2) % 10])).bundle
    book = second.model.fc1
    assert book.entries == 2
    d = float(torch.cdist(book.codebook_keys[:1], book.codebook_keys[1:]))
    assert bool((book.codebook_radii <= d / 2 + 1e-6).all())  # GRACE's split: the two balls do not overlap
    assert predict(second.model, torch.cat([X, twin])).tolist() == [(y + 1) % 10, (y + 2) % 10]
    third = ed.edit(second, digits, fixes=make_fixes(digits, X, [(y + 3) % 10])).bundle
    assert third.model.fc1.entries == 2 and int(predict(third.model, X)[0]) == (y + 3) % 10
    with pytest.raises(AuditorError, match="same input"):
        ed.edit(digits_cnn, digits, fixes=make_fixes(digits, torch.cat([X, X]), [1, 2]))


def test_refuses_models_it_cannot_rebuild_and_layers_that_are_not_linear(digits_cnn, digits):
    with pytest.raises(AuditorError, match="not a Linear layer"):
        get_editor("retrieval", layer="conv1").edit(digits_cnn, digits, fixes=parse_fixes(["5=3"], digits))
    custom = digits_cnn.copy()  # the user's own class loads its codebook again (test_said_not_silent.py)
    custom.spec.arch = {"name": "custom", "class": "Net", "file": "net.py"}
    assert Retrieval().supports(custom, digits) is None
    unknown = digits_cnn.copy()
    unknown.spec.arch = {"name": "cnn", "in_channels": 3, "image_size": 8, "channels": [2], "hidden": 4,
                         "num_classes": 10}  # an architecture the spec names but these weights do not fit
    assert "rebuild" in Retrieval().supports(unknown, digits)


def test_an_onnx_model_is_refused_before_anything_runs_and_weight_editors_are_named(digits_cnn, digits, tmp_path):
    """A codebook can be written only to .safetensors and an ONNX graph only to .onnx: no --out works,
    so the editor says so up front (not the CLI after loading, with advice that leads nowhere)."""
    import copy

    from auditor import load_model

    path = tmp_path / "vendor.onnx"  # exported by the user with torch, not by the auditor: a bare graph
    torch.onnx.export(digits_cnn.model.eval(), (digits.test.X[:1],), str(path), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "n"}})
    spec = copy.deepcopy(digits_cnn.spec)
    spec.arch = {"name": "onnx", "num_classes": 10}
    onnx = load_model(path, spec=spec)
    reason = Retrieval().supports(onnx, digits)
    assert reason and ".safetensors" in reason and "ONNX or torch.export graph" in reason


def test_a_one_logit_model_gets_its_fixes(tmp_path):
    """A binary model with one logit (read as [0, z]) used to crash the codebook's value search (its layers
    above the codebook ended in the one logit): it now gets the fixes the same classifier with two outputs
    gets, and keeps its one logit."""
    from auditor import load_data
    from tests.test_metanet import _one_logit

    adult = load_data("adult")
    two = load_model(SAMPLES / "adult_mlp.safetensors")
    one = _one_logit(two)
    rows = torch.arange(0, 60, 6)
    fixes = make_fixes(adult, adult.test.X[rows], 1 - adult.test.y[rows], seed=0)
    a = get_editor("retrieval").edit(two, adult, fixes=fixes, device="cpu")
    b = get_editor("retrieval").edit(one, adult, fixes=fixes, device="cpu")
    got = predict_logits(b.bundle.model, fixes.X).argmax(1)
    assert b.extras["fixed"] == a.extras["fixed"] >= 5 and int((got == fixes.y).sum()) == b.extras["fixed"]
    assert torch.equal(got, predict_logits(a.bundle.model, fixes.X).argmax(1))
    assert b.bundle.model.out.out_features == 1
    back = load_model(save_model(b.bundle, tmp_path / "e.safetensors"))
    assert torch.equal(predict_logits(back.model, fixes.X).argmax(1), got)
