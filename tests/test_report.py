"""Compliance reports: the report model, JSON against its schema, self-contained HTML, PDF via Chromium,
trade-off rows and chart builders."""
import copy
import json
import re
import shutil
import subprocess

import numpy as np
import plotly.graph_objects as go
import pytest

from auditor import charts, evaluate
from auditor.audit import run_audit
from auditor.audit.tradeoff import baselines_for, compare
from auditor.errors import AuditorError
from auditor.present import format_value
from auditor.report import (
    Report,
    find_chromium,
    render_html,
    stable,
    validate_report,
    write_html,
    write_json,
    write_pdf,
)
from auditor.report.render import VENDORED_TRACES, _chart_payload, plotly_js, report_figures, trace_types
from tests.conftest import _sample

REQS = ["attack_success_rate <= 0.02", "accuracy >= 0.95"]
# Anything a browser could fetch: a scheme URL, a protocol-relative URL, or a CSS url()/@import
EXTERNAL = re.compile(r"(?i)\b(?:https?|ftp|wss?)://|(?:src|href)\s*=\s*[\"']?//|url\(\s*[\"']?(?!data:)|@import")


@pytest.fixture(scope="module")
def trojan_audit(digits_trojan):
    bundle = _sample("digits_cnn_trojan")
    out = run_audit(bundle, digits_trojan, REQS, editor="dynamic-rank-one", baselines=["static-rank-one-last"],
                    seed=0, model_path="sample_models/digits_cnn_trojan.safetensors",
                    command="auditor audit ... --seed 0", signoff={"auditor": "Ada Lovelace"})
    return bundle, out


@pytest.fixture(scope="module")
def trojan_html(trojan_audit, tmp_path_factory):
    path = tmp_path_factory.mktemp("html") / "r.html"
    write_html(trojan_audit[1].report, path)
    return path


def test_report_numbers_match_the_evaluations(trojan_audit, digits_trojan):
    bundle, out = trojan_audit
    d = validate_report(out.report)
    assert d["verdict"]["status"] == "PASS" and d["verdict"]["before"] is False and d["verdict"]["after"] is True
    asr = d["requirements"][0]
    assert asr["before"]["value"] > 0.99 and not asr["before"]["passed"]
    assert asr["after"]["value"] <= 0.02 and asr["after"]["passed"]
    after = evaluate(out.edit.bundle, digits_trojan, REQS)
    assert d["metrics"]["after"]["overall"]["accuracy"] == pytest.approx(after.metrics["accuracy"])
    assert d["metrics"]["after"]["overall"]["attack_success_rate"] == pytest.approx(
        after.metrics["attack_success_rate"])
    m = d["model"]
    assert m["sha256_before"] == bundle.sha256 and m["sha256_after"] == out.edit.bundle.sha256 != bundle.sha256
    assert m["parameters"] == bundle.n_parameters and m["format"] == "safetensors"
    assert d["data"] == {**d["data"], "name": "digits-trojan", "rows": 450, "split": "test",
                         "sha256": digits_trojan.sha256}
    edit = d["edits"][0]
    assert edit["editor"] == "dynamic-rank-one" and edit["layers"] and edit["max_rank"] == 1
    assert all(c["rank"] == 1 for c in edit["changes"]) and edit["device"] == "cpu"
    assert d["localization"]["layers"][0]["rank"] == 1 and len(d["localization"]["images"]) == 3
    rows = {r["method"]: r for r in d["tradeoff"]["rows"]}
    assert set(rows) == {"original", "dynamic-rank-one", "static-rank-one-last"}
    assert rows["dynamic-rank-one"]["value"] == pytest.approx(asr["after"]["value"])
    assert rows["original"]["value"] == pytest.approx(asr["before"]["value"]) and rows["original"]["passed"] is False
    assert rows["dynamic-rank-one"]["pareto"] and not rows["original"]["pareto"]
    assert d["environment"]["versions"]["torch"] and d["environment"]["seed"] == 0
    assert d["signoff"] == {"auditor": "Ada Lovelace", "notes": None, "date": None}
    assert bundle.sha256 == _sample("digits_cnn_trojan").sha256  # the audit never touched the original


def test_schema_rejects_broken_reports(trojan_audit):
    good = trojan_audit[1].report.to_dict()
    for breaks in (lambda d: d.pop("verdict"), lambda d: d["model"].update(sha256_before="abc"),
                   lambda d: d["requirements"][0].update(op="<"), lambda d: d.update(extra=1)):
        bad = copy.deepcopy(good)
        breaks(bad)
        with pytest.raises(AuditorError, match="does not match its schema"):
            validate_report(bad)


def test_json_roundtrip_and_stable_view(trojan_audit, tmp_path):
    d = json.loads(write_json(trojan_audit[1].report, tmp_path / "r.json").read_text())
    assert d == trojan_audit[1].report.to_dict()
    s = stable(d)
    assert "generated" not in s and "seconds" not in s["edits"][0]
    assert all("seconds" not in r for r in s["tradeoff"]["rows"])
    # the HTML can be drawn from the JSON alone
    assert "Ada Lovelace" in render_html(Report.from_dict(d))


def test_html_is_self_contained(trojan_html, trojan_audit):
    html = trojan_html.read_text()
    assert trojan_html.stat().st_size <= 2 * 1024 * 1024  # a light report: at most 2 MB
    # plotly.js once, inline, as a plain script: the vendored partial bundle, byte for byte
    bundle = plotly_js()
    assert html.count(bundle) == 1 and bundle.startswith("/**\n* plotly.js (cartesian - minified)")
    assert "data:text/javascript" not in html and not re.search(r"<script[^>]*\ssrc=", html)
    # the page itself holds no URL (the bundle's own code mentions some in licence comments and
    # defaults it never fetches: the browser test below proves no request is made)
    page = html.replace(bundle, "")
    assert not EXTERNAL.search(page), EXTERNAL.search(page).group(0)
    assert "<link" not in page.lower()
    assert len(re.findall(r'data-chart="chart-\d+"', html)) >= 5
    assert '<div class="status">PASS</div>' in html and "Ada Lovelace" in html
    assert trojan_audit[1].report.model["sha256_after"] in html


def test_chart_data_cannot_close_its_script_tag():
    fig = go.Figure(go.Bar(x=["</script><script>alert(1)</script>"], y=[1]))
    payload = _chart_payload(fig, static=False)
    assert "</script" not in payload.lower()
    assert json.loads(payload)["data"][0]["x"] == ["</script><script>alert(1)</script>"]


@pytest.mark.browser
def test_html_opens_offline_with_charts_drawn(trojan_html):
    sync_api = pytest.importorskip("playwright.sync_api")
    try:
        chromium = find_chromium()
    except AuditorError:
        pytest.skip("no Chromium")
    requests = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(("file:", "data:"))
                       else route.abort())  # no network
            page.goto(trojan_html.as_uri())
            page.wait_for_function("document.documentElement.getAttribute('data-charts') === 'ready'", timeout=60_000)
            n_charts = page.evaluate("document.querySelectorAll('[data-chart]').length")
            drawn = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')]"
                                  ".filter(d => d.querySelector('svg.main-svg') && d.querySelector('.trace, .hm'))"
                                  ".length")
            bars = page.evaluate("document.querySelectorAll('.js-plotly-plot .point').length")
        finally:
            browser.close()
    assert n_charts >= 5 and drawn == n_charts and bars > 5
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []


@pytest.mark.browser
def test_pdf_pages_render(trojan_audit, tmp_path):
    try:
        find_chromium()
    except AuditorError:
        pytest.skip("no Chromium")
    if not shutil.which("pdftoppm"):
        pytest.skip("no pdftoppm (apt-get install poppler-utils)")
    from PIL import Image

    pdf = write_pdf(trojan_audit[1].report, tmp_path / "r.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) >= 3
    for page in pages:
        pixels = np.asarray(Image.open(page).convert("L"), dtype=float)
        assert pixels.std() > 5 and (pixels < 128).mean() > 0.002, f"{page.name} is blank"
    first = np.asarray(Image.open(pages[0]).convert("RGB"), dtype=int)
    green = (first[..., 1] > 100) & (first[..., 0] < 60) & (first[..., 2] < 90)  # the PASS banner's colour
    assert green.mean() > 0.002
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    assert "PASS" in text and "attack_success_rate <= 0.02" in text
    assert "lower is better" in text  # an axis title inside the trade-off chart's SVG: charts were drawn
    # one unit language: metrics in percent (as the dashboard shows them), never as raw fractions
    d = trojan_audit[1].report.to_dict()
    asr = d["requirements"][0]["after"]["value"]
    shown = format_value("attack_success_rate", asr)
    assert shown in text and shown.endswith(" %")
    acc = d["metrics"]["after"]["overall"]["accuracy"]
    assert format_value("accuracy", acc) in text and f"{acc:.4f}" not in text  # e.g. 97.87 %, never 0.9787
    for side in ("before", "after"):
        for key, value in d["metrics"][side]["overall"].items():
            if value is not None and 0 < value < 1:
                assert f"{value:.4f}" not in text and f"{value:.6f}" not in text, (key, value)
    assert "Attack success rate must be at most 2 %" in text  # chart titles and tables in words
    assert "‖ΔW‖/‖W‖" in text and "share of weights changed" in text.lower()  # the edit's size as what it is
    # the regulator section: evidence, not a legal opinion
    assert "Evidence for record-keeping and documentation" in text and "not legal advice" in text.lower()
    assert all(f"Art. {n}" in text for n in range(9, 16)) and "NIST AI RMF" in text
    assert all(f in text for f in ("Govern", "Map", "Measure", "Manage"))
    # the first page alone answers: verdict, what was audited, on which data and how many rows, by whom
    first = subprocess.run(["pdftotext", "-f", "1", "-l", "1", "-layout", str(pdf), "-"], capture_output=True,
                           text=True, check=True).stdout
    assert "PASS" in first and "Attack success rate must be at most 2 %" in first and shown in first
    assert "digits_cnn_trojan" in first and "digits-trojan" in first and "450 rows" in first
    assert "Ada Lovelace" in first and "dynamic-rank-one" in first and "‖ΔW‖/‖W‖" in first


def test_failing_audit_without_edit(adult, tmp_path):
    out = run_audit(_sample("adult_mlp"), adult, ["demographic_parity <= 0.05", "accuracy >= 0.8"],
                    baselines="none", localize=False)
    d = validate_report(out.report)
    assert d["verdict"]["status"] == "FAIL" and d["verdict"]["after"] is None and d["edits"] == []
    assert d["requirements"][0]["after"] is None and d["model"]["sha256_after"] is None
    assert d["tradeoff"] is None and d["localization"] is None
    assert set(d["metrics"]["before"]["groups"]["sex"]) == {"Female", "Male"}
    html = render_html(out.report)
    assert '<div class="status">FAIL</div>' in html and "No edit was applied" in html


def test_tabular_localization_ranks_features_and_layers(adult):
    from auditor.audit import localize

    bundle = _sample("adult_mlp")
    loc = localize(bundle, adult, ["demographic_parity <= 0.05"], rows=200).to_report(adult.class_names)
    assert loc["available"] and [f["rank"] for f in loc["features"]][:3] == [1, 2, 3]
    assert {f["feature"] for f in loc["features"]} == set(adult.feature_groups)
    assert sorted(x["layer"] for x in loc["layers"]) == ["fc1", "fc2", "out"]
    assert sum(x["share"] for x in loc["layers"]) == pytest.approx(1.0)


def test_tradeoff_rows_and_baselines(digits_trojan):
    bundle = _sample("digits_cnn_trojan")
    names = baselines_for(bundle, digits_trojan, "attack_success_rate")
    assert {"rank-one", "dynamic-rank-one", "finetune"} <= set(names) and "magnitude-pruning" not in names
    t = compare(bundle, digits_trojan, REQS, ["static-rank-one-last", "no-such-editor",
                                              ("rank-one x2", "rank-one", {"strength": 2.0})])
    rows = t.rows.set_index("method")
    assert list(rows.index) == ["original", "static-rank-one-last", "no-such-editor", "rank-one x2"]
    assert "unknown editor" in rows.loc["no-such-editor", "error"]
    assert rows.loc["original", "value"] > 0.99 and rows.loc["rank-one x2", "value"] < 0.5
    assert t.figure(highlight="rank-one x2").data
    assert t.to_dict()["rows"][2]["value"] is None  # NaN becomes null in JSON


def test_pareto_mask_on_paper():
    # (metric lower is better, accuracy higher is better)
    x = [0.9, 0.1, 0.1, 0.5, 0.0]
    y = [0.98, 0.97, 0.90, 0.99, 0.80]
    assert charts.pareto_mask(x, y) == [False, True, False, True, True]


def test_chart_builders_return_figures():
    reqs = [{"expr": "accuracy >= 0.9", "threshold": 0.9, "before": {"value": 0.8, "passed": False},
             "after": {"value": 0.95, "passed": True}}]
    figs = [charts.requirements_chart(reqs), charts.metrics_chart({"accuracy": 0.8, "features_used": 7.0}),
            charts.group_chart({"a": {"selection_rate": 0.1}, "b": {"selection_rate": 0.3}}, None, attribute="sex"),
            charts.layer_ranking_chart([{"layer": "fc1", "score": 2.0, "rank": 1}]),
            charts.feature_attribution_chart([{"feature": "age", "importance": 0.3}]),
            charts.image_attribution_chart([{"title": "x", "kind": "image", "z": [[0, 1], [1, 0]]},
                                            {"title": "a", "kind": "attribution", "z": [[0, -1], [2, 0]]}]),
            charts.tradeoff_chart([{"method": "a", "value": 0.1, "accuracy": 0.9}], "demographic_parity",
                                  threshold=0.05),
            charts.edit_steps_chart([{"step": 1, "accepted": True, "requirements": [{"metric": "m", "value": 1}]}],
                                    "m")]
    assert all(isinstance(f, go.Figure) and f.data for f in figs)
    assert list(figs[1].data[0].x) == ["accuracy"]  # counts are left out of a [0, 1] chart


def test_report_charts_fit_the_vendored_plotly_bundle(trojan_audit):
    """Every trace type the report draws is in the vendored partial bundle (else the full one is inlined)."""
    d = trojan_audit[1].report.to_dict()
    used = trace_types(report_figures(d))
    assert {"bar", "heatmap", "scatter"} <= used <= VENDORED_TRACES
    assert len(plotly_js()) < 2_000_000 < len(plotly_js(full=True))


def test_html_text_speaks_percent_and_words(trojan_html, trojan_audit):
    html = trojan_html.read_text()
    text = re.sub(r"<script.*?</script>", "", html, flags=re.S)  # chart data stays raw, as in the JSON
    d = trojan_audit[1].report.to_dict()
    for side in ("before", "after"):
        for key, value in d["metrics"][side]["overall"].items():
            if value is not None and 0 < value < 1:
                assert f"{value:.4f}" not in text and f"{value:.6f}" not in text, (key, value)
                assert format_value(key, value) in text
    assert "Attack success rate must be at most 2 %" in text and "Share of weights changed" in text
    assert 'id="evidence"' in text and "Not legal advice." in text
    # chart titles and axes in words and units
    fig = report_figures(d)["requirements"][0][1]
    assert fig.layout.annotations[0].text == "Attack success rate must be at most 2 %"
    labels = list(fig.data[0].y)
    assert labels[0].startswith("before: 99.75 %") and labels[0].endswith("FAIL")
    after = format_value("attack_success_rate", d["requirements"][0]["after"]["value"])
    assert labels[1].startswith(f"after: {after}") and labels[1].endswith("PASS")
    assert fig.layout.xaxis.ticksuffix == " %" and max(fig.data[0].x) > 99  # drawn in percent


def test_report_renders_without_intervals_or_side_effects(trojan_audit):
    """A report from before intervals and side effects existed still renders, with plain verdicts."""
    d = copy.deepcopy(trojan_audit[1].report.to_dict())
    for key in ("side_effects", "warnings", "uncertainty"):
        d.pop(key, None)
    for q in d["requirements"]:
        q.pop("change", None)
        for side in ("before", "after"):
            for k in ("low", "high", "n", "verdict", "note"):
                (q[side] or {}).pop(k, None)
    for side in ("before", "after"):
        d["metrics"][side].pop("intervals", None)
    html = render_html(d)
    assert '<div class="status">PASS</div>' in html and "95 % CI" not in html
    assert "no confidence intervals in this report" in html


def test_side_effects_and_inconclusive_verdicts_on_the_first_page(trojan_audit):
    d = copy.deepcopy(trojan_audit[1].report.to_dict())
    d["verdict"]["status"] = "PASS with side effects"
    d["side_effects"] = [{"metric": "equalized_odds[sex]", "before": 0.0567, "after": 0.249, "change": 0.1923,
                          "low": 0.17, "high": 0.213, "higher_is_better": False,
                          "groups": [{"attribute": "sex", "group": "Male", "rate": "true_positive_rate",
                                      "before": 0.5838, "after": 0.421, "n": 3256}]}]
    d["requirements"][0]["after"]["verdict"] = "inconclusive"
    html = render_html(d)
    first = html[html.index('<section id="verdict">'):html.index('<section id="requirements"')]
    assert '<div class="status">PASS</div>' in first and "with side effects" in first
    assert "Equalized odds (sex) 5.67 pp → 24.90 pp" in first and "INCONCLUSIVE" in first
    assert 'class="banner warn"' in first


def test_present_units():
    from auditor import present

    assert present.requirement_sentence("attack_success_rate", "<=", 0.02) == "Attack success rate must be at most 2 %"
    assert present.requirement_sentence("demographic_parity[sex]", "<=", 0.045) == \
        "Demographic parity (sex) must be at most 4.5 pp"
    assert present.requirement_sentence("features_used", "<=", 5) == "Features used must be at most 5"
    assert present.requirement_sentence("accuracy", ">=", 0.82) == "Accuracy must be at least 82 %"
    assert present.format_percent(0.7694) == "76.9 %" and present.format_percent(1e-5) == "< 0.1 %"
    assert present.change_size_text(0.7694, 0.9375) == \
        "size of the change ‖ΔW‖/‖W‖ = 77 %; 93.8 % of the weights changed"
    assert present.format_interval("attack_success_rate", 0.0025, 0.0197) == "0.25 – 1.97 %"
    assert present.display_scale("equalized_odds") == (100.0, " pp")
    assert present.format_group_value("count", 5421.0) == "5,421"
    assert present.format_group_value("selection_rate", 0.0802) == "8.02 %"


def test_evidence_map_names_this_reports_evidence(trojan_audit):
    from auditor.report.evidence import regulatory_evidence

    d = trojan_audit[1].report.to_dict()
    ev = regulatory_evidence(d)
    assert "not legal advice" in ev["disclaimer"].lower()
    points = [(r["framework"], r["point"]) for r in ev["rows"]]
    assert points == [("EU AI Act", f"Art. {n}") for n in range(9, 16)] + [
        ("NIST AI RMF", f) for f in ("Govern", "Map", "Measure", "Manage")]
    text = " ".join(i["text"] for r in ev["rows"] for i in r["evidence"])
    assert "attack_success_rate <= 0.02" in text and d["model"]["sha256_before"][:16] in text
    assert d["data"]["sha256"][:16] in text and "Ada Lovelace" in text and "450 rows" in text
    sections = {i["section"] for r in ev["rows"] for i in r["evidence"]}
    assert sections <= {"verdict", "requirements", "identity", "localization", "edits", "metrics", "tradeoff",
                        "environment", "signoff"}


def test_a_hung_chromium_is_killed_with_its_children_and_named(tmp_path, monkeypatch):
    """A printer that never finishes (and leaves a child behind) fails within the timeout, naming it."""
    import os
    import time

    from auditor.report.render import print_pdf

    pidfile = tmp_path / "child.pid"
    fake = tmp_path / "chromium"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setenv("AUDITOR_CHROMIUM", str(fake))
    page = tmp_path / "r.html"
    page.write_text("<p>hi</p>")
    start = time.monotonic()
    with pytest.raises(AuditorError, match=r"did not finish printing r\.html within 1 s"):
        print_pdf(page, tmp_path / "r.pdf", timeout=1)
    assert time.monotonic() - start < 30
    child = int(pidfile.read_text())
    for _ in range(50):  # the child (a stand-in for Chromium's renderers) is gone too
        state = subprocess.run(["ps", "-o", "stat=", "-p", str(child)], capture_output=True, text=True).stdout
        if not state.strip() or state.strip().startswith("Z"):
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        raise AssertionError("Chromium's child process outlived the timeout")


def test_an_uploads_source_is_its_own_file_name_not_a_deleted_temp_path():
    from auditor.report.model import shown_source

    assert shown_source("/tmp/auditor-upload-x1y2/my_case.npz") == "my_case.npz (uploaded)"
    assert shown_source("data/people.csv") == "data/people.csv" and shown_source("") is None
