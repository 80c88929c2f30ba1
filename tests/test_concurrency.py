"""Concurrency: several sessions editing different models at once do not interfere.

Three levels, each against the results of the same work done one at a time:
- library: every registered editor at once in threads, each on its own copy of one cached
  (shared, read-only) sample bundle, as the dashboard's `st.cache_resource` shares them;
- sessions: `AuditSession`s sharing cached bundles, editing and reverting in threads;
- dashboard: Streamlit AppTest sessions in threads, each loading a different sample model and
  running an edit through the Edit page.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from auditor.backend import seed_everything
from auditor.editors import EDITORS
from tests.conftest import ROOT
from tests.editor_cases import case, data_digest, editor_names, navigation_mode, reference_run, sample  # noqa: F401

WORKERS = 4


def _supported() -> list[str]:
    names = []
    for name in editor_names():
        try:
            run = reference_run(name)
        except pytest.skip.Exception:
            continue
        if not run.refused:
            names.append(name)
    return names


def test_all_editors_at_once_on_shared_bundles_match_one_at_a_time():
    names = _supported()
    assert len(names) >= 3, names
    shared = {n: (reference_run(n).bundle, reference_run(n).data) for n in names}
    before = {n: (b.sha256, data_digest(d)) for n, (b, d) in shared.items()}
    barrier = threading.Barrier(min(WORKERS, len(names)), timeout=120)

    def edit(name: str) -> str:
        editor, bundle, data, reqs, fixes = case(name)  # the same shared bundle and data objects
        try:
            barrier.wait()  # start together
        except threading.BrokenBarrierError:
            pass
        return editor.edit(bundle, data, reqs, device="cpu", fixes=fixes).bundle.sha256

    seed_everything(0)
    with ThreadPoolExecutor(WORKERS) as pool:
        got = dict(zip(names, pool.map(edit, names)))
    wrong = {n: (got[n][:12], reference_run(n).result.bundle.sha256[:12]) for n in names
             if got[n] != reference_run(n).result.bundle.sha256}
    assert not wrong, f"editors whose result changed when run alongside others: {wrong}"
    assert {n: (b.sha256, data_digest(d)) for n, (b, d) in shared.items()} == before


def test_sessions_sharing_cached_models_edit_and_revert_independently():
    from auditor.session import AuditSession
    jobs = [("digits_cnn_trojan", "digits-trojan", "rank-one", {"samples": 1}),
            ("digits_cnn_trojan", "digits-trojan", "magnitude-pruning", {"sparsity": 0.3}),
            ("compas_mlp", "compas", "magnitude-pruning", {"sparsity": 0.6}),
            ("digits_cnn_spurious", "digits-spurious", "static-rank-one-last", {"samples": 1})]
    jobs = [j for j in jobs if j[2] in EDITORS]

    def one_session(job):
        model, data_name, editor, settings = job
        bundle, data = sample(model, data_name)
        s = AuditSession(bundle, data)
        record = s.run_edit(editor, settings, device="cpu")
        metrics = dict(record.metrics_after)
        edited = s.current.sha256
        s.revert(0)
        return edited, metrics, s.current.sha256

    expected = [one_session(j) for j in jobs]
    pristine = {(m, d): sample(m, d)[0].sha256 for m, d, _, _ in jobs}
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(one_session, jobs * 2))
    assert got == expected * 2
    assert all(e[2] == pristine[(j[0], j[1])] for e, j in zip(expected, jobs))
    assert {(m, d): sample(m, d)[0].sha256 for m, d, _, _ in jobs} == pristine


APP_JOBS = [("compas_mlp", "magnitude-pruning"), ("digits_cnn_trojan", "rank-one"),
            ("digits_cnn_spurious", "static-rank-one-last")]


def _dashboard_session(model: str, editor: str) -> tuple[str, str, list]:
    """One browser session: load a sample on the Load page, run `editor` on the Edit page."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.selectbox(key="load_sample").set_value(model).run()
    at.button(key="load_go").click().run()
    at.switch_page("pages/edit.py").run()
    at.selectbox(key="edit_editor").set_value(editor).run()
    at.button(key="edit_run").click().run()
    audit = at.session_state["audit"]
    problems = [e.value for e in at.exception] + [e.value for e in at.error]
    return audit.current.sha256, audit.pristine.sha256, problems


def test_dashboard_sessions_in_parallel_do_not_interfere(navigation_mode):
    from auditor.session import AuditSession
    jobs = [j for j in APP_JOBS if j[1] in EDITORS]
    expected = []
    for model, editor in jobs:  # the same edit through the library, one at a time
        from auditor.session import default_requirements  # noqa: F401
        bundle, data = sample(model, {"compas_mlp": "compas", "digits_cnn_trojan": "digits-trojan",
                                      "digits_cnn_spurious": "digits-spurious"}[model])
        s = AuditSession(bundle, data)
        s.run_edit(editor, device="cpu")
        expected.append((s.current.sha256, bundle.sha256, []))
    with ThreadPoolExecutor(len(jobs)) as pool:
        got = list(pool.map(lambda j: _dashboard_session(*j), jobs))
    for (model, editor), g, e in zip(jobs, got, expected):
        assert not g[2], f"{model}/{editor}: {g[2]}"
        assert g[:2] == e[:2], f"{model}/{editor}: the dashboard's edit differs from the library's"
    # the cached sample models every session started from are unchanged
    from pages.common import sample_model
    for (model, _), e in zip(jobs, expected):
        assert sample_model(model).sha256 == e[1]
