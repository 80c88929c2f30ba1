"""Render a report as JSON (validated against `schema.json`), self-contained HTML, and PDF.

The HTML carries everything inline: styles, the figures' data, and plotly.js itself, once, as a
plain <script>: the partial "cartesian" bundle vendored in `vendor/` (bar, scatter, heatmap and a
few more trace types; 1.5 MB instead of 4.8 MB), or the full bundle of the `plotly` package when a
figure needs a trace type outside it. The charts stay interactive and the page opens with no
network (URLs that appear inside the bundle's own code and licence comments are never fetched: the
report sets `topojsonURL` empty and draws no map). The PDF is the same HTML in print mode (static
charts, fixed widths) printed by headless Chromium.

Numbers are shown as people read them (`auditor.present`: fractions in percent, gaps in percentage
points, counts as integers); the JSON keeps them raw.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import jsonschema
from jinja2 import Environment, FileSystemLoader, select_autoescape

from .. import charts, present
from ..errors import AuditorError
from ..requirements import METRICS
from .evidence import headline_change, regulatory_evidence
from .model import Report

SCHEMA_PATH = Path(__file__).with_name("schema.json")
VENDORED_PLOTLY = Path(__file__).parent / "vendor" / "plotly-cartesian.min.js"
# The trace types in the vendored bundle (plotly.js-cartesian-dist-min 4.1.1, see vendor/README.md)
VENDORED_TRACES = frozenset({"bar", "box", "contour", "heatmap", "histogram", "histogram2d", "histogram2dcontour",
                             "image", "pie", "scatter", "scatterternary", "violin"})
PRINT_WIDTH = 700  # px: A4 width less the page margins at 96 dpi
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--no-default-browser-check", "--hide-scrollbars", "--no-pdf-header-footer",
                  "--print-to-pdf-no-header",
                  "--run-all-compositor-stages-before-draw", "--virtual-time-budget=15000",
                  # no network while printing, whatever the report holds: every request (loopback too) goes to
                  # a proxy that is not there, and no name resolves; the page also forbids it (its CSP)
                  "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-remote-fonts",
                  "--no-pings", "--disable-domain-reliability", "--dns-prefetch-disable"]


# ------------------------------------------------------------------------------------------------
# JSON


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The report's JSON Schema (`auditor/report/schema.json`)."""
    return json.loads(SCHEMA_PATH.read_text())


def _as_dict(report: Report | dict) -> dict:
    return report.to_dict() if isinstance(report, Report) else report


def validate_report(report: Report | dict) -> dict:
    """The report as a dict, checked against the schema; an AuditorError names the first problem."""
    d = _as_dict(report)
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(d), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise AuditorError(f"report does not match its schema at {where}: {e.message[:200]}")
    return d


def _write(path: str | os.PathLike, text: str) -> Path:
    from ..atomic import write_file

    path = Path(path)
    try:  # an unpredictable O_EXCL temporary name, renamed over `path`: never follows a planted link
        write_file(path, text)
    except OSError as exc:
        raise AuditorError(f"cannot write {path}: {exc.strerror}") from None
    return path


def write_json(report: Report | dict, path: str | os.PathLike) -> Path:
    """Validate and write the JSON report."""
    return _write(path, json.dumps(validate_report(report), indent=2, sort_keys=True, allow_nan=False) + "\n")


# ------------------------------------------------------------------------------------------------
# Figures


def report_figures(d: dict) -> dict[str, list[tuple[str, object]]]:
    """The report's charts by section: {section: [(caption, go.Figure)]}, all drawn from the dict
    (the charts of the i-th edit under `edit-i`)."""
    out: dict[str, list] = {"requirements": [], "localization": [], "metrics": [], "tradeoff": []}
    out["requirements"].append(("Each requirement in words, its value before and after the edit (with the verdict "
                                "on the bar's label), against the threshold (dashed line); green: met, red: not met"
                                + (", amber: inconclusive (the 95 % interval straddles the threshold)"
                                   if any(_verdict(q.get(k) or {}) == "inconclusive" for q in d["requirements"]
                                          for k in ("before", "after")) else "") + ".",
                                charts.requirements_chart(d["requirements"])))
    loc = d.get("localization") or {}
    if loc.get("layers"):
        out["localization"].append((f"Layer ranking: {loc.get('layer_method') or ''}.",
                                    charts.layer_ranking_chart(loc["layers"], title="Layer scores (localization)")))
    if loc.get("images"):
        out["localization"].append(("Clean input, its corrupted twin, and the integrated-gradients attribution "
                                    "of the corrupted prediction (red: pushes towards it).",
                                    charts.image_attribution_chart(loc["images"], title="Pixel attributions")))
    if loc.get("features"):
        out["localization"].append(("Mean absolute integrated-gradients attribution per raw feature "
                                    "(one-hot inputs summed back to their feature).",
                                    charts.feature_attribution_chart(loc["features"], title="Feature importance")))
    metric = next((r["metric"] for r in d["requirements"] if r["metric"] not in ("accuracy",)), None)
    for i, e in enumerate(d.get("edits") or []):
        steps = [x for s in e.get("log") or [] for x in s.get("requirements") or []]
        if metric and any(x.get("metric") == metric for x in steps):
            out[f"edit-{i}"] = [(f"{present.metric_label(metric)} on the editor's check split after each step "
                                 "(red: rolled back).",
                                 charts.edit_steps_chart(e["log"], metric))]
    m = d["metrics"]
    after = m.get("after") or {}
    overall = m["before"]["overall"]
    names = [k for k, val in overall.items() if "[" not in k and val is not None and 0.0 <= val <= 1.0]
    out["metrics"].append(("Rates in percent, gaps in percentage points, before and after the edit "
                           "(per-attribute variants in the table).",
                           charts.metrics_chart(overall, after.get("overall"), names=names,
                                                title="Metrics before and after")))
    for attr, table in (m["before"].get("groups") or {}).items():
        first = next(iter(table.values()), {})
        metric = "selection_rate" if "selection_rate" in first else "accuracy"
        out["metrics"].append((f"{metric.replace('_', ' ').capitalize()} per group of {attr}, in percent.",
                               charts.group_chart(table, (after.get("groups") or {}).get(attr), metric, attr)))
    t = d.get("tradeoff")
    if t and t.get("rows"):
        edit = t.get("edit") or ((d.get("edits") or [{}])[-1].get("editor"))
        words = present.metric_label(t["metric"]).lower()
        out["tradeoff"].append(("Each method run from the same model with the same seed; dotted line: Pareto front; "
                                "green area: meets the thresholds; star: this audit's edit.",
                                charts.tradeoff_chart(t["rows"], t["metric"], higher_is_better=t["higher_is_better"],
                                                      threshold=t.get("threshold"),
                                                      accuracy_threshold=t.get("accuracy_threshold"),
                                                      highlight=edit, title=f"Accuracy vs {words}")))
    return out


def _chart_payload(fig, static: bool) -> str:
    if static:
        fig.update_layout(width=PRINT_WIDTH)
    text = fig.to_json()
    return text.replace("</", "<\\/")  # never closes the <script> it sits in


# ------------------------------------------------------------------------------------------------
# HTML


def _num(value, digits: int = 4) -> str:
    """A plain number without a unit (norms, scores, seconds)."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return present.format_number(value, digits)


def _metric(value, key: str) -> str:
    """A metric's value in its unit (`present.format_value`): 0.0099 -> `0.99 %`."""
    return "–" if value is None else present.format_value(key, value)


def _delta(a, b, key: str = "accuracy") -> str:
    """The change from a to b in the metric's unit (percentage points for rates)."""
    if a is None or b is None:
        return ""
    d = float(b) - float(a)
    return "±0" if abs(d) < 5e-5 else present.format_change(key, d)


def _verdict(res) -> str:
    """`pass`, `fail` or `inconclusive` for a requirement's result (its `verdict` when present)."""
    if not res:
        return ""
    v = str(res.get("verdict") or "").lower()
    return v if v in ("pass", "fail", "inconclusive") else ("pass" if res.get("passed") else "fail")


def _interval(res, key: str) -> str:
    """`95 % CI 0.40 – 1.90 %` when a result or interval dict has `low`/`high`, else empty."""
    if not isinstance(res, dict) or res.get("low") is None or res.get("high") is None:
        return ""
    text = "95 % CI " + present.format_interval(key, res["low"], res["high"])
    return text + (f", n = {int(res['n']):,}" if res.get("n") is not None else "")


def _log_value(value, key: str) -> str:
    """One field of an editor's log: metric values in their unit, accuracy drops in pp."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if key in METRICS and METRICS[key].unit != "count":
        return present.format_value(key, value)
    if key.endswith(("_drop", "_change", "_gap_change")):
        return present.format_change("accuracy", value)
    return _num(value)


SECTION_NAMES = {"verdict": "verdict", "requirements": "1 requirements", "identity": "2 model and data",
                 "localization": "3 localization", "edits": "4 edit", "metrics": "5 metrics", "tradeoff": "6 trade-off",
                 "evidence": "7 evidence", "environment": "8 environment", "signoff": "9 sign-off"}


def _side_effect(effect) -> str:
    """One side effect in words (`present.side_effect_sentence` when the effect has its fields)."""
    if not isinstance(effect, dict):
        return str(effect)
    sentence = getattr(present, "side_effect_sentence", None)
    try:
        return sentence(effect) if sentence else str(effect)
    except (KeyError, TypeError, ValueError):
        k = effect.get("metric", "")
        return f"{present.metric_label(k)} {_metric(effect.get('before'), k)} → {_metric(effect.get('after'), k)}"


def _change_ci(key: str, low, high) -> str:
    if low is None or high is None:
        return ""
    fn = getattr(present, "format_change_interval", None)
    if fn:
        return fn(key, low, high)
    return f"95 % CI {present.format_change(key, low, '')} to {present.format_change(key, high, '')}"


@functools.lru_cache(maxsize=1)
def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["metric"] = _metric
    env.filters["delta"] = _delta
    env.filters["pct"] = present.format_percent
    env.filters["group_value"] = lambda value, column: present.format_group_value(column, value)
    env.filters["verdict"] = _verdict
    env.filters["failure"] = present.failure_words
    env.filters["interval"] = _interval
    env.filters["log_value"] = _log_value
    env.globals.update(section_names=SECTION_NAMES, side_effect=_side_effect, change_ci=_change_ci,
                       weight_change=headline_change)
    env.globals.update(label=present.metric_label, sentence=present.requirement_sentence,
                       threshold=present.format_threshold, change_size=present.change_size_text,
                       meaning=present.metric_help)
    env.filters["tojson_compact"] = lambda v: json.dumps(v, sort_keys=True, default=str)
    return env


@functools.lru_cache(maxsize=2)
def plotly_js(full: bool = False) -> str:
    """plotly.js to inline: the vendored partial bundle, or (`full`) the `plotly` package's own.
    Made safe to sit inside a <script> element."""
    if full or not VENDORED_PLOTLY.exists():
        from plotly.offline import get_plotlyjs

        text = get_plotlyjs()
    else:
        text = VENDORED_PLOTLY.read_text(encoding="utf-8")
    return text.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def trace_types(figures: dict) -> set[str]:
    """Every trace type drawn by the report's figures."""
    return {tr.type for items in figures.values() for _, fig in items for tr in fig.data}


def render_html(report: Report | dict, *, static: bool = False) -> str:
    """The report as one self-contained HTML page (`static`: print mode for the PDF)."""
    d = _as_dict(report)
    figures = report_figures(d)
    charts_by_section, n = {}, 0
    for section, items in figures.items():
        charts_by_section[section] = []
        for caption, fig in items:
            n += 1
            charts_by_section[section].append({"id": f"chart-{n}", "caption": caption,
                                               "json": _chart_payload(fig, static)})
    metric_info = {k: {"higher_is_better": v.higher_is_better, "description": v.description}
                   for k, v in METRICS.items()}
    config = {"displaylogo": False, "responsive": not static, "staticPlot": static, "topojsonURL": "",
              "showLink": False, "showSendToCloud": False, "showEditInChartStudio": False}
    if static:
        config["displayModeBar"] = False
    full = not trace_types(figures) <= VENDORED_TRACES
    return _env().get_template("template.html").render(
        r=d, charts=charts_by_section, static=static, plotly_js=plotly_js(full), metric_info=metric_info,
        config=json.dumps(config), n_charts=n, print_width=PRINT_WIDTH, evidence=regulatory_evidence(d))


def write_html(report: Report | dict, path: str | os.PathLike, *, static: bool = False) -> Path:
    return _write(path, render_html(report, static=static))


# ------------------------------------------------------------------------------------------------
# PDF


def find_chromium() -> str:
    """Path of a Chromium (or Chrome) binary: `$AUDITOR_CHROMIUM`, else the first on PATH."""
    env = os.environ.get("AUDITOR_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AuditorError("writing a PDF needs Chromium: install it (Debian/Ubuntu: apt-get install chromium) "
                       "or set AUDITOR_CHROMIUM to a Chrome/Chromium binary")


def print_pdf(html_path: str | os.PathLike, pdf_path: str | os.PathLike, *, timeout: float = 180) -> Path:
    """Print an HTML file to PDF with headless Chromium (charts drawn before printing)."""
    html_path, pdf_path = Path(html_path).resolve(), Path(pdf_path).resolve()
    pdf_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="auditor-chromium-") as profile:
        # printed from a private copy in an otherwise empty folder: a path in the report reaches no other file
        page = Path(profile) / "page" / "report.html"
        page.parent.mkdir()
        shutil.copyfile(html_path, page)
        cmd = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}/profile", f"--print-to-pdf={pdf_path}",
               page.as_uri()]
        proc = _run_chromium(cmd, timeout, html_path.name)
    if not pdf_path.exists() or pdf_path.stat().st_size < 1000 or pdf_path.read_bytes()[:5] != b"%PDF-":
        tail = " ".join((proc.stderr or "").strip().splitlines()[-2:])[:300]
        raise AuditorError(f"Chromium did not write a PDF to {pdf_path} (exit {proc.returncode}): {tail}")
    return pdf_path


def _run_chromium(cmd: list[str], timeout: float, name: str) -> subprocess.CompletedProcess:
    """Run Chromium in its own process group; on a timeout the whole group (renderers too) is killed."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError as exc:
        raise AuditorError(f"cannot run Chromium ({cmd[0]}): {exc.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AuditorError(f"Chromium did not finish printing {name} within {timeout:.0f} s") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def write_pdf(report: Report | dict, path: str | os.PathLike, *, timeout: float = 180) -> Path:
    """The report as PDF: the print-mode HTML (static charts) printed by headless Chromium."""
    from ..atomic import move_file

    with tempfile.TemporaryDirectory(prefix="auditor-report-") as tmp:
        html = write_html(report, Path(tmp) / "report.html", static=True)
        pdf = print_pdf(html, Path(tmp) / "report.pdf", timeout=timeout)  # Chromium writes in a private folder
        try:
            return move_file(pdf, path).resolve()
        except OSError as exc:
            raise AuditorError(f"cannot write {path}: {exc.strerror}") from None
