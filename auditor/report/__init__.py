"""Compliance reports: one `Report` (`model.py`) rendered as JSON, self-contained HTML and PDF.

    >>> from auditor.report import run_audit, write_html, write_pdf, write_json   # doctest: +SKIP
"""
from .audit import AuditOutcome, localize_for_report, run_audit
from .model import SCHEMA_VERSION, Report, build_report, jsonable, stable
from .render import (find_chromium, print_pdf, render_html, report_figures, schema, validate_report, write_html,
                     write_json, write_pdf)

__all__ = ["SCHEMA_VERSION", "AuditOutcome", "Report", "build_report", "find_chromium", "jsonable",
           "localize_for_report", "print_pdf", "render_html", "report_figures", "run_audit", "schema", "stable",
           "validate_report", "write_html", "write_json", "write_pdf"]
