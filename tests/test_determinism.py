"""Determinism: the same inputs and seed give the same JSON of a whole audit report.

That EVERY registered editor gives the same edited weights, layers and log for the same settings
and seed (bit for bit, in one process) is checked by `auditor.editors.testing.check_editor`, run
over the registry in tests/test_editor_contract.py."""
from __future__ import annotations

from auditor.backend import seed_everything
from auditor.editors import EDITORS
from tests.editor_cases import fast_settings, sample


def test_report_numbers_are_the_same_twice():
    """A whole audit (evaluate, localize, edit, report JSON) twice: the same JSON but for times."""
    from auditor.audit import AuditSession
    bundle, data = sample("digits_cnn_trojan", "digits-trojan")
    name = "dynamic-rank-one" if "dynamic-rank-one" in EDITORS else "magnitude-pruning"
    reports = []
    for _ in range(2):
        seed_everything(0)
        s = AuditSession(bundle, data)
        s.localize(samples=1)
        s.run_edit(name, fast_settings(EDITORS[name]))
        reports.append(_strip(s.build_report(date="2026-01-01").to_dict()))
    assert reports[0] == reports[1]


VOLATILE = ("seconds", "time", "elapsed", "created", "generated", "timestamp", "duration", "wall")


def _strip(obj):
    """The report without wall-clock fields (their values legitimately differ run to run)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not any(w in str(k).lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj
