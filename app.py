"""Dashboard frame: page navigation, the status sidebar, and errors shown as messages.

Run with `make dashboard` (or `streamlit run app.py`). Each page in `pages/` collects choices and
calls the library (`auditor/`); the per-user audit lives in `st.session_state["audit"]`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from auditor import AuditorError  # noqa: E402
from pages.common import PAGES, StopPage, keep_widgets, show_error, sidebar_status  # noqa: E402

st.set_page_config(page_title="Model auditor", page_icon=":material/policy:", layout="wide")

pages = [
    st.Page(PAGES["load"], title="1. Load", icon=":material/upload_file:", url_path="load", default=True),
    st.Page(PAGES["localize"], title="2. Localize", icon=":material/troubleshoot:", url_path="localize"),
    st.Page(PAGES["requirements"], title="3. Requirements", icon=":material/rule:", url_path="requirements"),
    st.Page(PAGES["edit"], title="4. Edit", icon=":material/build:", url_path="edit"),
    st.Page(PAGES["train"], title="Train for this model", icon=":material/school:", url_path="train"),
    st.Page(PAGES["compare"], title="5. Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(PAGES["report"], title="6. Report", icon=":material/description:", url_path="report"),
]
page = st.navigation(pages)
keep_widgets()
st.sidebar.caption("Audit a PyTorch model against requirements, repair it with an edit, export a report. "
                   "Work through the steps in order.")
try:
    page.run()
except StopPage:
    pass  # the page ended early on purpose (e.g. no model loaded yet)
except Exception as exc:  # noqa: BLE001 (st.stop/st.rerun are BaseExceptions and pass through)
    show_error(exc)  # a message on the page, never a traceback
finally:
    try:
        sidebar_status()  # after the page, so it shows the state the page left (e.g. after an edit)
    except AuditorError as exc:
        st.sidebar.error(str(exc))
