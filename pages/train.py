"""Train a learned editor for this model: a population of models like it is built from the user's data and
a metanetwork editor is trained on it, as a background job (other sessions go on); when it is done the
editor is offered on the Edit page for this model's family."""
from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from auditor.jobs import get_job, train_editor_for, why_no_editor_training
from auditor.present import md_plain
from pages.common import in_frame, need_audit, next_step, show_error, stop

in_frame()

JOBS = "train_jobs"  # this browser session's job ids, newest last
SEEN = "train_jobs_seen"  # jobs whose finished editor the audit was told about
REQUIREMENTS = {"demographic_parity": "Demographic parity (fairness)", "equalized_odds": "Equalized odds (fairness)",
                "features_used": "Data minimisation (keep k features)", "sparsity": "Pruning (sparsity)"}

audit = need_audit()
st.title("Train a learned editor for this model")
st.caption("A population of models like yours (same inputs and preprocessing, depths and widths around yours, "
           "other seeds, subsets of your training rows and training lengths) is trained on your data, then a "
           "graph metanetwork learns to edit them in one pass. It runs in the background: you can keep working "
           "here, and other sessions are not slowed down more than a background process does.")

choices = [r for r in REQUIREMENTS if why_no_editor_training(audit.pristine, audit.data, r) is None]
if not choices:
    st.warning(md_plain(why_no_editor_training(audit.pristine, audit.data, "demographic_parity") or ""),
               icon=":material/block:")
    stop()
requirement = st.selectbox("Requirement the editor meets", choices, format_func=REQUIREMENTS.get, key="train_req")
c1, c2 = st.columns(2)
members = int(c1.number_input("Models in the population", min_value=10, max_value=2000, value=160, step=10,
                              key="train_members", help="80 % train the editor, 10 % pick its best checkpoint, "
                                                        "10 % are held out"))
minutes = float(c2.number_input("Time budget (minutes)", min_value=0.5, max_value=240.0, value=10.0, step=0.5,
                                key="train_minutes", help="training stops when it is spent (the best checkpoint "
                                                          "is kept); building the population comes on top"))
with st.expander("Advanced", expanded=False):
    steps = int(st.number_input("Training steps at most", min_value=5, max_value=20000, value=300, step=50,
                                key="train_steps"))
    workers = int(st.number_input("Processes that build the population", min_value=1,
                                  max_value=max(1, os.cpu_count() or 1), value=1, key="train_workers"))

if st.button("Train a learned editor for this model", type="primary", key="train_go", icon=":material/school:"):
    try:
        job = train_editor_for(audit.pristine, audit.data, requirement, n_models=members, minutes=minutes,
                               workers=workers, steps=steps)
        st.session_state.setdefault(JOBS, []).append(job.id)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)


def show_job(job_id: str) -> bool:
    """One job's progress, result or error; True while it runs."""
    job = get_job(job_id)
    s = job.status()
    p = s.get("params", {})
    title = f"{REQUIREMENTS.get(p.get('requirement'), p.get('requirement'))} editor, population {p.get('task')}"
    if s["state"] == "running":
        st.progress(min(max(float(s["fraction"]), 0.0), 1.0), text=f"{title}: {s['message']}")
        if st.button("Cancel", key=f"train_cancel_{job_id}", icon=":material/cancel:"):
            job.cancel()
            st.rerun()
        return True
    if s["state"] == "done":
        r = s["result"]
        if job_id not in st.session_state.setdefault(SEEN, []):
            st.session_state[SEEN].append(job_id)
            audit.editors_changed()  # the Edit page asks the editors again
        tr = r["training"]
        st.success(md_plain(f"{title}: trained in {tr['seconds']:.0f} s ({tr['steps_done']} steps; {tr['stopped']}). "
                            f"Written to {r['editor']}; the Edit page now offers it for this model."),
                   icon=":material/check_circle:")
        if r.get("validation"):
            st.caption("On held-out validation models of the population, per strength of the edit:")
            st.dataframe(pd.DataFrame(r["validation"]), hide_index=True, key=f"train_val_{job_id}")
    elif s["state"] == "cancelled":
        st.info(md_plain(f"{title}: cancelled."), icon=":material/cancel:")
    else:
        st.error(md_plain(f"{title}: failed: {s.get('error', 'no reason given')}"), icon=":material/error:")
    return False


mine = st.session_state.get(JOBS, [])
if mine:
    st.subheader("Training jobs")

    active = any(get_job(j).status()["state"] == "running" for j in mine)

    @st.fragment(run_every=2 if active else None)  # redrawn alone while a job runs
    def jobs_panel() -> None:
        running = [show_job(j) for j in reversed(mine)]
        if not any(running):
            st.caption("No job running.")

    jobs_panel()
    st.button("Refresh", key="train_refresh", icon=":material/refresh:")
next_step("edit", "Next: 4. Edit, with the trained editor")
