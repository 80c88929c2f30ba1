"""Compliance reports: one `Report` (`model.py`) rendered as JSON, self-contained HTML and PDF.

    >>> from auditor.report import write_html, write_pdf, write_json   # doctest: +SKIP

Reports are built by `auditor.audit` (`AuditSession.build_report`, `run_audit`); this package only
renders them and imports no editor.
"""
from .model import SCHEMA_VERSION, Report, build_report, jsonable, stable
from .render import (
                     find_chromium,
                     print_pdf,
                     render_html,
                     report_figures,
                     schema,
                     validate_report,
                     write_html,
                     write_json,
                     write_pdf,
)

__all__ = ["SCHEMA_VERSION", "Report", "build_report", "find_chromium", "jsonable",
           "print_pdf", "render_html", "report_figures", "schema", "stable",
           "validate_report", "write_html", "write_json", "write_pdf"]
