"""Uncertainty everywhere a number is judged (issue 13): bootstrap intervals, pass / fail /
inconclusive, groups under the minimum size, side effects of an edit, stale trade-offs."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from auditor.audit import AuditSession
from auditor.cli import main
from auditor.evaluate import DEFAULT_MIN_GROUP, evaluate
from auditor.requirements import DEFAULT_VERDICT
from auditor.requirements.uncertainty import point_metrics, resample_values
from tests.conftest import SAMPLES

ADULT = str(SAMPLES / "adult_mlp.safetensors")
TROJAN = str(SAMPLES / "digits_cnn_trojan.safetensors")


def test_cli_defaults_equal_the_library():
    from auditor.cli import verdicts

    assert (verdicts.DEFAULT_VERDICT, verdicts.DEFAULT_MIN_GROUP) == (DEFAULT_VERDICT, DEFAULT_MIN_GROUP)


def test_counts_give_the_same_metrics_as_the_model(adult_mlp, adult):
    ev = evaluate(adult_mlp, adult, resamples=0)
    for key, value in point_metrics(ev.outcomes).items():
        assert abs(value - ev.metrics[key]) < 1e-12, key


@pytest.mark.parametrize("which", ["adult", "trojan"])
def test_interval_covers_fresh_bootstrap_values(which, adult_mlp, adult, trojan_cnn, digits_trojan):
    bundle, data = (adult_mlp, adult) if which == "adult" else (trojan_cnn, digits_trojan)
    ev = evaluate(bundle, data)
    fresh = resample_values(ev.outcomes, 400, seed=12345)  # other resamples of the same rows
    keys = [k for k in ("accuracy", "demographic_parity[sex]", "equalized_odds[sex]", "worst_group_accuracy",
                        "attack_success_rate") if k in fresh]
    assert keys
    for key in keys:
        iv = ev.intervals[key]
        assert iv["low"] <= iv["value"] <= iv["high"] and iv["n"] > 0
        inside = np.mean((fresh[key] >= iv["low"] - 1e-12) & (fresh[key] <= iv["high"] + 1e-12))
        assert 0.9 <= inside, (key, inside)  # ~95 % expected
        assert iv["high"] - iv["low"] < 0.2  # and not trivially wide
    assert ev.intervals["sparsity"]["low"] is None and "no interval" in ev.intervals["sparsity"]["note"]
    if which == "adult":
        assert ev.intervals["demographic_parity[sex]"]["groups"] == {"Female": 5421, "Male": 10860}


def test_small_groups_left_out_of_gaps_with_a_warning(adult_mlp, adult):
    ev = evaluate(adult_mlp, adult)  # race: Amer-Indian-Eskimo has 19 positives, Other 25
    every = evaluate(adult_mlp, adult, min_group=0)
    assert ev.metrics["equalized_odds[race]"] < every.metrics["equalized_odds[race]"]
    assert ev.metrics["demographic_parity[race]"] == every.metrics["demographic_parity[race]"]  # all >= 30 rows
    assert set(ev.small_groups["race"]) == {"Amer-Indian-Eskimo", "Other"}
    assert any("race=Other is small" in w and "left out of equalized_odds[race]" in w for w in ev.warnings)
    assert not every.warnings and "sex" not in ev.small_groups


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory, adult):
    """A user's small CSV: 300 raw Adult rows, as in the issue."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.csv"
    adult.test.raw.sample(300, random_state=1).to_csv(path, index=False)
    return ["--target", "income", "--positive", ">50K", "--protected", "sex,race", str(path)]


def _evaluate_csv(tiny_csv, tmp_path, *extra):
    *opts, path = tiny_csv
    out = tmp_path / f"e{len(extra)}.json"
    rc = main(["evaluate", ADULT, path, *opts, "--json", str(out), "--no-log", *extra])
    return rc, json.loads(out.read_text())


def test_tiny_csv_is_inconclusive_with_group_warnings(tiny_csv, tmp_path, capsys):
    # equalized odds (sex): 8 women with a positive label, under the minimum of 30, and only two groups
    rc, payload = _evaluate_csv(tiny_csv, tmp_path, "--require", "equalized_odds <= 0.5")
    rows = payload["data"]["rows"]
    assert rows <= 300
    req = payload["requirements"][0]
    assert req["verdict"] == "inconclusive" and req["passed"] is False and rc == 1
    assert "too few rows" in req["note"]
    assert payload["warnings"] and all("is small" in w for w in payload["warnings"])
    assert payload["small_groups"]["race"] and payload["verdict_mode"] == "strict"
    assert "INCONCLUSIVE" in capsys.readouterr().out
    # A requirement whose interval straddles the threshold: inconclusive, exit 1 strict, 0 by the point value
    acc = payload["intervals"]["accuracy"]
    assert acc["low"] < acc["value"] < acc["high"] and acc["n"] == rows
    need = ["--require", f"accuracy >= {acc['value'] - 0.01:.4f}"]
    rc, strict = _evaluate_csv(tiny_csv, tmp_path, *need)
    assert strict["requirements"][0]["verdict"] == "inconclusive" and rc == 1
    rc, point = _evaluate_csv(tiny_csv, tmp_path, *need, "--verdict", "point")
    assert point["requirements"][0]["verdict"] == "inconclusive" and point["requirements"][0]["passed"] and rc == 0


@pytest.fixture(scope="module")
def fairness_edit(tmp_path_factory):
    """`metanet-fairness` on adult_mlp: demographic parity met, equalized odds (sex) much worse."""
    tmp = tmp_path_factory.mktemp("fair")
    argv = ["edit", ADULT, "adult", "--editor", "metanet-fairness", "--require", "demographic_parity <= 0.05",
            "--out", str(tmp / "fair.safetensors"), "--no-log"]
    rc = main([*argv, "--json", str(tmp / "fair.json")])
    rc_forbid = main([*argv, "--forbid-side-effects", "--json", str(tmp / "forbid.json")])
    return rc, json.loads((tmp / "fair.json").read_text()), rc_forbid, json.loads((tmp / "forbid.json").read_text())


def test_edit_reports_the_equalized_odds_regression_as_a_side_effect(fairness_edit):
    rc, payload, rc_forbid, forbid = fairness_edit
    assert rc == 0 and payload["after"]["requirements"][0]["verdict"] == "pass"
    effects = {e["metric"]: e for e in payload["side_effects"]}
    eo = effects["equalized_odds[sex]"]
    assert eo["after"] - eo["before"] > 0.1 and eo["low"] > 0  # worse beyond noise
    male = next(g for g in eo["groups"] if g["group"] == "Male" and g["rate"] == "true_positive_rate")
    assert male["after"] < male["before"] - 0.1  # TPR for men falls
    assert "demographic_parity" not in effects and "demographic_parity[sex]" not in effects  # the requirement
    assert payload["verdict"]["status"] == "PASS with side effects"
    assert rc_forbid == 1 and forbid["verdict"]["status"] == "FAIL" and not forbid["verdict"]["passed"]


def test_no_side_effects_without_an_edit(adult_mlp, adult):
    s = AuditSession(adult_mlp, adult, ["demographic_parity <= 0.05"])
    assert s.side_effects() == [] and s.verdict()["status"] == "FAIL"


@pytest.fixture(scope="module")
def fair_session(adult):
    from auditor import load_model

    s = AuditSession(load_model(ADULT), adult, ["demographic_parity <= 0.05"])
    s.run_edit("metanet-fairness")
    return s


def test_compare_page_opens_with_the_side_effects(fair_session):
    from tests.test_app import app, texts

    at = app(fair_session, "compare")
    assert not at.error
    banner = texts(at.warning)
    assert "Verdict: PASS with side effects" in banner and "Equalized odds (sex)" in banner
    assert "true positive rate of sex=Male" in banner


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils")
def test_report_pdf_and_json_carry_the_side_effects(fair_session, tmp_path):
    from auditor.report import validate_report, write_pdf

    report = fair_session.build_report()
    doc = validate_report(report)
    assert doc["verdict"]["status"] == "PASS with side effects"
    assert any(e["metric"] == "equalized_odds[sex]" for e in doc["side_effects"])
    assert doc["requirements"][0]["after"]["verdict"] == "pass" and doc["requirements"][0]["after"]["low"] is not None
    assert doc["metrics"]["after"]["intervals"]["equalized_odds[sex]"]["n"] == doc["data"]["rows"]
    pdf = write_pdf(doc, tmp_path / "r.pdf")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    flat = " ".join(text.split())
    assert "side effect" in flat.lower() and "Equalized odds (sex)" in flat


def test_stale_tradeoff_is_rerun_or_its_absence_explained(adult_mlp, adult):
    s = AuditSession(adult_mlp, adult, ["demographic_parity <= 0.05"])
    s.run_edit("metanet-fairness")
    s.run_tradeoff([])
    s.add_requirement("accuracy >= 0.8")  # the trade-off is now stale
    assert s.tradeoff_stale and s.report_contents()["tradeoff"].startswith("stale")
    doc = s.build_report().to_dict()
    assert doc["tradeoff"] is not None and doc["uncertainty"]["tradeoff"] == "included" and not s.tradeoff_stale
    s.remove_requirement("demographic_parity <= 0.05")  # nothing left to plot against accuracy
    doc = s.build_report().to_dict()
    assert doc["tradeoff"] is None
    assert "no requirement besides accuracy" in doc["uncertainty"]["tradeoff"]
    assert "No trade-off was run" not in doc["uncertainty"]["tradeoff"]


def test_a_rate_that_hinges_on_the_class_gets_the_width_of_a_sample():
    """The rows are a sample of the population, their class mix included: a trigger that works on every
    class but one has an interval about as wide as a binomial one, not a near-zero one (labels are not
    strata)."""
    from auditor.requirements.metrics import Outcomes
    from auditor.requirements.uncertainty import intervals

    y = np.repeat(np.arange(10), 62)
    oc = Outcomes(y.astype(np.int64), y.astype(np.int64), 10)
    hit = (y != 2).astype(np.int64)
    hit[y == 0] = -1  # the target class is not attacked
    oc.asr_hit = hit
    rows = hit >= 0
    p = float(hit[rows].mean())
    iv = intervals({"attack_success_rate": p, "accuracy": 1.0}, oc)["attack_success_rate"]
    binomial = 2 * 1.96 * np.sqrt(p * (1 - p) / rows.sum())
    assert 0.7 * binomial < iv["high"] - iv["low"] < 1.3 * binomial


def test_a_metrics_interval_does_not_depend_on_what_else_was_measured(trojan_cnn, digits_trojan):
    """Rows were resampled as cells of every measured column, so adding a metric (triggered accuracy, a reference
    model's predictions) moved the intervals of the others: the dashboard and the command line gave slightly
    different intervals for the same rows. Each metric now resamples the cells of its own columns."""
    from dataclasses import replace

    from auditor.editors import get_editor
    from auditor.requirements import compute_metrics
    from auditor.requirements.uncertainty import intervals, paired_differences

    # the edited model sends triggered images to other classes (trigger hits and triggered predictions split the
    # rows), and its reference, the original, predicts otherwise on the triggered-free rows too
    edited = get_editor("dynamic-rank-one", samples=1).edit(trojan_cnn, digits_trojan).bundle.model
    report = compute_metrics(edited, digits_trojan, "test", reference=trojan_cnn.model)
    oc, m = report.outcomes, report.metrics
    assert (oc.ref_pred != oc.pred).any() and ((oc.asr_hit == 0) & (oc.trig_right == 0)).any()
    full = intervals(m, oc, resamples=400)
    for drop in ("trig_right", "ref_pred"):
        fewer = intervals(m, replace(oc, **{drop: None}), resamples=400)
        for key in ("accuracy", "balanced_accuracy", "attack_success_rate"):
            assert (fewer[key]["low"], fewer[key]["high"]) == (full[key]["low"], full[key]["high"]), (drop, key)
    alone = intervals({"attack_success_rate": m["attack_success_rate"]}, oc, resamples=400)
    assert alone["attack_success_rate"] == full["attack_success_rate"]  # as the dynamic editor's checks ask
    paired = paired_differences(oc, oc, m, m, resamples=400)
    slim = paired_differences(replace(oc, trig_right=None), replace(oc, trig_right=None), m, m, resamples=400)
    assert paired["accuracy"] == slim["accuracy"] and paired["attack_success_rate"] == slim["attack_success_rate"]
