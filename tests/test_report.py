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
from auditor.errors import AuditorError
from auditor.audit import run_audit
from auditor.report import Report, find_chromium, render_html, stable, validate_report, write_html, write_json, write_pdf
from auditor.report.render import _chart_payload
from auditor.audit.tradeoff import baselines_for, compare
from tests.conftest import SAMPLES, _sample

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
    assert d["metrics"]["after"]["overall"]["attack_success_rate"] == pytest.approx(after.metrics["attack_success_rate"])
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
    assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
    assert "<link" not in html.lower()
    srcs = re.findall(r'<script[^>]*\ssrc="([^"]{0,40})', html)
    assert srcs and all(s.startswith("data:text/javascript;base64,") for s in srcs)  # plotly.js inline
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
                                  ".filter(d => d.querySelector('svg.main-svg') && d.querySelector('.trace, .hm')).length")
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
            charts.edit_steps_chart([{"step": 1, "accepted": True, "requirements": [{"metric": "m", "value": 1}]}], "m")]
    assert all(isinstance(f, go.Figure) and f.data for f in figs)
    assert list(figs[1].data[0].x) == ["accuracy"]  # counts are left out of a [0, 1] chart
