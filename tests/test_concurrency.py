"""Concurrency: several sessions editing different models at once do not interfere.

Each level is checked against the same work done one at a time:
- library: every registered editor at once in threads, each on its own copy of one cached
  (shared, read-only) sample bundle, as the dashboard's `st.cache_resource` shares them;
- sessions: `AuditSession`s sharing cached bundles, editing and reverting in threads;
- dashboard: three AppTest sessions side by side (AppTest itself is not thread-safe: in threads
  it fails inside Streamlit with "Runtime hasn't been created"), and three real users at once:
  a live server and one browser context each, their loads and edits sent back to back.

torch's intra-op thread count is per OS thread and sets the float reduction order: results are
compared at the thread count of the run they are compared with.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from auditor.backend import seed_everything, seeded_global_rng
from auditor.editors import EDITORS
from tests.conftest import ROOT, SAMPLES
from tests.editor_cases import (
    case,
    data_digest,
    editor_names,
    file_digest,
    reference_run,
    sample,
)

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


def test_seeded_initialisations_in_threads_match_one_at_a_time():
    """Editors that build a fresh network (retrain-k-features, the reweighed retrain, ENN from scratch,
    the learned editors' training) draw its initialisation from torch's global generator under
    `seeded_global_rng`: another thread seeding or drawing through it in between changed the result."""
    from auditor.models.architectures import build_architecture

    arch = {"name": "mlp", "in_features": 64, "hidden": [64, 32], "num_classes": 10}

    def build(seed: int) -> torch.Tensor:
        with seeded_global_rng(seed):
            model = build_architecture(arch)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    alone = {seed: build(seed) for seed in range(4)}
    go = threading.Event()

    def worker(seed: int) -> bool:
        go.wait(30)
        return all(torch.equal(build(seed), alone[seed]) for _ in range(40))

    before = torch.get_rng_state()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(worker, seed) for seed in range(4)]
        go.set()
        assert all(f.result() for f in futures)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is put back


def test_all_editors_at_once_on_shared_bundles_match_one_at_a_time():
    names = _supported()
    assert len(names) >= 3, names
    shared = {n: (reference_run(n).bundle, reference_run(n).data) for n in names}
    before = {n: (b.sha256, data_digest(d)) for n, (b, d) in shared.items()}
    go = threading.Event()

    def edit(name: str) -> str:
        editor, bundle, data, reqs, fixes = case(name)  # the same shared bundle and data objects
        # torch's intra-op thread count is per OS thread and sets the float reduction order: use the
        # reference run's, so that any difference left is interference, not rounding
        torch.set_num_threads(reference_run(name).threads)
        go.wait(60)  # the first WORKERS start together
        return editor.edit(bundle, data, reqs, device="cpu", fixes=fixes).bundle.sha256

    seed_everything(0)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(edit, n) for n in names]
        go.set()
        got = {n: f.result() for n, f in zip(names, futures)}
    wrong = {n: (got[n][:12], reference_run(n).result.bundle.sha256[:12]) for n in names
             if got[n] != reference_run(n).result.bundle.sha256}
    assert not wrong, f"editors whose result changed when run alongside others: {wrong}"
    assert {n: (b.sha256, data_digest(d)) for n, (b, d) in shared.items()} == before


def test_sessions_sharing_cached_models_edit_and_revert_independently():
    from auditor.audit import AuditSession
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


APP_JOBS = [("compas_mlp", "compas", "magnitude-pruning"), ("digits_cnn_trojan", "digits-trojan", "rank-one"),
            ("digits_cnn_spurious", "digits-spurious", "static-rank-one-last")]


def _expected(jobs) -> dict[str, set[str]]:
    """model -> sha256 of the edit done through the library, one at a time, with 1 and with 2 intra-op
    threads (a server thread may run with either; they can differ in the last bits)."""
    from auditor.audit import AuditSession
    out: dict[str, set[str]] = {}
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for model, data_name, editor in jobs:
                s = AuditSession(*sample(model, data_name))
                s.run_edit(editor, device="cpu")
                out.setdefault(model, set()).add(s.current.sha256)
    finally:
        torch.set_num_threads(old)
    return out


@pytest.mark.usefixtures("navigation_mode")
def test_dashboard_sessions_side_by_side_keep_their_own_models():
    """Three AppTest sessions (one thread: AppTest itself is not thread-safe), steps interleaved:
    each ends with its own edit, and the cached sample models they share never change."""
    from streamlit.testing.v1 import AppTest
    jobs = [j for j in APP_JOBS if j[2] in EDITORS]
    expected = _expected(jobs)
    apps = []
    for model, _, _ in jobs:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.run()
        at.selectbox(key="load_sample").set_value(model).run()
        apps.append(at)
    for at in apps:
        at.button(key="load_go").click().run()
    for at, (_, _, editor) in zip(apps, jobs):
        at.switch_page("pages/edit.py").run()
        at.selectbox(key="edit_editor").set_value(editor).run()
    for at in apps:
        at.button(key="edit_run").click().run()
    for at, (model, data_name, editor) in zip(apps, jobs):
        assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
        audit = at.session_state["audit"]
        assert audit.model_label == model and len(audit.edits) == 1 and audit.edits[0].editor == editor
        assert audit.current.sha256 in expected[model], f"{model}/{editor}: the dashboard's edit differs"
        assert audit.pristine.sha256 == sample(model, data_name)[0].sha256
    from pages.common import sample_model
    for model, data_name, _ in jobs:
        assert sample_model(model).sha256 == sample(model, data_name)[0].sha256


# --- real parallel sessions: a live server and one browser context per user ------------------------
CHROMIUM = os.environ.get("AUDITOR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def live_server():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "AUDITOR_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"streamlit exited: {log.read()[-2000:].decode(errors='replace')}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _settle(page, timeout: float = 180) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function("""() => {
        const app = document.querySelector('[data-test-script-state]');
        if (!app || app.getAttribute('data-test-script-state') === 'running') return false;
        return !document.querySelector('[data-testid="stSkeleton"], [data-stale="true"]'); }""",
                           timeout=timeout * 1000)
    page.wait_for_timeout(300)


@pytest.mark.browser
@pytest.mark.slow
def test_parallel_browser_sessions_editing_different_models(live_server):
    """Three users at once on one server (one browser context each): their loads and their edits
    are sent back to back, so the server runs them concurrently; each page shows its own edited
    model (sha256), equal to the library's edit done alone."""
    from playwright.sync_api import sync_playwright
    jobs = [j for j in APP_JOBS if j[2] in EDITORS]
    expected = _expected(jobs)
    files = {m: file_digest(SAMPLES / f"{m}.safetensors") for m, _, _ in jobs}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                     for _ in jobs]
            for page, (model, _, _) in zip(pages, jobs):
                page.goto(live_server)
                page.locator("[data-testid=stSelectbox]", has_text="Sample model").click(timeout=180_000)
                page.get_by_role("option", name=re.compile(f"^{model}: ")).click()
                _settle(page)
            for page in pages:  # all three loads at once
                page.get_by_role("button", name="Load model and data").click()
            for page, (model, _, _) in zip(pages, jobs):
                page.get_by_text(f"Loaded {model}").wait_for(timeout=180_000)
                _settle(page)
                page.locator("[data-testid=stSidebarNavLink]", has_text="Edit").click()
                _settle(page)
            for page, (_, _, editor) in zip(pages, jobs):
                page.locator("[data-testid=stSelectbox]", has_text="Editor").click()
                page.get_by_role("option", name=re.compile(f"^{re.escape(editor)} \\(")).click()
                _settle(page)
            for page, (_, _, editor) in zip(pages, jobs):  # all three edits at once
                page.get_by_role("button", name=f"Run {editor}").click()
            for page, (model, _, editor) in zip(pages, jobs):
                page.get_by_text(f"Edit 1: {editor}").wait_for(timeout=300_000)
                _settle(page)
                errors = page.locator("[data-testid=stAlertContentError], [data-testid=stException]").all_inner_texts()
                assert not errors, errors
                text = page.locator("[data-testid=stMain]").inner_text()
                shown = re.search(r"model sha256 ([0-9a-f]{12})", text)  # the page shows 12 hex digits
                assert shown, text[-500:]
                assert shown.group(1) in {e[:12] for e in expected[model]}, \
                    f"{model}/{editor}: the session's edit differs from the library's"
        finally:
            browser.close()
    assert {m: file_digest(SAMPLES / f"{m}.safetensors") for m, _, _ in jobs} == files


def test_tracing_a_model_never_breaks_a_forward_in_another_thread():
    """torch.fx patches `nn.Module.__call__` for the whole process while it traces (the dynamic
    rank-one editor splits models with it): a model run in another thread meanwhile must not notice."""
    from auditor.layers import split_model
    from auditor.models import build_architecture

    arch = {"name": "cnn", "in_channels": 1, "image_size": 8, "channels": [4, 8], "hidden": 16, "num_classes": 10}
    traced, other = build_architecture(arch).eval(), build_architecture(arch).eval()
    errors, stop = [], threading.Event()

    def run():
        x = torch.randn(2, 1, 8, 8)
        with torch.no_grad():
            while not stop.is_set():
                try:
                    other(x)
                except Exception as exc:  # noqa: BLE001 - collected, asserted below
                    errors.append(exc)
                    return

    worker = threading.Thread(target=run)
    worker.start()
    try:
        for _ in range(100):
            assert split_model(traced, ["conv2", "fc1"]) is not None
    finally:
        stop.set()
        worker.join()
    assert not errors, errors[0]
