"""What a long-running dashboard process keeps between audits stays bounded.

Sizes of the caches, not memory figures: `benchmarks/dashboard_memory.py` measures the resident
memory over several audits (a report's HTML preview used to stay in `urllib.parse`'s cache, about
+30-50 MB per audit).
"""
from __future__ import annotations

import gc
import urllib.parse

import pytest
import torch

from auditor import layers
from auditor.audit import AuditSession
from tests.fixtures import tabular_data, tiny_mlp_bundle
from tests.test_app import app, trojan, trojan_edited  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("navigation_mode")


def _large_parsed_urls(limit: int = 1_000_000) -> int:
    """How many urllib.parse results alive hold a string longer than `limit` characters."""
    gc.collect()
    return sum(1 for o in gc.get_objects()
               if type(o) in (urllib.parse.SplitResult, urllib.parse.ParseResult)
               and sum(len(part or "") for part in o) > limit)


def test_report_previews_are_not_kept_after_the_page(trojan_edited):  # noqa: F811
    at = app(trojan_edited, "report")
    html = at.session_state["rep_cache"][3]
    assert len(html) > 1_000_000  # a self-contained report: the preview is large
    at.text_area(key="rep_notes").input("second version of the report").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["rep_cache"][3] != html  # a new report was rendered and previewed
    assert _large_parsed_urls() == 0


def _tiny_session() -> AuditSession:
    rng = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=rng).numpy()
    y = (X[:, 0] > 0).astype(int)
    data = tabular_data(X, y, {"sex": ["a", "b"] * 20})
    return AuditSession(tiny_mlp_bundle(), data, ["accuracy >= 0.5"])


def test_session_evaluation_cache_is_bounded():
    audit = _tiny_session()
    for i in range(80):
        audit.set_threshold(0, i / 100)
        audit.evaluate()
        assert len(audit._evals) <= 33


def test_second_moment_caches_are_bounded():
    bundle = tiny_mlp_bundle(in_features=3, hidden=(4,))
    layer = next(name for name, m in bundle.model.named_modules() if isinstance(m, torch.nn.Linear))
    layers.clear_moment_cache()
    try:
        for i in range(layers._MOMENT_CACHE_SIZE + 20):  # a new data fingerprint each time
            C = layers.second_moment(bundle.model, layer, torch.full((4, 3), float(i)))
            layers.inverse_moment(C, 0.1)
            assert len(layers._MOMENTS) <= layers._MOMENT_CACHE_SIZE
            assert len(layers._INVERSES) <= layers._MOMENT_CACHE_SIZE
    finally:
        layers.clear_moment_cache()
