"""Editable training (ENN, Sinitsin et al. 2020): the in-graph editor and the training that makes it local."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from auditor import load_model
from auditor.editors import get_editor
from auditor.editors.baselines.enn import (
    PROVENANCE_KEY,
    EditableConfig,
    EditorSettings,
    editable_training,
    feature_overlap,
    run_editor,
)
from auditor.errors import AuditorError
from auditor.fixes import make_fixes
from auditor.requirements import compute_metrics, predict

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _single_edits(bundle, data, n: int, seed: int = 0) -> dict:
    """Mean metrics of `n` single enn edits, random wrong labels on correctly classified test images."""
    rng = np.random.default_rng(seed)
    right = np.flatnonzero(predict(bundle.model, data.test.X) == data.test.y.numpy())
    rows = rng.choice(right, n, replace=False)
    out = []
    for r in rows:
        target = (int(data.test.y[r]) + int(rng.integers(1, 10))) % 10
        fixes = make_fixes(data, data.test.X[[r]], [target])
        result = get_editor("enn").edit(bundle, data, fixes=fixes)
        keep = np.setdiff1d(np.arange(len(data.test)), [r])
        view = dataclasses.replace(data.with_splits(test=data.test.subset(keep)), protected=[])
        out.append(compute_metrics(result.bundle.model, view, reference=bundle.model, fixes=fixes).metrics)
    return {k: float(np.mean([m[k] for m in out])) for k in ("edit_success", "drawdown", "changed_predictions")}


def test_editor_stops_once_the_label_wins_and_is_differentiable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    X, y = torch.randn(1, 4), torch.tensor([2])
    settings = EditorSettings(layers=["2"], optimiser="rmsprop", lr=0.05, margin=0.5, max_steps=10)
    params = dict(model.named_parameters())
    edited, loss, steps = run_editor(model, params, ["2.weight", "2.bias"], X, y, settings, 0.05, 0.5,
                                     differentiable=True)
    logp = torch.func.functional_call(model, edited, (X,)).log_softmax(-1)[0]
    assert 0 < steps <= 10 and float(loss.detach()) == 0.0
    assert float((logp[2] - logp[:2].max()).detach()) >= 0.5  # the label wins by the margin
    assert set(edited) == set(params) and edited["0.weight"] is params["0.weight"]  # other layers untouched
    stab = torch.func.functional_call(model, edited, (torch.randn(5, 4),)).sum()
    stab.backward()  # the meta-gradient reaches the base model through the editor's steps
    assert model[0].weight.grad is not None and float(model[0].weight.grad.abs().sum()) > 0


def test_editable_training_records_its_editor(digits_cnn, digits):
    small = digits.with_splits(train=digits.train.subset(np.arange(32)))
    config = EditableConfig(layers=["fc1", "out"], optimiser="sgd", edit_lr=0.01, learn_edit_lr=True, epochs=1,
                            batch_size=32, c_stab=1.0, c_edit=0.1)
    edited, info = editable_training(digits_cnn, small, config)
    record = edited.spec.provenance[PROVENANCE_KEY]
    assert record["layers"] == ["fc1", "out"] and record["optimiser"] == "sgd" and record["max_steps"] == 10
    assert record["lr"] != pytest.approx(0.01, abs=1e-7)  # the step was learned
    assert len(info["history"]) == 1 and np.isfinite(info["history"][0]["loss"])
    assert not torch.equal(edited.model.fc1.weight, digits_cnn.model.fc1.weight)
    with pytest.raises(AuditorError, match="optimiser"):
        editable_training(digits_cnn, small, EditableConfig(optimiser="adam"))


def test_editable_trained_model_edits_far_more_locally(digits_cnn, digits):
    """The shipped editable-trained CNN: single random-label edits succeed and disturb a few points of
    accuracy; the same editor on the base CNN (not trained to be editable) wrecks it."""
    editable = load_model(SAMPLES / "digits_cnn_editable.safetensors")
    assert editable.spec.provenance[PROVENANCE_KEY]["optimiser"] in ("sgd", "rmsprop")
    layers = editable.spec.provenance[PROVENANCE_KEY]["layers"]
    before, after = (feature_overlap(b.model, layers, digits.test.X) for b in (digits_cnn, editable))
    assert all(0 < after[n] < before[n] - 0.1 for n in layers)  # the features of different inputs became less alike
    ours = _single_edits(editable, digits, 8)
    assert ours["edit_success"] == 1.0
    assert ours["drawdown"] < 0.07 and ours["changed_predictions"] < 0.08
    plain = _single_edits(digits_cnn, digits, 4)  # plain SGD on the last two layers of the base model
    assert plain["drawdown"] > 3 * max(ours["drawdown"], 0.01)
