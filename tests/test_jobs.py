"""Background jobs (`auditor.jobs`) and the dashboard's "train a learned editor for this model": the job
runs in a process of its own, reports progress, can be cancelled, and when it is done the Edit page offers
the learned editor for the uploaded model."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from auditor import jobs
from tests.test_user_population import isolate_folders, load_case, shared_case, shared_population

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return shared_case(tmp_path_factory)


@pytest.fixture(scope="module")
def population(case, tmp_path_factory):
    return shared_population(case, tmp_path_factory)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    return isolate_folders(tmp_path, monkeypatch)


@pytest.fixture
def places(folders, monkeypatch, population):
    """The same, with the shared population of the user's models."""
    monkeypatch.setenv("AUDITOR_ZOO_DIR", str(population["zoo"]))
    return folders


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow
def test_a_job_reports_progress_and_is_cancelled_with_its_processes(population, places):
    job = jobs.start_job("train-editor", {"task": population["task"], "requirement": "demographic_parity",
                                          "steps": 100000, "minutes": 30, "models_per_step": 2})
    deadline = time.monotonic() + 120
    while (s := job.status())["state"] == "running" and "step" not in s["message"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert s["state"] == "running" and s["message"].startswith("step ") and "s left" in s["message"], s
    assert 0.4 <= s["fraction"] < 1  # the population was built already: training has begun
    pid = s["pid"]
    assert _alive(pid)
    assert job.cancel()["state"] == "cancelled"
    assert not _alive(pid) and jobs.get_job(job.id).status()["state"] == "cancelled"
    assert not list((places / "editors").iterdir())  # no editor written


def test_a_failing_job_says_why(folders):
    """The job's own entry point, run here (niceness 0): the error lands in its status, in one line."""
    folder = folders / "jobs" / "train-editor-failing"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"kind": "train-editor", "niceness": 0, "created": time.time(),
                                                 "params": {"task": "user-000000000000"}}))
    assert jobs._run(folder) == 1
    s = jobs.get_job(folder.name).status()
    assert s["state"] == "failed" and "no user population 'user-000000000000'" in s["error"], s
    assert "auditor zoo build --data" in s["error"]
    with pytest.raises(Exception, match="unknown job kind"):
        jobs.start_job("mine-bitcoin", {})


def test_old_finished_jobs_are_removed_and_running_ones_kept(folders):
    now = time.time()
    for name, state, age_days in (("old-done", "done", 8), ("old-failed", "failed", 30), ("new-done", "done", 1),
                                  ("old-running", "running", 9)):
        folder = folders / "jobs" / name
        folder.mkdir()
        (folder / "job.json").write_text(json.dumps({"kind": "train-editor", "created": now - age_days * 86400}))
        status = {"state": state, "updated": now - age_days * 86400}
        if state == "running":
            status["pid"] = os.getpid()  # alive: this test's process
        (folder / "status.json").write_text(json.dumps(status))
    assert sorted(jobs.prune_jobs()) == ["old-done", "old-failed"]
    assert sorted(j.id for j in jobs.list_jobs()) == ["new-done", "old-running"]


@pytest.mark.slow
@pytest.mark.usefixtures("navigation_mode")
def test_dashboard_trains_an_editor_in_the_background_and_then_offers_it(case, places):
    from streamlit.testing.v1 import AppTest

    from auditor.audit import AuditSession

    bundle, data = load_case(case)
    audit = AuditSession(bundle, data, ["demographic_parity <= 0.1"], model_label="my_credit_mlp",
                         data_label="credit.csv")
    assert "metanet-fairness" in dict(audit.unavailable_editors())
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["audit"] = audit
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception, [e.value for e in at.exception]
    at.number_input(key="train_members").set_value(10)  # the population built already: cached
    at.number_input(key="train_steps").set_value(15)
    at.button(key="train_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job_id = at.session_state["train_jobs"][-1]
    assert jobs.get_job(job_id).status()["state"] in ("running", "done")  # the page returned while it runs
    jobs.get_job(job_id).wait(timeout=300)
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    done = "\n".join(s.value for s in at.success)
    assert "the Edit page now offers it" in done, done
    at.switch_page("pages/edit.py").run()
    assert any(o.startswith("metanet-fairness") for o in at.selectbox(key="edit_editor").options)
