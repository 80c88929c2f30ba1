"""Tabular baselines on the shipped Adult MLP: each meets its requirement with utility above a floor.
(That each leaves the original untouched and reverts bit for bit is `check_editor`'s, in
tests/test_editor_contract.py.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from auditor.editors import EDITORS, get_editor
from auditor.editors.baselines.common import group_codes, hard_fairness
from auditor.models import weights_sha256
from auditor.requirements import compute_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def _edit_and_check(bundle, data, editor, requirements, **settings):
    result = get_editor(editor, **settings).edit(bundle, data, requirements, device="cpu")
    return result, compute_metrics(result.bundle.model, data, "test").metrics


def test_surrogate_matches_fairlearn(adult):
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 2, len(adult.test))
    codes, _ = group_codes(adult, "race", "test")
    ours = hard_fairness(pred, adult.test.y.numpy(), codes.numpy(), "demographic_parity")
    theirs = demographic_parity_difference(adult.test.y.numpy(), pred,
                                           sensitive_features=adult.test.groups["race"].astype(str))
    assert ours == pytest.approx(theirs, abs=1e-12)
    ours = hard_fairness(pred, adult.test.y.numpy(), codes.numpy(), "equalized_odds")
    theirs = equalized_odds_difference(adult.test.y.numpy(), pred,
                                       sensitive_features=adult.test.groups["race"].astype(str))
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_finetune_fairness_meets_dp_on_adult(adult_mlp, adult):
    assert "finetune-fairness" in EDITORS
    result, m = _edit_and_check(adult_mlp, adult, "finetune-fairness", ["demographic_parity <= 0.05"])
    assert m["demographic_parity"] <= 0.05
    assert m["accuracy"] >= 0.82
    assert result.extras["reached"] and result.extras["attribute"] == "sex"
    assert result.seconds < 30  # a few seconds in practice; generous for a loaded machine


def test_finetune_fairness_meets_eo_on_adult(adult_mlp, adult):
    result, m = _edit_and_check(adult_mlp, adult, "finetune-fairness", ["equalized_odds <= 0.03"])
    assert m["equalized_odds"] <= 0.04  # target 0.03 on validation with a margin; test set is a fresh sample
    assert m["accuracy"] >= 0.83


def test_pruning_with_finetune_beats_without(adult_mlp, adult):
    _, plain = _edit_and_check(adult_mlp, adult, "magnitude-pruning", ["sparsity >= 0.9"])
    result, m = _edit_and_check(adult_mlp, adult, "magnitude-pruning-finetune", ["sparsity >= 0.9"], epochs=1)
    assert m["sparsity"] >= 0.9
    assert m["accuracy"] >= 0.84 and m["accuracy"] > plain["accuracy"] + 0.02
    assert not any(n.endswith(("_orig", "_mask")) for n in result.bundle.model.state_dict())  # masks removed


@pytest.mark.parametrize("editor,floor,settings", [("drop-features", 0.83, {}),
                                                   ("retrain-k-features", 0.835, {"epochs": 4})])
def test_keep_k_features(adult_mlp, adult, editor, floor, settings):
    result, m = _edit_and_check(adult_mlp, adult, editor, ["features_used <= 5"], **settings)
    assert m["features_used"] <= 5
    assert m["accuracy"] >= floor
    assert len(result.extras["kept"]) == 5
    w = result.bundle.model.fc1.weight
    dropped = [i for name, idx in adult.feature_groups.items() if name not in result.extras["kept"] for i in idx]
    assert torch.all(w[:, dropped] == 0)


def test_threshold_optimizer_is_post_processing(adult_mlp, adult):
    from auditor.editors.baselines.fairlearn_mitigations import postprocess_threshold_optimizer
    before = weights_sha256(adult_mlp.model)
    r = postprocess_threshold_optimizer(adult_mlp, adult, "demographic_parity")
    assert weights_sha256(adult_mlp.model) == before
    assert r.metrics["demographic_parity"] <= 0.02 and r.metrics["accuracy"] >= 0.82
    assert r.needs_protected_at_prediction and not r.edits_given_model
    theirs = demographic_parity_difference(adult.test.y.numpy(), r.predictions,
                                           sensitive_features=adult.test.groups["sex"].astype(str))
    assert r.metrics["demographic_parity"] == pytest.approx(theirs)
    eo = postprocess_threshold_optimizer(adult_mlp, adult, "equalized_odds")
    assert eo.metrics["equalized_odds"] <= 0.04 and eo.metrics["accuracy"] >= 0.82
    assert "threshold-optimizer" not in EDITORS  # not a weight edit, so not offered as one


def test_exponentiated_gradient_retrains(adult):
    from auditor.editors.baselines.fairlearn_mitigations import retrain_exponentiated_gradient
    r = retrain_exponentiated_gradient(adult, "demographic_parity", rows=4000, max_iter=20)
    assert r.kind == "retraining" and not r.needs_protected_at_prediction
    assert r.metrics["demographic_parity"] <= 0.05 and r.metrics["accuracy"] >= 0.8


def test_reweighing_retrain_is_attribute_blind_and_reduces_parity(adult_mlp, adult):
    from auditor.editors.baselines.fairlearn_mitigations import retrain_reweighing, reweighing_weights
    groups = adult.train.groups["sex"].astype(str).to_numpy()
    y = adult.train.y.numpy()
    w = reweighing_weights(groups, y)
    for g in np.unique(groups):  # reweighed, every group has the overall positive rate
        cell = groups == g
        assert np.average(y[cell], weights=w[cell]) == pytest.approx(y.mean(), abs=1e-9)
    plain = retrain_reweighing(adult_mlp, adult, attribute="sex", power=0.0, rows=6000, epochs=3)
    fair = retrain_reweighing(adult_mlp, adult, attribute="sex", power=2.0, rows=6000, epochs=3)
    assert not fair.needs_protected_at_prediction and fair.kind == "retraining"
    assert fair.metrics["demographic_parity"] < plain.metrics["demographic_parity"] - 0.05
    assert fair.metrics["accuracy"] >= 0.8


def test_exponentiated_gradient_over_the_models_architecture(adult_mlp, adult):
    from auditor.editors.baselines.fairlearn_mitigations import TorchMLPClassifier, retrain_exponentiated_gradient
    r = retrain_exponentiated_gradient(adult, "demographic_parity", rows=3000, max_iter=6,
                                       estimator=TorchMLPClassifier(adult_mlp.spec.arch, epochs=2))
    assert r.settings["estimator"] == "TorchMLPClassifier" and not r.needs_protected_at_prediction
    assert r.metrics["demographic_parity"] <= 0.08 and r.metrics["accuracy"] >= 0.78


def test_retrain_k_features_on_given_features(adult_mlp, adult):
    keep = ["age", "education-num", "capital-gain", "hours-per-week", "relationship"]
    keep = [f for f in keep if f in adult.feature_groups][:5] or list(adult.feature_groups)[:5]
    result, m = _edit_and_check(adult_mlp, adult, "retrain-k-features", ["features_used <= 5"], keep=keep, epochs=2)
    assert result.extras["kept"] == keep and m["features_used"] <= len(keep)
    assert m["accuracy"] >= 0.8


def test_finetune_fairness_stops_on_the_gap_the_audit_measures(adult_mlp, adult):
    """A group of 3 rows is left out of the audit's demographic parity (--min-group); the editor's stopping
    check counted it, chased a gap the audit never reports and made the audited one worse."""
    from dataclasses import replace

    import pandas as pd

    from auditor.data.base import Split
    from auditor.requirements import predict

    splits = {}
    for name in ("train", "val", "test"):
        sp = adult.split(name)
        region = np.where(np.arange(len(sp)) % 2 == 0, "north", "south").astype(object)
        positive = np.flatnonzero(predict(adult_mlp.model, sp.X) == 1)[:3]
        region[positive] = "tiny"  # three rows, every one predicted positive: a gap near 1 if counted
        groups = sp.groups.assign(region=pd.Series(region, dtype=str))
        splits[name] = Split(sp.X, sp.y, groups, sp.raw, sp.corrupted)
    data = replace(adult.with_splits(**splits), protected=[*adult.protected, "region"])
    result = get_editor("finetune-fairness").edit(adult_mlp, data, ["demographic_parity[region] <= 0.05"],
                                                  device="cpu")
    assert result.extras["reached"] and result.extras["steps"] == 0
    assert weights_sha256(result.bundle.model) == weights_sha256(adult_mlp.model)


def test_post_processing_is_judged_like_an_edit_and_a_failed_one_is_a_row(adult_mlp, adult):
    """ThresholdOptimizer's row was judged on its point estimate while edited models need their whole
    interval on the right side; an alternative that could not run was left out of the table without a word."""
    from auditor.audit.tradeoff import FailedAlternative, alternative_passed, compare, run_alternative
    from auditor.requirements import parse_requirement

    alt = run_alternative("threshold-optimizer", adult_mlp, adult, parse_requirement("demographic_parity <= 0.05"),
                          split="test")
    acc = alt.metrics["accuracy"]
    close = [parse_requirement(f"accuracy >= {acc - 0.002:.4f}")]  # the point holds; the interval straddles
    assert close[0].holds(acc) and alternative_passed(alt, adult, "test", close, alt.metrics) is False
    far = [parse_requirement(f"accuracy >= {acc - 0.05:.4f}")]
    assert alternative_passed(alt, adult, "test", far, alt.metrics) is True
    assert alternative_passed(alt, adult, "test", [parse_requirement("sparsity >= 0.5")], alt.metrics) is None
    t = compare(adult_mlp, adult, ["demographic_parity <= 0.05"], [], split="test",
                alternatives=[alt, FailedAlternative("reweighing-retrain", "cannot rebuild architecture 'custom'")])
    row = t.rows.set_index("method").loc["reweighing-retrain"]
    assert row["error"] == "cannot rebuild architecture 'custom'" and row["passed"] is None


def test_fairness_fine_tuning_stops_at_the_accuracy_floor(adult_mlp, adult):
    """It raised the penalty until accuracy fell far under the audit's own floor (68.6 -> 57.6 % against
    'accuracy >= 0.65'): it now stops there and keeps the last state above the floor."""
    from auditor.editors import get_editor
    from auditor.requirements import compute_metrics

    acc0 = compute_metrics(adult_mlp.model, adult, "train").metrics["accuracy"]
    floor = round(acc0 - 0.01, 3)
    hard = "equalized_odds <= 0.005"  # out of reach within the floor
    free = get_editor("finetune-fairness", epochs=3).edit(adult_mlp, adult, [hard])
    assert compute_metrics(free.bundle.model, adult, "train").metrics["accuracy"] < floor  # what it used to do
    held = get_editor("finetune-fairness", epochs=3).edit(adult_mlp, adult, [hard, f"accuracy >= {floor}"])
    assert held.extras["stopped_at_floor"] and held.extras["accuracy_floor"] == floor
    assert compute_metrics(held.bundle.model, adult, "train").metrics["accuracy"] >= floor
    assert any(e.get("step") == "note" and "accuracy floor" in e.get("message", "") for e in held.log)


def test_fairness_fine_tuning_takes_the_target_of_the_metric_chosen_by_hand(adult_mlp, adult):
    """With an equalized-odds requirement listed first and demographic parity chosen by hand, the target was lost
    (None) and it ran every epoch without a word."""
    from auditor.editors import get_editor

    reqs = ["equalized_odds <= 0.1", "demographic_parity <= 0.08"]
    r = get_editor("finetune-fairness", metric="demographic_parity", epochs=2).edit(adult_mlp, adult, reqs)
    assert r.extras["metric"] == "demographic_parity" and r.extras["target"] == 0.08
    none = get_editor("finetune-fairness", metric="demographic_parity", epochs=1).edit(adult_mlp, adult,
                                                                                       ["equalized_odds <= 0.1"])
    assert none.extras["target"] is None
    assert any(e.get("step") == "note" and "no target for demographic_parity" in e.get("message", "") for e in none.log)


def test_finetune_fairness_closes_the_failing_gap_when_another_fairness_requirement_already_holds(adult_mlp, adult):
    """Requirements as the dashboard's defaults give them: demographic parity first (holding at a loose target),
    then equalized odds (failing). The editor closed the first one's gap (none: it holds) and changed nothing;
    every fairness requirement's gap is in its penalty now."""
    from auditor import evaluate

    reqs = ["demographic_parity <= 0.30", "equalized_odds <= 0.05"]
    before = evaluate(adult_mlp, adult, reqs)
    assert before.requirements[0].passed and not before.requirements[1].passed
    result = get_editor("finetune-fairness", seed=0).edit(adult_mlp, adult, reqs)
    assert result.changed
    assert set(result.extras["check_gaps"]) == {"demographic_parity[sex]", "equalized_odds[sex]"}
    after = evaluate(result.bundle, adult, reqs, resamples=0)
    assert after.metrics["equalized_odds"] < 0.6 * before.metrics["equalized_odds"]
    assert after.metrics["demographic_parity"] <= 0.30


def test_a_fairness_fine_tune_with_nothing_to_do_says_so(adult_mlp, adult):
    result = get_editor("finetune-fairness", seed=0).edit(adult_mlp, adult, ["demographic_parity <= 0.5"])
    assert not result.changed
    assert any(e.get("step") == "note" and "nothing to fine-tune" in e["message"] for e in result.log)
    dro = get_editor("finetune-worst-group", seed=0).edit(adult_mlp, adult, ["worst_group_accuracy >= 0.5"])
    assert not dro.changed
    assert any(e.get("step") == "note" and "nothing to fine-tune" in e["message"] for e in dro.log)
