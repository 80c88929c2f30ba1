"""Shared pieces of the dashboard pages: cached loaders, the per-user audit, progress, errors.

Cached objects (`st.cache_resource`) are shared by every user of the server: they are never
edited. Each browser session holds its own `AuditSession` in `st.session_state["audit"]`, whose
current model is a private copy.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import streamlit as st
import torch

from auditor import AuditorError, load_data, load_model
from auditor.audit import AuditSession
from auditor.present import requirement_sentence, split_words

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_models"
KEY = "audit"
PAGES = {"load": "pages/load.py", "localize": "pages/localize.py", "requirements": "pages/requirements.py",
         "edit": "pages/edit.py", "train": "pages/train.py", "compare": "pages/compare.py",
         "report": "pages/report.py"}

# Small models run fastest on one thread (and several users share the cores); AUDITOR_THREADS overrides.
if not st.get_option("global.appTest"):  # under AppTest the test session keeps its own setting
    torch.set_num_threads(int(os.environ.get("AUDITOR_THREADS", max(1, min(4, (os.cpu_count() or 2) // 2)))))


@st.cache_resource(show_spinner=False)
def sample_model(name: str):
    """A shipped sample model (shared by all users: never edit it; `AuditSession` copies it)."""
    return load_model(SAMPLES / f"{name}.safetensors")


@st.cache_resource(show_spinner=False, max_entries=8)  # one entry per uploaded spec: bounded, oldest dropped
def builtin_data(name: str, spec_json: str | None = None):
    """A built-in data set, transformed by the model's stored preprocessing (shared, read-only)."""
    from auditor import ModelSpec

    spec = ModelSpec.from_json(spec_json) if spec_json else None
    return load_data(name, spec=spec)


@st.cache_data(show_spinner=False)
def sample_catalogue() -> dict[str, dict]:
    """name -> {description, data} for every model in sample_models/ (from its model card)."""
    out = {}
    for path in sorted(SAMPLES.glob("*.safetensors")):
        try:
            spec = sample_model(path.stem).spec
        except AuditorError:
            continue
        if spec.data is None:
            continue
        card = path.with_suffix(".md")
        lines = [ln.strip() for ln in card.read_text().splitlines() if ln.strip()] if card.exists() else []
        desc = next((ln for ln in lines if not ln.startswith("#")), "")
        desc = desc.replace("`", "").rstrip(".")
        if len(desc) > 120:
            desc = desc[:117].rsplit(" ", 1)[0].rstrip(",;:") + "…"
        out[path.stem] = {"description": desc, "data": spec.data}
    return out


# Load-page choices kept while other pages run (Streamlit forgets a widget's value once a run does not draw
# it; written back on every run, it survives). Uploaded files cannot be kept so: the loaded audit holds them.
KEPT_WIDGETS = ("user_name", "load_source", "up_data_kind", "up_arch_class")


def keep_widgets() -> None:
    for key in KEPT_WIDGETS:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def in_frame() -> None:
    """Make sure this page runs inside app.py's frame. A `pages/` folder beside the entry script is
    also Streamlit's older multipage convention: until `st.navigation` has run once in the server
    process (e.g. a browser tab at /edit reconnecting after a restart), Streamlit runs the page file
    alone, with its own page list. Then switch the old mode off and rerun: app.py runs, and
    `st.navigation` shows the requested page."""
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        st.rerun()


class StopPage(Exception):
    """Ends a page early; the frame (app.py) still draws the sidebar, which `st.stop()` would cut off."""


def stop() -> None:
    raise StopPage


def new_audit(bundle, data, *, model_label: str, data_label: str, model_path: str | None = None) -> AuditSession:
    """A new audit for this browser session, recorded in the audit log ($AUDITOR_DB, default
    ~/.auditor/audit.db) under the name the Load page asked for."""
    from auditor.store import AuditLog

    return AuditSession(bundle, data, model_label=model_label, data_label=data_label, model_path=model_path,
                        log=AuditLog(), user=st.session_state.get("user_name", "") or "")


def get_audit() -> AuditSession | None:
    return st.session_state.get(KEY)


SIGNOFF = "signoff"  # the auditor's name and notes, kept across loads of other models in this browser session


def set_audit(audit: AuditSession) -> None:
    """Make `audit` this browser session's audit. The auditor's name and notes survive loading another
    model: the new audit takes them over from the previous one (a name the Load page just asked for wins)."""
    old = st.session_state.get(KEY)
    kept = st.session_state.setdefault(SIGNOFF, {"auditor_name": "", "notes": ""})
    if old is not None:
        kept["auditor_name"] = old.auditor_name or kept["auditor_name"]
        kept["notes"] = old.notes or kept["notes"]
    if not audit.auditor_name:
        audit.auditor_name = kept["auditor_name"]
    if not audit.notes:
        audit.notes = kept["notes"]
    st.session_state[KEY] = audit
    for k in [k for k in st.session_state if str(k).startswith(("req_", "hp_", "loc_"))]:
        del st.session_state[k]


def need_audit() -> AuditSession:
    """The user's audit, or a pointer to the Load page and a stop."""
    audit = get_audit()
    if audit is None:
        st.info("No model is loaded yet. Start on the **Load** page: the Trojan sample is selected already.")
        st.page_link(PAGES["load"], label="Go to Load", icon=":material/upload_file:")
        stop()
    return audit


@contextlib.contextmanager
def progress(text: str):
    """A progress bar; yields a `callback(fraction, message)` for the library."""
    bar = st.progress(0.0, text=text)

    def callback(fraction: float, message: str) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"{text}: {message}")

    try:
        yield callback
    finally:
        bar.empty()


# The library's messages name command-line options; on the page the same thing is a widget
DASHBOARD_WORDS = (
    ("pass its spec with --spec SPEC.json", "give its spec in the \"Model spec (JSON)\" box"),
    ("pass one with --spec SPEC.json", "give one in the \"Model spec (JSON)\" box"),
    ("--spec SPEC.json", "the \"Model spec (JSON)\" box"),
    ("--arch-file FILE.py --arch-class NAME --trust-code", "the architecture file, its class name and \"I trust "
                                                          "this code\""),
    ("--trust-code", "\"I trust this code\""),
)


def in_dashboard_words(text: str) -> str:
    """A library message with its command-line options named as the dashboard's widgets."""
    for cli, page in DASHBOARD_WORDS:
        text = text.replace(cli, page)
    return text


def show_error(exc: BaseException) -> None:
    """A message on the page, never a traceback: AuditorError text as is, others in one line."""
    from auditor.errors import one_line
    from auditor.present import md_plain

    # bounded: a 50 MB cell in a message shows as one short line; inert: a value or a file name quoted in
    # the message is escaped Markdown, never a link, an image or markup
    if isinstance(exc, AuditorError):
        st.error(md_plain(in_dashboard_words(one_line(exc))), icon=":material/error:")
    else:
        st.error(md_plain(f"Something went wrong ({type(exc).__name__}): {one_line(exc, 300)}"),
                 icon=":material/error:")


def next_step(page: str, label: str) -> None:
    st.divider()
    st.page_link(PAGES[page], label=label, icon=":material/arrow_forward:")


def sidebar_status() -> None:
    """Model, data, device and the requirements' status, on every page."""
    from auditor.present import md_plain

    audit = get_audit()
    with st.sidebar:
        st.markdown("### Audit status")
        if audit is None:
            st.caption("No model loaded. Start on **Load**.")
            return
        s = audit.status()
        changed = s["sha256"] != audit.pristine_sha256  # edits that changed nothing leave it as loaded
        edited = (f"edited ({s['edits']} edit{'s' if s['edits'] != 1 else ''})" if s["edits"] and changed
                  else f"as loaded ({s['edits']} edit{'s' if s['edits'] != 1 else ''} changed nothing)" if s["edits"]
                  else "as loaded")
        st.markdown(f"**Model** {md_plain(s['model'])}  \n{s['parameters']:,} parameters, {edited}  \n"
                    f"sha256 `{s['sha256'][:12]}…`")
        st.markdown(f"**Data** {md_plain(s['data'])}  \n{s['audited_rows']:,} rows audited ({split_words(s['split'])}; "
                    f"{s['rows']['train']:,} train, {s['rows']['val']:,} validation, {s['rows']['test']:,} test)")
        if s.get("stamp"):
            st.markdown(f"**Tested with** {md_plain(s['stamp'])}")
        device = (f"GPU, `{s['device']}`" if s["device"].startswith("cuda") else "CPU (no CUDA GPU found)")
        st.markdown(f"**Device** {device}")
        st.markdown("**Requirements**" + ("" if s["requirements"] else "  \nnone set"))
        for r in s["requirements"]:
            mark = {"pass": ":green[✔ pass]", "inconclusive": ":orange[? inconclusive]"}.get(r["verdict"],
                                                                                       ":red[✘ fail]")
            ci = f" (95 % CI {r['interval']})" if r.get("interval") else ""
            st.markdown(f"{mark} {md_plain(requirement_sentence(r['metric'], r['op'], r['threshold']))}; "
                        f"now **{r['shown']}**{ci}")
        if s.get("side_effects"):
            st.markdown(f":orange[⚠ {s['side_effects']} side effect{'s' if s['side_effects'] != 1 else ''}] "
                        "of the edit: see **Compare**")
