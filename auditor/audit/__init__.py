"""The audit service both front-ends (dashboard pages, CLI) drive: `AuditSession` holds one audit's
state and steps; `run_audit` drives one end to end; `localize` picks the localization that fits
the data; `tradeoff` runs baselines side by side."""
from .localization import Localization, localize
from .pipeline import AuditOutcome, run_audit
from .provenance import PROVENANCE_KEY
from .session import AuditSession, EditRecord, default_requirements

__all__ = ["PROVENANCE_KEY", "AuditOutcome", "AuditSession", "EditRecord", "Localization", "default_requirements",
           "localize", "run_audit"]
