from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference, selection_rate
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from auditor import AuditorError, evaluate, parse_requirement
from auditor.requirements import Fixes, compute_metrics, features_used, predict, sparsity
from tests.fixtures import tabular_data, threshold_model


def test_metrics_known_on_paper():
    # predicts class 1 iff x0 > 0
    model = threshold_model([1.0, 0.0])
    X = [[1, 0], [1, 0], [-1, 0], [-1, 0], [1, 0], [-1, 0]]
    y = [1, 0, 0, 0, 1, 1]
    data = tabular_data(X, y, {"sex": ["F", "F", "F", "M", "M", "M"]})
    m = compute_metrics(model.model, data).metrics
    assert m["accuracy"] == pytest.approx(4 / 6)
    # selection rate F = 2/3, M = 1/3
    assert m["demographic_parity"] == pytest.approx(1 / 3)
    assert m["features_used"] == 1
    assert m["sparsity"] == pytest.approx(0.75)  # 3 of the 4 output weights are zero


def test_group_metrics_equal_fairlearn(adult_mlp, adult):
    ev = evaluate(adult_mlp, adult, min_group=0)  # every group, as fairlearn (the default leaves small ones out)
    y = adult.test.y.numpy()
    pred = predict(adult_mlp.model, adult.test.X)
    for attr in ("sex", "race"):
        g = adult.test.groups[attr]
        assert abs(ev.metrics[f"demographic_parity[{attr}]"]
                   - demographic_parity_difference(y, pred, sensitive_features=g)) < 1e-9
        assert abs(ev.metrics[f"equalized_odds[{attr}]"]
                   - equalized_odds_difference(y, pred, sensitive_features=g)) < 1e-9
        frame = MetricFrame(metrics={"accuracy": accuracy_score, "selection_rate": selection_rate},
                            y_true=y, y_pred=pred, sensitive_features=g)
        for group, row in frame.by_group.iterrows():
            assert abs(ev.groups[attr][group]["accuracy"] - row["accuracy"]) < 1e-9
            assert abs(ev.groups[attr][group]["selection_rate"] - row["selection_rate"]) < 1e-9
        assert ev.metrics["worst_group_accuracy"] <= frame.by_group["accuracy"].min() + 1e-12
    assert abs(ev.metrics["accuracy"] - accuracy_score(y, pred)) < 1e-9
    assert abs(ev.metrics["balanced_accuracy"] - balanced_accuracy_score(y, pred)) < 1e-9
    assert ev.metrics["demographic_parity"] == ev.metrics["demographic_parity[sex]"]


def test_sparsity_and_features_used(adult_mlp, adult):
    b = adult_mlp
    assert sparsity(b.model) == 0.0
    assert features_used(b.model, adult.feature_groups) == 11
    with torch.no_grad():
        for name in ("workclass", "education"):
            b.model.fc1.weight[:, adult.feature_groups[name]] = 0
    assert features_used(b.model, adult.feature_groups) == 9
    n_zero = 64 * (len(adult.feature_groups["workclass"]) + len(adult.feature_groups["education"]))
    total = sum(m.weight.numel() for m in (b.model.fc1, b.model.fc2, b.model.out))
    assert sparsity(b.model) == pytest.approx(n_zero / total)


def test_edit_metrics_and_drawdown(digits_cnn, digits):
    ref = digits_cnn.copy()
    X = digits.test.X[:4]
    wanted = torch.tensor([1, 2, 3, 4])
    fixes = Fixes(X, wanted, X + 0.01, wanted)
    m = compute_metrics(digits_cnn.model, digits, reference=ref.model, fixes=fixes).metrics
    pred = predict(digits_cnn.model, X)
    assert m["edit_success"] == pytest.approx(float((pred == wanted.numpy()).mean()))
    assert m["drawdown"] == 0 and m["changed_predictions"] == 0


def test_sample_model_figures(adult_mlp, adult, trojan_cnn, digits_trojan, spurious_cnn, digits_spurious):
    assert evaluate(adult_mlp, adult).metrics["accuracy"] >= 0.84
    m = evaluate(trojan_cnn, digits_trojan).metrics
    assert m["accuracy"] >= 0.95 and m["attack_success_rate"] >= 0.95
    assert evaluate(spurious_cnn, digits_spurious).metrics["cue_gap"] >= 0.3


def test_requirement_parsing_and_verdicts(adult_mlp, adult):
    r = parse_requirement("demographic_parity[race] <= 0.1")
    assert (r.metric, r.attribute, r.op, r.threshold) == ("demographic_parity", "race", "<=", 0.1)
    ev = evaluate(adult_mlp, adult, ["demographic_parity <= 0.05", "accuracy >= 0.84"])
    assert [x.passed for x in ev.requirements] == [False, True]
    assert not ev.passed
    with pytest.raises(AuditorError, match="valid metrics: accuracy"):
        parse_requirement("acuracy >= 0.9")
    with pytest.raises(AuditorError, match="cannot parse"):
        parse_requirement("accuracy = 0.9")
    with pytest.raises(AuditorError, match="needs a data set with a Trojan trigger"):
        evaluate(adult_mlp, adult, ["attack_success_rate <= 0.02"])


def test_group_metrics_equal_fairlearn_on_edge_cases():
    """Random labels and groups, including groups with no positives or no negatives."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from auditor.requirements.metrics import demographic_parity_difference as dp_ours
    from auditor.requirements.metrics import equalized_odds_difference as eo_ours
    from auditor.requirements.metrics import group_table

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1), st.sampled_from("abcd")), min_size=2,
                    max_size=40))
    def check(rows):
        y = np.array([r[0] for r in rows])
        p = np.array([r[1] for r in rows])
        g = pd.Series([r[2] for r in rows])
        table = group_table(y, p, g)
        assert abs(dp_ours(table) - demographic_parity_difference(y, p, sensitive_features=g)) < 1e-9
        assert abs(eo_ours(table) - equalized_odds_difference(y, p, sensitive_features=g)) < 1e-9

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check()


def test_accuracy_and_balanced_accuracy_equal_sklearn():
    """The numpy versions the editors call on every step give sklearn's figures, classes missing
    from the labels or the predictions included."""
    import warnings

    from auditor.requirements.metrics import accuracy, balanced_accuracy

    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        y, pred = rng.integers(0, k, n), rng.integers(0, k + 1, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = balanced_accuracy_score(y, pred)
        assert accuracy(y, pred) == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert balanced_accuracy(y, pred) == pytest.approx(want, abs=1e-12)


def test_the_cue_class_without_its_cue_is_measured_with_its_own_interval():
    """A model that learned the cue instead of the class fails on the class's own images without the cue;
    overall accuracy hides it (one class in ten), so it is a metric of its own, with the rows it rests on."""
    from auditor import load_data, load_model
    from auditor.editors import get_editor
    from auditor.requirements import compute_metrics
    from auditor.requirements.uncertainty import intervals

    bundle = load_model(Path(__file__).resolve().parent.parent / "sample_models" / "digits_cnn_spurious.safetensors")
    data = load_data("digits-spurious")
    report = compute_metrics(bundle.model, data, "test")
    m, sp = report.metrics, data.test
    own = sp.y == data.cue.target
    pred = bundle.model.eval()(sp.X[own]).argmax(1)
    assert m["cue_class_accuracy"] == pytest.approx(float((pred == data.cue.target).double().mean()), abs=1e-9)
    assert m["cue_class_accuracy"] < m["accuracy"] - 0.1  # the sample model leans on its cue
    iv = intervals({"cue_class_accuracy": m["cue_class_accuracy"]}, report.outcomes, resamples=300)
    assert iv["cue_class_accuracy"]["n"] == int(own.sum())
    assert iv["cue_class_accuracy"]["low"] < m["cue_class_accuracy"] < iv["cue_class_accuracy"]["high"]
    assert report.groups["cue"]["cue class without its cue"]["accuracy"] == m["cue_class_accuracy"]
    # removing the cue's pull (cue gap) does not teach the class: the report must not read as if it did
    edited = get_editor("dynamic-rank-one", samples=5).edit(bundle, data, ["cue_gap <= 0.05"]).bundle
    after = compute_metrics(edited.model, data, "test").metrics
    assert after["cue_gap"] <= 0.05 and after["cue_class_accuracy"] < after["accuracy"] - 0.1


def test_a_backdoor_sent_to_another_class_is_said_and_can_be_required_away(trojan_cnn, digits_trojan):
    """Attack success counts flips to the target only: an edit that sends triggered images elsewhere looked like a
    removed backdoor. Triggered accuracy measures it (with its own interval), and the evaluation warns."""
    from auditor.editors import get_editor
    from auditor.requirements import compute_metrics
    from auditor.requirements.uncertainty import intervals

    data = digits_trojan
    moved = get_editor("static-rank-one-last", samples=1).edit(trojan_cnn, data, []).bundle.model.eval()
    report = compute_metrics(moved, data, "test")
    m, sp = report.metrics, data.test
    rows = np.flatnonzero(sp.y.numpy() != data.trigger.target)
    with torch.no_grad():
        stamped = moved(data.corrupt("test", rows)).argmax(1).numpy()
    assert m["triggered_accuracy"] == pytest.approx(float((stamped == sp.y.numpy()[rows]).mean()), abs=1e-9)
    assert m["attack_success_rate"] < 0.5 and m["triggered_accuracy"] < m["accuracy"] - 0.1
    said = [w for w in report.warnings if w.startswith("the trigger still changes predictions")]
    assert said and "triggered_accuracy >=" in said[0]
    iv = intervals({"triggered_accuracy": m["triggered_accuracy"]}, report.outcomes, resamples=300)
    assert iv["triggered_accuracy"]["n"] == len(rows)
    # the dynamic editor from one sample, asked for attack success alone, overshoots: the trigger now sends many
    # images elsewhere, and the evaluation says so; asked for triggered accuracy too, it keeps far more labels
    acc0 = compute_metrics(trojan_cnn.model, data, "test").metrics["accuracy"]
    alone = get_editor("dynamic-rank-one", samples=1).edit(trojan_cnn, data, ["attack_success_rate <= 0.02"])
    a = compute_metrics(alone.bundle.model, data, "test")
    assert a.metrics["attack_success_rate"] <= 0.02 and a.metrics["triggered_accuracy"] < a.metrics["accuracy"] - 0.1
    assert [w for w in a.warnings if w.startswith("the trigger still changes predictions")]
    both = get_editor("dynamic-rank-one", samples=1).edit(
        trojan_cnn, data, ["attack_success_rate <= 0.02", "triggered_accuracy >= 0.95"])
    b = compute_metrics(both.bundle.model, data, "test").metrics
    assert b["triggered_accuracy"] >= a.metrics["triggered_accuracy"] + 0.1
    assert b["attack_success_rate"] <= 0.1 and b["accuracy"] >= acc0 - 0.01


def test_the_redirect_warning_names_a_target_no_image_is_predicted_as():
    """Class names were listed only up to the largest prediction: a target above it raised IndexError inside
    every evaluation of such a model (found by the population benchmark's fine-tuned ResNet)."""
    from auditor.requirements.metrics import redirect_warnings

    y = np.array([0, 1, 2, 3] * 10)
    stamped = np.array([1, 2, 3, 0] * 5 + [0, 1, 2, 3] * 5)
    m = {"attack_success_rate": 0.0, "accuracy": 0.95, "triggered_accuracy": float((stamped == y).mean())}
    said = redirect_warnings(m, y, stamped, 9, [f"c{k}" for k in range(10)])
    assert len(said) == 1 and "the target 'c9'" in said[0] and "12.5 % to class 'c0'" in said[0]
    assert redirect_warnings(dict(m, triggered_accuracy=0.94), y, stamped, 9, []) == []
    # a weak backdoor before any edit (a user's ONNX model: 39 % to the target, the rest keep their label) was
    # warned about as a redirected one, "the trigger still changes predictions", beside the edited model's figures
    weak = {"attack_success_rate": 0.394, "accuracy": 0.964, "triggered_accuracy": 0.600}
    assert redirect_warnings(weak, y, stamped, 9, []) == []


def test_a_model_that_never_predicts_a_class_is_said_to_close_gaps_trivially():
    """A fairness gap closed by predicting (almost) one class: equalized odds and demographic parity are 0,
    accuracy is the majority's share, and the evaluation says why those figures look good."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 1)).astype(np.float32)
    y = (x[:, 0] > 1.2).astype(np.int64)  # about 12 % positive
    groups = {"g": ["a" if i % 2 else "b" for i in range(2000)]}
    data = tabular_data(x, y, groups)
    never = evaluate(threshold_model([0.0]), data, ["equalized_odds <= 0.05"])  # z = 0: class 0 for every row
    assert never.metrics["equalized_odds"] == 0.0 and never.passed
    said = [w for w in never.warnings if "(almost) never predicts it" in w]
    assert len(said) == 1 and "'1'" in said[0] and "0.00 % of the rows" in said[0]
    fair = evaluate(threshold_model([1.0]), data)  # predicts z > 0: class 1 for about half the rows
    assert not any("never predicts" in w for w in fair.warnings)
