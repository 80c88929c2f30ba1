"""The auditor's name and notes typed on the Report page survive loading another model (AppTest)."""
from __future__ import annotations

import pytest

from tests.test_app import app

pytestmark = pytest.mark.usefixtures("navigation_mode")

pytest.importorskip("streamlit.testing.v1")


def test_name_and_notes_survive_loading_another_model():
    at = app()
    at.button(key="load_go").click().run()  # the Trojan sample, selected by default
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page("pages/report.py").run()
    at.text_input(key="rep_name").set_value("Grace Hopper").run()
    at.text_area(key="rep_notes").set_value("Trigger removed; accuracy unchanged.").run()
    first = at.session_state["audit"]
    assert first.auditor_name == "Grace Hopper"
    at.switch_page("pages/load.py").run()
    at.selectbox(key="load_sample").set_value("adult_mlp").run()
    at.button(key="load_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    second = at.session_state["audit"]
    assert second is not first and second.model_label == "adult_mlp"
    assert second.auditor_name == "Grace Hopper" and second.notes == "Trigger removed; accuracy unchanged."
    at.switch_page("pages/report.py").run()
    assert at.text_input(key="rep_name").value == "Grace Hopper"
    assert at.session_state["rep_cache"][2]["signoff"]["auditor"] == "Grace Hopper"
