"""Render a report as JSON (validated against `schema.json`), self-contained HTML, and PDF.

The HTML carries everything inline: styles, the figures' data, and plotly.js itself (as a
base64 `data:` script, so the file holds no URL at all; plotly's bundle mentions map-tile
servers it would only contact for map charts, which a report never draws). It opens with no
network. The PDF is the same HTML in print mode (static charts, fixed widths) printed by
headless Chromium.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jsonschema
from jinja2 import Environment, FileSystemLoader, select_autoescape

from .. import charts
from ..errors import AuditorError
from ..requirements import METRICS
from .model import Report

SCHEMA_PATH = Path(__file__).with_name("schema.json")
PRINT_WIDTH = 700  # px: A4 width less the page margins at 96 dpi
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--no-default-browser-check", "--hide-scrollbars", "--no-pdf-header-footer",
                  "--print-to-pdf-no-header",
                  "--run-all-compositor-stages-before-draw", "--virtual-time-budget=15000"]


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
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
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
    out["requirements"].append(("Each requirement before and after; dashed line: threshold; green: met.",
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
            out[f"edit-{i}"] = [(f"{metric} on the editor's check split after each step (red: rolled back).",
                                 charts.edit_steps_chart(e["log"], metric))]
    m = d["metrics"]
    after = m.get("after") or {}
    overall = m["before"]["overall"]
    names = [k for k, val in overall.items() if "[" not in k and val is not None and 0.0 <= val <= 1.0]
    out["metrics"].append(("Metrics in [0, 1] before and after the edit (per-attribute variants in the table).",
                           charts.metrics_chart(overall, after.get("overall"), names=names,
                                                title="Metrics before and after")))
    for attr, table in (m["before"].get("groups") or {}).items():
        first = next(iter(table.values()), {})
        metric = "selection_rate" if "selection_rate" in first else "accuracy"
        out["metrics"].append((f"{metric.replace('_', ' ').capitalize()} per group of {attr}.",
                               charts.group_chart(table, (after.get("groups") or {}).get(attr), metric, attr)))
    t = d.get("tradeoff")
    if t and t.get("rows"):
        edit = (d.get("edits") or [{}])[0].get("editor")
        out["tradeoff"].append(("Each method run from the same model with the same seed; dotted line: Pareto front; "
                                "green area: meets the thresholds; star: this audit's edit.",
                                charts.tradeoff_chart(t["rows"], t["metric"], higher_is_better=t["higher_is_better"],
                                                      threshold=t.get("threshold"),
                                                      accuracy_threshold=t.get("accuracy_threshold"),
                                                      highlight=edit, title=f"Accuracy vs {t['metric']}")))
    return out


def _chart_payload(fig, static: bool) -> str:
    if static:
        fig.update_layout(width=PRINT_WIDTH)
    text = fig.to_json()
    return text.replace("</", "<\\/")  # never closes the <script> it sits in


# ------------------------------------------------------------------------------------------------
# HTML


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def _delta(a, b) -> str:
    if a is None or b is None:
        return ""
    d = float(b) - float(a)
    return "0" if abs(d) < 5e-5 else f"{d:+.4f}"


@functools.lru_cache(maxsize=1)
def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent)), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["delta"] = _delta
    env.filters["tojson_compact"] = lambda v: json.dumps(v, sort_keys=True, default=str)
    return env


@functools.lru_cache(maxsize=1)
def _plotly_data_uri() -> str:
    from plotly.offline import get_plotlyjs

    return "data:text/javascript;base64," + base64.b64encode(get_plotlyjs().encode("utf-8")).decode("ascii")


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
    return _env().get_template("template.html").render(
        r=d, charts=charts_by_section, static=static, plotly_src=_plotly_data_uri(), metric_info=metric_info,
        config=json.dumps(config), n_charts=n, print_width=PRINT_WIDTH)


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
        cmd = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--print-to-pdf={pdf_path}",
               html_path.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AuditorError(f"Chromium did not finish printing {html_path.name} within {timeout:.0f} s") from None
        except OSError as exc:
            raise AuditorError(f"cannot run Chromium ({cmd[0]}): {exc.strerror}") from None
    if not pdf_path.exists() or pdf_path.stat().st_size < 1000 or pdf_path.read_bytes()[:5] != b"%PDF-":
        tail = " ".join((proc.stderr or "").strip().splitlines()[-2:])[:300]
        raise AuditorError(f"Chromium did not write a PDF to {pdf_path} (exit {proc.returncode}): {tail}")
    return pdf_path


def write_pdf(report: Report | dict, path: str | os.PathLike, *, timeout: float = 180) -> Path:
    """The report as PDF: the print-mode HTML (static charts) printed by headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="auditor-report-") as tmp:
        html = write_html(report, Path(tmp) / "report.html", static=True)
        return print_pdf(html, path, timeout=timeout)
