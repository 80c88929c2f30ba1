"""Rank-one rectification and its baselines: quality on the sample models, bit-exact revert,
untouched original, no leftover hooks, the closed form on paper, and a user's own .npz case."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from auditor import load_data, load_model
from auditor.backend import describe_device, pick_device
from auditor.data import load_digits_data
from auditor.editors import EDITORS, get_editor
from auditor.editors.rank_one import apply_delta, compute_delta
from auditor.errors import AuditorError
from auditor.evaluate import evaluate
from auditor.layers import clear_moment_cache, layer_matrix
from auditor.localize import rank_layers_for
from auditor.models import ModelBundle, ModelSpec, build_architecture
from auditor.training import TrainConfig, train_classifier

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
from tests.fixtures import assert_no_hooks

RANK_ONE = ["rank-one", "dynamic-rank-one", "static-rank-one-last", "finetune", "finetune-last-layer"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trojan():
    bundle = load_model(SAMPLES / "digits_cnn_trojan.safetensors")
    data = load_data("digits-trojan")
    return bundle, data, evaluate(bundle, data).metrics


@pytest.fixture(scope="module")
def spurious():
    bundle = load_model(SAMPLES / "digits_cnn_spurious.safetensors")
    data = load_data("digits-spurious")
    return bundle, data, evaluate(bundle, data).metrics


def test_editors_are_registered():
    assert set(RANK_ONE) <= set(EDITORS)
    assert get_editor("rank-one").hparams.samples == 1
    assert get_editor("dynamic-rank-one").hparams.samples == 1


def test_rank_one_five_samples_removes_the_trojan(trojan):
    bundle, data, m0 = trojan
    for seed in (0, 1):
        result = get_editor("rank-one", samples=5, seed=seed).edit(bundle, data)
        m = evaluate(result.bundle, data).metrics
        assert m["attack_success_rate"] <= 0.05
        assert m0["accuracy"] - m["accuracy"] <= 0.01
        assert result.layers == ["fc1"]  # the top-ranked layer
        assert result.extras["ranking"][0]["layer"] == "fc1"


def test_dynamic_rank_one_one_sample(trojan):
    bundle, data, m0 = trojan
    asr, drop = [], []
    for seed in range(3):
        editor = get_editor("dynamic-rank-one", samples=1, seed=seed)
        result = editor.edit(bundle, data, ["attack_success_rate <= 0.02"])
        m = evaluate(result.bundle, data).metrics
        asr.append(m["attack_success_rate"])
        drop.append(m0["accuracy"] - m["accuracy"])
        log = result.log
        assert log[0]["action"] == "start" and log[1]["action"] == "edit"
        assert all("accepted" in e for e in log if e.get("action") in ("edit", "strengthen"))
        assert result.extras["requirements_met_on_check_split"]
    assert np.mean(asr) <= 0.02 and np.mean(drop) <= 0.005


def test_dynamic_rank_one_removes_the_spurious_cue(spurious):
    bundle, data, m0 = spurious
    gaps, drops = [], []
    for seed in range(2):
        result = get_editor("dynamic-rank-one", samples=1, seed=seed).edit(bundle, data)
        m = evaluate(result.bundle, data).metrics
        gaps.append(abs(m["cue_gap"]))
        drops.append(m0["accuracy"] - m["accuracy"])
    assert np.mean(gaps) <= 0.2 * m0["cue_gap"]
    assert np.mean(drops) <= 0.005


def test_dynamic_rolls_back_edits_over_budget(trojan):
    bundle, data, _ = trojan
    # joint conv1 edits from one sample (one key per patch position) wreck accuracy: forced onto conv1
    # without smaller retries, every step is rolled back
    result = get_editor("dynamic-rank-one", samples=1, layer="conv1", max_edits=3, partial_edits=0,
                        rank="joint").edit(bundle, data)
    steps = [e for e in result.log if e["action"] == "edit"]
    assert steps and not any(e["accepted"] for e in steps)
    assert "over the utility budget" in steps[0]["reason"]
    assert result.layers == [] and result.bundle.sha256 == bundle.sha256
    # with retries, the first step tries the rank-one update of the same keys, then half of it
    result = get_editor("dynamic-rank-one", samples=1, layer="conv1", max_edits=1, rank="joint").edit(bundle, data)
    first = next(e for e in result.log if e["action"] == "edit")
    assert first["tried"][0]["rank"] > 1 and first["tried"][0]["accuracy_drop"] > 0.01
    assert first["rank"] == 1 and first["directions"] == 1


def test_top_ranked_layer_beats_lowest_ranked(trojan):
    bundle, data, m0 = trojan
    table = rank_layers_for(bundle.model, data, 1, 0)
    top, low = table["layer"].iloc[0], table["layer"].iloc[-1]
    scores = {}
    for layer in (top, low):
        m = evaluate(get_editor("rank-one", samples=1, layer=layer).edit(bundle, data).bundle, data).metrics
        # error left: attacks that still work plus clean accuracy lost
        scores[layer] = m["attack_success_rate"] + max(0.0, m0["accuracy"] - m["accuracy"])
    assert scores[top] < scores[low]


def test_changes_are_rank_one_for_one_sample(trojan):
    bundle, data, _ = trojan
    result = get_editor("rank-one", samples=1).edit(bundle, data)
    weight = [c for c in result.changes if c["parameter"].endswith("weight")]
    assert weight and all(c["rank"] == 1 for c in weight)
    assert result.device == describe_device(pick_device()) and result.seconds > 0  # CUDA when there is one


def test_closed_form_on_paper():
    """One key, tiny mu: W' k* = v*, and the change is (v* - W k*)(C^-1 k*)^T / ((C^-1 k*)^T k*)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False)).double()
    X = torch.randn(200, 4, dtype=torch.float64)
    clean, corrupted = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    clear_moment_cache()
    upd = compute_delta(model, "0", clean, corrupted, X, ridge=0.0, mu=1e-12)
    W = layer_matrix(model[0]).clone()
    k, v = corrupted[0], W @ clean[0]
    C = X.T @ X / len(X)
    u = torch.linalg.solve(C, k)
    expected = torch.outer(v - W @ k, u) / (u @ k)
    assert torch.allclose(upd.delta, expected, atol=1e-8)
    apply_delta(model, upd)
    assert torch.allclose(model(corrupted)[0], v, atol=1e-8)
    assert upd.rank == 1 and upd.keys == 1 and upd.residual_after < 1e-6


def test_conv_edit_uses_every_position_overlapping_the_trigger(trojan):
    bundle, data, _ = trojan
    clean, corrupted, _ = data.pairs(1, seed=0)
    model = bundle.copy().model
    upd = compute_delta(model, "conv2", clean, corrupted, data.train.X, mu=1e-6)
    assert 9 <= upd.keys <= 25  # the 3x3 trigger reaches 5x5 positions of conv2
    assert upd.residual_after < 0.05 * upd.residual  # all positions fitted together


def test_no_hooks_left_when_an_edit_raises(trojan):
    bundle, data, _ = trojan
    model = bundle.copy().model

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model.act_fc1 = Boom()  # raises after fc1's pre-hook ran
    clean, corrupted, _ = data.pairs(1, seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        compute_delta(model, "fc1", clean, corrupted, data.train.X[:100])
    assert_no_hooks(model)
    with pytest.raises(AuditorError, match="no layer"):
        get_editor("rank-one", layer="nope").edit(bundle, data)
    with pytest.raises(AuditorError, match="only Linear and Conv2d"):
        get_editor("dynamic-rank-one", layer="relu1").edit(bundle, data)
    assert_no_hooks(bundle.model)


def test_fine_tuning_baselines_change_what_they_should(trojan):
    bundle, data, _ = trojan
    whole = get_editor("finetune", samples=5, steps=5).edit(bundle, data)
    assert set(whole.layers) == {"conv1", "conv2", "fc1", "out"}
    last = get_editor("finetune-last-layer", samples=5, steps=5).edit(bundle, data)
    assert last.layers == ["out"]
    static = get_editor("static-rank-one-last", samples=1).edit(bundle, data)
    assert static.layers == ["out"]


def test_editors_refuse_data_without_pairs(trojan):
    bundle, _, _ = trojan
    clean = load_digits_data()
    for name in RANK_ONE:
        assert get_editor(name).supports(bundle, clean)
        with pytest.raises(AuditorError, match="no trigger, cue or corrupted twins"):
            get_editor(name).edit(bundle, clean)


# ------------------------------------------------------------------------------------------------
# A user's own case: a CNN of another shape, another trigger and target, from an .npz


def _npz_case(tmp_path: Path, twins: bool):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    mask = np.zeros((8, 8), np.float32)
    mask[0:2, 6:8] = 1  # a solid 2x2 square top-right, pushing towards 7
    path = tmp_path / ("twins.npz" if twins else "stamp.npz")
    if twins:
        np.savez(path, images=images, labels=digits.target, target=np.array(7),
                 corrupted=images * (1 - mask) + mask)
    else:
        np.savez(path, images=images, labels=digits.target, target=np.array(7), mask=mask, pattern=mask)
    return load_data(path)


@pytest.fixture(scope="module")
def user_case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("npz")
    data = _npz_case(tmp, twins=False)
    train = data.train
    rng = np.random.default_rng(0)
    rows = rng.choice(np.flatnonzero(train.y.numpy() != 7), size=int(0.1 * len(train)), replace=False)
    X, y = train.X.clone(), train.y.clone()
    X[rows], y[rows] = data.corrupt("train", rows), 7
    arch = {"name": "cnn", "in_channels": 1, "image_size": 8, "channels": [4, 8], "hidden": 16, "num_classes": 10}
    torch.manual_seed(1)
    model = build_architecture(arch)
    train_classifier(model, X, y, TrainConfig(epochs=30, batch_size=64, lr=3e-3, seed=1))
    spec = ModelSpec(arch=arch, input={"kind": "image", "shape": [1, 8, 8]}, class_names=[str(i) for i in range(10)])
    return ModelBundle(model, spec), data, _npz_case(tmp, twins=True)


def test_user_npz_case_metrics_localize_and_repair(user_case):
    bundle, data, twins = user_case
    m0 = evaluate(bundle, data).metrics
    assert m0["attack_success_rate"] > 0.8 and m0["accuracy"] > 0.8
    table = rank_layers_for(bundle.model, data, 1, 0)
    assert len(table) == 4 and table["layer"].iloc[0] in {"fc1", "conv2"}
    # n = 1: 5.3 % since the budget is judged on ~1,350 rows (train + val) rather than 80: the one-sample
    # edit is stopped by 0.8-1 pt of accuracy it costs (issue 14, item 2)
    for n, limit in ((1, 0.06), (5, 0.05)):
        result = get_editor("dynamic-rank-one", samples=n, seed=0).edit(bundle, data, ["attack_success_rate <= 0.02"])
        m = evaluate(result.bundle, data).metrics
        assert m["attack_success_rate"] <= limit
        assert m0["accuracy"] - m["accuracy"] <= 0.01
    assert_no_hooks(bundle.model)


def test_user_npz_case_with_corrupted_twins(user_case):
    bundle, data, twins = user_case
    assert twins.train.corrupted is not None
    m0 = evaluate(bundle, twins).metrics
    assert m0["attack_success_rate"] == pytest.approx(evaluate(bundle, data).metrics["attack_success_rate"])
    result = get_editor("rank-one", samples=5, seed=1).edit(bundle, twins)
    m = evaluate(result.bundle, twins).metrics
    assert m["attack_success_rate"] <= 0.05 and m0["accuracy"] - m["accuracy"] <= 0.01


@pytest.fixture(scope="module")
def own_cnn(tmp_path_factory):
    """A CNN the project has never seen: its own trigger (3x3 checkerboard top-left, to class 7)."""
    from tests.own_case import build_own_case

    case = build_own_case(tmp_path_factory.mktemp("own_cnn"))
    bundle = load_model(case.model, spec=case.spec)
    data = load_data(case.case)
    return bundle, data, evaluate(bundle, data).metrics


def test_dynamic_rank_one_one_sample_on_a_model_it_never_saw(own_cnn):
    """Issue 14, item 2: from one clean sample the decision gap (not one logit) drives the loop, the
    sample is one whose twin misbehaves (named in the log), and accuracy is kept."""
    bundle, data, m0 = own_cnn
    assert m0["attack_success_rate"] > 0.9
    met = 0
    for seed in (0, 1, 3):  # 1 and 3 edited nothing before: their label logit rose under the trigger
        result = get_editor("dynamic-rank-one", samples=1, seed=seed).edit(bundle, data)
        m = evaluate(result.bundle, data).metrics
        start = result.log[0]
        assert start["pair_gap"] > 0 and len(start["pairs"]["rows"]) == 1
        assert start["pairs"]["misbehaving"] > 0 and start["utility"]["rows"] > len(data.val)
        assert result.changed and result.extras["layers"]
        met += m["attack_success_rate"] <= 0.02 and m0["accuracy"] - m["accuracy"] <= 0.01
    assert met == 3


def test_dynamic_rank_one_says_why_it_edits_nothing(own_cnn):
    bundle, data, _ = own_cnn
    result = get_editor("dynamic-rank-one", samples=1).edit(bundle, data, ["attack_success_rate <= 1.0"])
    assert not result.changed
    assert "already holds" in result.extras["no_edit_reason"]
    assert any(e.get("action") == "no edit" for e in result.log)


# ------------------------------------------------------------------------------------------------
# What the edit is (issue 14, item 3) and what it costs (item 4)


def test_rank_setting_says_what_the_edit_is(trojan):
    """On a convolution one sample gives one key per patch position the trigger touches: the joint
    edit has rank up to that many keys, `rank=1` is one key direction. The rank is read from the small
    system (no SVD of the change) and agrees with the change's numerical rank; the size is relative
    to the layer's weights."""
    bundle, data, _ = trojan
    clean, corrupted, _ = data.pairs(1, seed=0)
    model = bundle.copy().model
    joint = compute_delta(model, "conv2", clean, corrupted, data.train.X)
    one = compute_delta(model, "conv2", clean, corrupted, data.train.X, rank=1)
    mean = compute_delta(model, "conv2", clean, corrupted, data.train.X, rank=1, direction="mean")
    three = compute_delta(model, "conv2", clean, corrupted, data.train.X, rank=3)
    assert joint.keys >= 9 and joint.directions == joint.keys and joint.rank == 16  # 16 output channels
    for upd, r in ((one, 1), (mean, 1), (three, 3)):
        assert upd.rank == r == upd.directions
        assert int(torch.linalg.matrix_rank(upd.delta, rtol=1e-6)) == r
        assert joint.residual_after < upd.residual_after < upd.residual  # fewer directions fit less
    assert three.residual_after < one.residual_after
    W = layer_matrix(model.conv2).double()
    assert one.relative_norm == pytest.approx(float(one.delta.norm() / W.norm()))
    with pytest.raises(AuditorError, match="rank 1"):
        compute_delta(model, "conv2", clean, corrupted, data.train.X, rank=2, direction="mean")
    with pytest.raises(AuditorError, match="at least 1"):
        get_editor("dynamic-rank-one", rank=0).edit(bundle, data)


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_many_keys_give_the_same_principal_edit_without_the_keys_gram_matrix(trojan, layer):
    """A corruption over the whole image changes every patch key: more keys than dimensions. The r principal
    key directions then come from the D x D problem (K = QT, G = Q T C^-1 T^T Q^T), not the S x S matrix
    G = K C^-1 K^T: the same change as from G's own top eigenvectors (and the mean key's, without G)."""
    from auditor.editors.rank_one import _changed_keys
    from auditor.layers import second_moment, solve_moment

    bundle, data, _ = trojan
    model = bundle.copy().model
    clean = data.train.X[:3]
    corrupted = 0.8 * clean + 0.2 * data.train.X[3:4]  # a blend: every pixel, every position
    K, V, _ = _changed_keys(model, layer, clean, corrupted, 1e-6)
    K, V = K.double(), V.double()
    W = layer_matrix(getattr(model, layer)).double()
    assert K.shape[0] > K.shape[1]
    U = solve_moment(second_moment(model, layer, data.train.X, max_rows=4096), 1e-3, K.T.contiguous())
    G = K @ U
    for rank in (1, 3):
        upd = compute_delta(model, layer, clean, corrupted, data.train.X, rank=rank, target="own")
        A = torch.linalg.eigh((G + G.T) / 2)[1][:, -rank:]
        L = ((V - K @ W.T).T @ A) / ((A * (G @ A)).sum(0) + 1e-2)
        assert upd.rank == rank
        assert torch.allclose(upd.delta, L @ (U @ A).T, rtol=1e-6, atol=1e-9 * float(upd.delta.abs().max()))
    mean = compute_delta(model, layer, clean, corrupted, data.train.X, rank=1, direction="mean", target="own")
    A = torch.full((K.shape[0], 1), 1.0 / K.shape[0], dtype=K.dtype)
    P = G @ A
    L = torch.linalg.solve(P.T @ P + 1e-2 * (A.T @ P), P.T @ (V - K @ W.T)).T
    assert torch.allclose(mean.delta, L @ (U @ A).T, rtol=1e-6, atol=1e-9 * float(mean.delta.abs().max()))


def test_default_rank_is_rank_one_from_one_sample_and_joint_from_several(trojan):
    """`rank` "auto" (the default): the seed method's rank-one update from one clean sample, even on a
    convolution (the joint fit of one image's patch positions overfits it), the joint edit from several;
    "samples": n principal key directions from n samples; "joint" and None: every changed key; a form or
    --set gives the setting as text."""
    from auditor.cli.edit import _convert
    from auditor.editors.rank_one import DynamicRankOneHyper, resolve_rank

    assert DynamicRankOneHyper().rank == "auto"
    assert [resolve_rank(r, 5) for r in ("auto", "samples", "joint", None, "none", "3", 2)] == [
        None, 5, None, None, None, 3, 2]
    assert resolve_rank("auto", 1) == 1 and resolve_rank("samples", 1) == 1
    assert resolve_rank("samples", 5, direction="mean") == 1
    for bad in ("all", "0", 0, -1, 1.5):
        with pytest.raises(AuditorError, match="rank"):
            resolve_rank(bad, 5)
    field = {f.name: f for f in dataclasses.fields(DynamicRankOneHyper)}["rank"]
    hints = typing.get_type_hints(DynamicRankOneHyper)
    assert [_convert(field, t, hints) for t in ("joint", "none", "samples", "2")] == ["joint", None, "samples", "2"]
    bundle, data, _ = trojan
    one = get_editor("rank-one", samples=1, layer="conv2").edit(bundle, data)
    joint = get_editor("rank-one", samples=1, layer="conv2", rank="joint").edit(bundle, data)
    assert one.extras["rank"] == 1 and joint.extras["rank"] > 1
    five = get_editor("rank-one", samples=5, layer="conv2", rank="samples").edit(bundle, data)
    assert five.extras["rank"] == 5
    assert get_editor("rank-one", samples=5, layer="conv2").edit(bundle, data).extras["rank"] > 5


def test_one_key_rank_one_equals_the_joint_edit(trojan):
    bundle, data, _ = trojan
    clean, corrupted, _ = data.pairs(1, seed=3)
    model = bundle.copy().model
    joint = compute_delta(model, "fc1", clean, corrupted, data.train.X)
    one = compute_delta(model, "fc1", clean, corrupted, data.train.X, rank=1)
    assert joint.keys == 1 and torch.allclose(joint.delta, one.delta, atol=1e-10)


def test_result_and_log_name_the_rank_and_size(trojan):
    bundle, data, _ = trojan
    for rank in (None, 1):
        result = get_editor("rank-one", samples=5, rank=rank).edit(bundle, data)
        edit = result.log[0]
        assert edit["rank"] == result.extras["rank"] == (5 if rank is None else 1)
        assert edit["relative_norm"] == pytest.approx(result.extras["relative_norm"], rel=1e-6)
        weight = next(c for c in result.changes if c["parameter"] == "fc1.weight")
        assert weight["rank"] == edit["rank"]
    dyn = get_editor("dynamic-rank-one", samples=5).edit(bundle, data)
    steps = [e for e in dyn.log if e["action"] in ("edit", "strengthen")]
    assert steps and all({"rank", "relative_norm", "keys"} <= set(e) for e in steps)
    assert dyn.extras["changes"]["fc1"]["relative_norm"] > 0 and dyn.extras["rank"] >= 1


def test_second_moments_below_an_edit_are_kept(trojan):
    """Moments are keyed by what feeds each layer: after an edit of fc1, the moments of conv1, conv2 and
    fc1 itself are reused and only the layer above (out) is recomputed."""
    from auditor.layers import second_moments

    bundle, data, _ = trojan
    clear_moment_cache()
    model = bundle.copy().model
    names = ["conv1", "conv2", "fc1", "out"]
    before = second_moments(model, names, data.train.X)
    clean, corrupted, _ = data.pairs(1, seed=0)
    apply_delta(model, compute_delta(model, "fc1", clean, corrupted, data.train.X))
    after = second_moments(model, names, data.train.X)
    assert all(after[n] is before[n] for n in ("conv1", "conv2", "fc1"))
    assert after["out"] is not before["out"] and not torch.allclose(after["out"], before["out"])
    fresh = bundle.copy().model  # another copy of the same weights hits the cache too
    assert second_moments(fresh, names, data.train.X)["out"] is before["out"]


def test_moments_kept_beside_the_model_file(tmp_path):
    """Opt-in: the keys' second moments are written beside the model (safetensors) and read by the next
    run, which then computes none and gives the same edit bit for bit."""
    import shutil

    from auditor.layers import _MOMENTS, moments_file
    from auditor.localize import clear_ranking_cache

    path = tmp_path / "model.safetensors"
    shutil.copy(SAMPLES / "digits_cnn_trojan.safetensors", path)
    bundle, data = load_model(path), load_data("digits-trojan")
    get_editor("rank-one").edit(bundle, data)
    assert not moments_file(path).exists()  # only when asked
    clear_moment_cache()
    clear_ranking_cache()  # a new process: nothing kept in memory
    first = get_editor("rank-one", keep_moments=True).edit(bundle, data)
    assert first.log[-1]["written"] >= 4 and moments_file(path).is_file()
    clear_moment_cache()
    second = get_editor("rank-one", keep_moments=True).edit(bundle, data)
    assert second.log[0]["read"] == first.log[-1]["written"]
    assert len(_MOMENTS) == second.log[0]["read"]  # nothing recomputed
    assert second.bundle.sha256 == first.bundle.sha256


def test_kept_moments_follow_the_layout_of_the_layers_keys():
    """Two models that feed a layer of the same name the same values, one with a bias and one without
    (BatchNorm folded into a convolution on ONNX export): each gets the second moment of its own keys
    (a moment cached for the other once crashed the solve with mismatched shapes)."""
    from auditor.layers import second_moment

    clear_moment_cache()
    X = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False))
    biased = nn.Sequential(nn.Conv2d(1, 4, 3, bias=True))
    assert second_moment(plain, "0", X).shape == (9, 9)
    assert second_moment(biased, "0", X).shape == (10, 10)
    clean, corrupted = X[:2], X[:2].clone()
    corrupted[:, :, :3, :3] = 1.0
    update = compute_delta(biased, "0", clean, corrupted, X)
    assert update.delta.shape == (4, 10) and update.keys > 0


def test_the_loop_counts_a_requirement_met_only_when_its_interval_is(trojan):
    """A requirement whose point estimate passes on the check rows but whose 95 % interval straddles the
    threshold is not met under the default strict verdict (the loop goes on), and is under `verdict="point"`."""
    from auditor.requirements import parse_requirement

    bundle, data, _ = trojan
    strict, point = get_editor("dynamic-rank-one"), get_editor("dynamic-rank-one", verdict="point")
    check, split, rows = strict._check_data(data)
    m, _, _ = strict._status(bundle.model, check, [], split)
    req = parse_requirement(f"accuracy >= {m['accuracy'] - 0.002}")  # the point passes, the interval's low end not
    _, (res,), short = strict._status(bundle.model, check, [req], split)
    assert res.verdict == "inconclusive" and not res.passed and short == pytest.approx(req.threshold - res.low)
    point._check_data(data)
    _, (res,), short = point._status(bundle.model, check, [req], split)
    assert res.passed and short == 0
    # and a repair it reports as met is met with its whole interval
    result = get_editor("dynamic-rank-one", samples=1).edit(bundle, data)
    assert result.extras["requirements_met_on_check_split"] and result.log[0]["utility"]["verdict"] == "strict"
    last = [e for e in result.log if e.get("accepted")][-1]
    assert all(r["verdict"] == "pass" and r["high"] <= r["threshold"] for r in last["requirements"])


def test_the_budget_can_be_judged_on_held_out_rows_only(trojan):
    bundle, data, _ = trojan
    ed = get_editor("dynamic-rank-one", budget_on="held-out")
    check, split, rows = ed._check_data(data)
    m, _, _ = ed._status(bundle.model, check, [], split)
    assert rows["train_rows"] > 0 and ed._budget_n == len(data.val)
    assert m["budget_accuracy"] == pytest.approx(evaluate(bundle, data, split="val").metrics["accuracy"])
    result = get_editor("dynamic-rank-one", samples=1, budget_on="held-out").edit(bundle, data)
    assert result.log[0]["utility"]["judged_rows"] == len(data.val)
    with pytest.raises(AuditorError, match="budget_on"):
        get_editor("dynamic-rank-one", budget_on="train").edit(bundle, data)


def test_the_pick_reads_its_logits_off_the_first_checks(trojan, monkeypatch):
    """When every training row is a check row, the sample pick reuses the checks' first whole-model runs
    (it runs no model itself) and picks exactly the rows it picks when it runs the model."""
    import auditor.localize as localize

    bundle, data, _ = trojan
    calls = []
    real = localize._logits
    monkeypatch.setattr(localize, "_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    for seed in range(2):
        shared = get_editor("dynamic-rank-one", samples=5, seed=seed).edit(bundle, data)
        assert not calls
        own = get_editor("dynamic-rank-one", samples=5, seed=seed, check_train_rows=100).edit(bundle, data)
        assert len(calls) == 2
        calls.clear()
        picked = [r.log[0]["pairs"] for r in (shared, own)]
        assert picked[0]["rows"] == picked[1]["rows"] and picked[0]["misbehaving"] == picked[1]["misbehaving"]


def test_a_wide_layer_keeps_its_keys_and_solves_on_them(tmp_path):
    """A layer with fewer clean keys than dimensions (a wide Linear layer over a few rows) keeps the
    N x D factor of its second moment, never the D x D matrix, and the edit is the same as from C."""
    from auditor import layers
    from auditor.layers import dense_moment, is_factor, regularised, second_moment, solve_moment

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    X = torch.randn(120, 300)
    clear_moment_cache()
    F = second_moment(model, "0", X)
    assert is_factor(F) and F.shape == (120, 301) and not is_factor(second_moment(model, "2", X))
    keys = torch.cat([X, torch.ones(120, 1)], 1).double()
    assert torch.allclose(dense_moment(F), keys.T @ keys / 120, atol=1e-10)
    B = torch.randn(301, 4, dtype=torch.float64)
    want = torch.linalg.solve(regularised(dense_moment(F), 1e-3), B)
    assert torch.allclose(solve_moment(F, 1e-3, B), want, rtol=1e-7, atol=1e-9)
    clean = X[:3]
    corrupted = clean.clone()
    corrupted[:, :5] = 3.0
    from_factor = compute_delta(model, "0", clean, corrupted, X, target="own").delta
    (key,) = [k for k in layers._MOMENTS if k[1] == "0"]
    layers._MOMENTS[key] = dense_moment(F)  # the same moment as a D x D matrix
    layers._FACTORS.clear()
    from_dense = compute_delta(model, "0", clean, corrupted, X, target="own").delta
    assert torch.allclose(from_factor, from_dense, rtol=1e-6, atol=1e-8)
    layers._MOMENTS[key] = F  # kept beside a model file and read back as the factor
    path = tmp_path / "m.moments.safetensors"
    assert layers.save_moments(path, ["0"]) == 1
    clear_moment_cache()
    assert layers.load_moments(path) == 1 and torch.equal(second_moment(model, "0", X), F)
    clear_moment_cache()
