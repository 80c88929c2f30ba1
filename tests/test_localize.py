"""Localization: Captum layer ranking, feature/pixel attributions, fairness layers, no leftover hooks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from auditor import load_data, load_model
from auditor.errors import AuditorError
from auditor.layers import clear_moment_cache, hook_guard, layer_keys, layer_matrix, layer_values, second_moment
from auditor.localize import fairness_layers, feature_attributions, pixel_attributions, rank_layers, rank_layers_for
from tests.fixtures import assert_no_hooks

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trojan():
    torch.manual_seed(0)
    return load_model(SAMPLES / "digits_cnn_trojan.safetensors"), load_data("digits-trojan")


@pytest.fixture(scope="module")
def adult():
    bundle = load_model(SAMPLES / "adult_mlp.safetensors")
    return bundle, load_data("adult", spec=bundle.spec)


def test_rank_layers_table_and_completeness(trojan):
    bundle, data = trojan
    clean, corrupted, labels = data.pairs(2, seed=0)
    table = rank_layers(bundle.model, corrupted, clean, target=labels, reference=data.train.X)
    assert list(table["layer"]) and set(table["layer"]) == {"conv1", "conv2", "fc1", "out"}
    assert list(table["rank"]) == [1, 2, 3, 4]
    assert (np.diff(table["score"].to_numpy()) <= 0).all()
    assert table["share"].sum() == pytest.approx(1.0)
    # completeness: every layer's attributions add up to the same gap f(clean) - f(corrupted)
    with torch.no_grad():
        gap = (bundle.model(clean).gather(1, labels[:, None]) - bundle.model(corrupted).gather(1, labels[:, None]))
    assert np.allclose(table["attribution"], float(gap.mean()), rtol=0.05)
    # the corruption changes conv keys only at positions overlapping the 3x3 trigger
    keys = dict(zip(table["layer"], table["keys"]))
    assert 0 < keys["conv1"] <= 2 * 16 and keys["fc1"] == 2
    assert_no_hooks(bundle.model)


def test_top_ranked_layer_is_fc1_for_the_trojan(trojan):
    bundle, data = trojan
    tops = [rank_layers_for(bundle.model, data, 1, seed)["layer"].iloc[0] for seed in range(3)]
    assert tops == ["fc1"] * 3


def test_conductance_method(trojan):
    bundle, data = trojan
    table = rank_layers_for(bundle.model, data, 1, 0, method="conductance", n_steps=16)
    assert len(table) == 4 and table["score"].gt(0).all()
    with pytest.raises(AuditorError, match="unknown attribution method"):
        rank_layers_for(bundle.model, data, 1, 0, method="saliency")


def test_no_hook_left_when_rank_layers_raises(trojan):
    bundle, data = trojan
    clean, corrupted, _ = data.pairs(1, seed=0)
    with pytest.raises((IndexError, RuntimeError, AssertionError)):
        rank_layers(bundle.model, corrupted, clean, target=99, reference=data.train.X)  # no class 99
    assert_no_hooks(bundle.model)
    with pytest.raises(AuditorError, match="only Linear and Conv2d"):
        rank_layers(bundle.model, corrupted, clean, layers=["conv1", "fc1", "relu1"])
    assert_no_hooks(bundle.model)


def test_hook_guard_removes_hooks_added_inside_on_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    kept = model[0].register_forward_hook(lambda *a: None)
    with pytest.raises(RuntimeError):
        with hook_guard(model):
            model[2].register_forward_pre_hook(lambda *a: None)
            model[1].register_full_backward_hook(lambda *a: None)
            raise RuntimeError("boom")
    assert len(model[0]._forward_hooks) == 1  # a hook from before is kept
    kept.remove()
    assert_no_hooks(model)


class Residual(nn.Module):
    """Not a Sequential, with a skip connection and layers of its own naming."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")
        self.body = nn.Conv2d(4, 4, 3, padding="same", bias=False)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.body(h))
        return self.head(h.flatten(1))


def test_rank_layers_on_any_module(trojan):
    _, data = trojan
    torch.manual_seed(0)
    model = Residual().eval()
    clean, corrupted, labels = data.pairs(2, seed=1)
    table = rank_layers(model, corrupted, clean, reference=data.train.X[:200])
    assert set(table["layer"]) == {"stem", "body", "head"}
    assert np.isfinite(table["score"]).all()
    assert_no_hooks(model)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(1, 4, 3, padding=1),
    nn.Conv2d(2, 3, (3, 2), stride=2, dilation=(1, 2), padding=(1, 0)),
    nn.Conv2d(1, 4, 3, padding="same", padding_mode="reflect", bias=False),
    nn.Conv2d(1, 2, 5, padding=2, padding_mode="circular"),
])
def test_conv_keys_reproduce_the_layer(conv):
    torch.manual_seed(0)
    x = torch.randn(3, conv.in_channels, 8, 8)
    with torch.no_grad():
        got = layer_keys(conv, x) @ layer_matrix(conv).T
        want = layer_values(conv, conv(x))
    assert torch.allclose(got, want, atol=1e-5)


def test_second_moment_is_cached_per_model_hash(trojan):
    bundle, data = trojan
    clear_moment_cache()
    model = bundle.copy().model
    C1 = second_moment(model, "fc1", data.train.X)
    assert second_moment(model, "fc1", data.train.X) is C1
    assert C1.shape == (257, 257) and torch.allclose(C1, C1.T)
    with torch.no_grad():
        model.conv1.weight.mul_(1.5)  # fc1's keys change
    C2 = second_moment(model, "fc1", data.train.X)
    assert C2 is not C1 and not torch.allclose(C1, C2)


def test_feature_attributions_sum_one_hot_inputs(adult):
    bundle, data = adult
    X = data.test.X[:64]
    df = feature_attributions(bundle.model, X, data.feature_groups)
    assert len(df) == len([g for g in data.feature_groups.values() if g])
    assert set(df["feature"]) <= set(data.feature_groups)
    assert df["inputs"].sum() == sum(len(g) for g in data.feature_groups.values())
    assert (np.diff(df["importance"].to_numpy()) <= 1e-12).all() and df["share"].sum() == pytest.approx(1.0)
    # completeness: per-feature attributions sum to f(x) - f(baseline) for each row's predicted class
    with torch.no_grad():
        logits = bundle.model(X)
        pred = logits.argmax(1)
        base = bundle.model(X.mean(0, keepdim=True).expand_as(X)).gather(1, pred[:, None])
    gap = (logits.gather(1, pred[:, None]) - base).mean()
    assert df["attribution"].sum() == pytest.approx(float(gap), rel=0.05, abs=1e-3)
    assert_no_hooks(bundle.model)
    with pytest.raises(AuditorError, match="pixel_attributions"):
        feature_attributions(bundle.model, torch.zeros(2, 1, 8, 8))


def test_pixel_attributions_point_at_the_trigger(trojan):
    bundle, data = trojan
    clean, corrupted, _ = data.pairs(4, seed=2)
    out = pixel_attributions(bundle.model, clean, corrupted)
    assert out["clean"].shape == clean.shape and out["corrupted"].shape == clean.shape
    flipped = out["corrupted_prediction"] == data.trigger.target
    assert flipped.sum() >= 3
    mask = data.trigger.mask.bool().expand_as(clean[flipped])
    a = out["corrupted"][flipped].abs()
    assert float(a[mask].sum() / a.sum()) > 0.8  # the evidence for the target class sits in the trigger
    assert_no_hooks(bundle.model)


def test_fairness_layers(adult):
    bundle, data = adult
    X, groups = data.test.X[:1000], data.test.groups["sex"].iloc[:1000]
    df = fairness_layers(bundle.model, X, groups, n_pairs=128)
    assert set(df["layer"]) == {"fc1", "fc2", "out"} and list(df["rank"]) == [1, 2, 3]
    assert df["high_group"].iloc[0] == "Male"
    # completeness: each layer carries the same total gap, close to the gap in mean margins
    assert np.allclose(df["gap"], df["gap"].iloc[0], rtol=0.05)
    assert df["gap"].iloc[0] > 0
    assert_no_hooks(bundle.model)
    with pytest.raises(AuditorError, match="two groups"):
        fairness_layers(bundle.model, X, ["a"] * len(X))


def test_localize_ranks_pairs_that_misbehave_and_says_when_none_do(trojan):
    """Localize drew its pairs at random, so on a model whose trigger works on some images only it could rank
    layers on a pair whose twin the model classifies correctly (no misbehaviour to localize), without a word.
    It now picks the pairs as the dynamic editor does; where too few misbehave it says so and ranks random ones."""
    from auditor.audit.localization import localize
    from auditor.localize import pick_pairs

    bundle, data = trojan
    loc = localize(bundle, data, samples=3, seed=1)
    picked = loc.settings["pairs"]
    assert picked["pick"] == "misbehaving" and len(picked["rows"]) == 3 and "note" not in picked
    with torch.no_grad():
        assert (bundle.model(loc.corrupted).argmax(1) != loc.labels).all()
        assert (bundle.model(loc.clean).argmax(1) == loc.labels).all()
    assert "3 misbehaving pair(s) from train" in loc.method_text
    # a user's twins that change nothing: no pair misbehaves
    from dataclasses import replace

    same = replace(data, stamp=None, _sha=None, _all=None,
                   train=replace(data.train, corrupted=data.train.X.clone()))
    assert pick_pairs(bundle.model, same, 3, 1)[3]["misbehaving"] == 0
    loc = localize(bundle, same, samples=3, seed=1)
    assert "drawn at random" in loc.settings["pairs"]["note"] and "3 random pair(s)" in loc.method_text
    assert loc.ranking is not None and len(loc.clean) == 3
