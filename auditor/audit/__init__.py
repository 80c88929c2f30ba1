"""The audit service both front-ends (dashboard pages, CLI) drive: `AuditSession` holds one audit's
state and steps; `run_audit` drives one end to end; `localize` picks the localization that fits
the data; `tradeoff` runs baselines side by side.

Names load on first use, so a light submodule (`auditor.audit.uploads`) does not pull in the editors."""
from __future__ import annotations

import importlib

_EXPORTS = {"Localization": "localization", "localize": "localization", "AuditOutcome": "pipeline",
            "run_audit": "pipeline", "PROVENANCE_KEY": "provenance", "AuditSession": "session",
            "EditRecord": "session", "default_requirements": "session"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
