"""Step 6: the compliance report: preview, the auditor's name and notes, HTML, PDF and JSON downloads."""
from __future__ import annotations

import datetime as dt
import json
import tempfile
import urllib.parse
from pathlib import Path

import pandas as pd
import streamlit as st

from auditor.present import format_value, md_plain
from auditor.report import render_html, validate_report, write_pdf
from pages.common import SIGNOFF, in_frame, need_audit, show_error, stop

in_frame()

audit = need_audit()
st.title("6 · Report: export the audit")
st.caption("One report, three formats with the same numbers: HTML (interactive, opens offline), PDF (to file or "
           "print) and JSON (for other tools; validated against the published schema).")

c1, c2 = st.columns([2, 1])
audit.auditor_name = c1.text_input("Auditor's name", value=audit.auditor_name, key="rep_name")
date = c2.date_input("Sign-off date", value=dt.date.today(), key="rep_date")
audit.notes = st.text_area("Notes and findings", value=audit.notes, key="rep_notes",
                           placeholder="e.g. Trojan removed with one clean sample; accuracy unchanged.")
st.session_state[SIGNOFF] = {"auditor_name": audit.auditor_name, "notes": audit.notes}  # kept across model loads
if audit.tradeoff is None and audit.edited:
    st.caption("Tip: run the comparison on the **Compare** page to include the trade-off chart against baselines.")

contents = audit.report_contents()  # what the export will contain, before it is built
with st.expander("What the export will contain", expanded=True):
    st.markdown(f"- **Verdict**: {md_plain(contents['verdict'])} ({contents['requirements']} requirements, "
                f"verdicts with 95 % intervals, `{contents['verdict_mode']}` mode)\n"
                f"- **Edits**: {contents['edits']}; **side effects**: {contents['side_effects']}\n"
                f"- **Localization**: {md_plain(contents['localization'])}\n"
                f"- **Trade-off against baselines**: {contents['tradeoff']}\n"
                f"- **Groups under {contents['min_group']} rows** (left out of gaps, listed in the report): "
                f"{contents['small_groups'] or 'none'}; **warnings**: {len(contents['warnings']) or 'none'}")

key = (audit.state_key(), len(audit.edits), audit.auditor_name, audit.notes, str(date), id(audit.tradeoff),
       id(audit.localization))
cached = st.session_state.get("rep_cache")
if cached is None or cached[0] != key:
    try:
        with st.spinner("Building the report"):
            report = audit.build_report(auditor=audit.auditor_name, notes=audit.notes, date=str(date))
            doc = validate_report(report)
            cached = (key, report, doc, render_html(doc))
            st.session_state["rep_cache"] = cached
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
        stop()
_, report, doc, html = cached

verdict = doc["verdict"]
# inconclusive (an interval straddles a threshold) is a warning, as its orange "?" everywhere else; FAIL an error
box = st.success if verdict["passed"] else st.warning if verdict["status"].startswith("INCONCLUSIVE") else st.error
box(f"**Verdict: {verdict['status']}.** {verdict['summary']}")
rows = [{"requirement": r["expr"], "before": format_value(r["metric"], r["before"]["value"]),
         "before passes": "✔" if r["before"]["passed"] else "✘",
         "after": format_value(r["metric"], r["after"]["value"]) if r["after"] else "no edit",
         "after passes": ("✔" if r["after"]["passed"] else "✘") if r["after"] else ""} for r in doc["requirements"]]
st.table(pd.DataFrame(rows).set_index("requirement"))
st.markdown(f"Model sha256 before `{doc['model']['sha256_before'][:16]}…`"
            + (f", after `{doc['model']['sha256_after'][:16]}…`" if doc["model"]["sha256_after"] else ""))

stem = f"audit_{audit.model_label}_{audit.data.name}"


def pdf_bytes() -> bytes:
    with tempfile.TemporaryDirectory(prefix="auditor-pdf-") as tmp:
        return write_pdf(doc, Path(tmp) / "report.pdf").read_bytes()


def logged(ext: str) -> dict:
    """Download options that record the report in the audit log when the button is pressed."""
    return {"file_name": f"{stem}.{ext}", "on_click": audit.log_report, "args": (report, [f"{stem}.{ext}"]),
            "kwargs": {"downloaded": True}}


d1, d2, d3 = st.columns(3)
d1.download_button("Download HTML", html, mime="text/html", key="rep_html", icon=":material/download:",
                   type="primary", **logged("html"))
# The PDF is printed once per report on request and then offered as plain bytes. A deferred download
# (a callable as `data`) gets a new id on every rerun, and a click that lands while the rerun started
# by another download button is under way asks for a revoked id: the download silently never came.
pdf = st.session_state.get("rep_pdf_bytes")
if pdf is None or pdf[0] != key:
    if d2.button("Prepare PDF", key="rep_pdf_make", icon=":material/picture_as_pdf:",
                 help="Printed by headless Chromium; takes a few seconds."):
        try:
            with st.spinner("Printing the PDF with headless Chromium"):
                st.session_state["rep_pdf_bytes"] = (key, pdf_bytes())
        except Exception as exc:  # noqa: BLE001
            show_error(exc)
        else:
            st.rerun()
else:
    d2.download_button("Download PDF", pdf[1], mime="application/pdf", key="rep_pdf",
                       icon=":material/picture_as_pdf:", **logged("pdf"))
d3.download_button("Download JSON", json.dumps(doc, indent=2, sort_keys=True), mime="application/json",
                   key="rep_json", icon=":material/data_object:", **logged("json"))

st.subheader("Preview")
st.iframe(html, height=1100)
# st.iframe first asks urllib.parse whether its argument is a URL, and urlsplit keeps its last 128
# arguments and results (an lru_cache, Python 3.11+): every multi-MB report ever previewed stayed in
# the server's memory (+30-50 MB per audit). Drop those entries; they only speed up URL parsing.
urllib.parse.clear_cache()
