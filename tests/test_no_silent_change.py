"""No silent change: loading, evaluating and localizing never modify the original model file, the
loaded model or the data; an editor that crashes mid-edit leaves the session's previous model intact.

That EVERY registered editor leaves the original model, its file, the data and the fixes as they
were, describes exactly what it changed and reverts bit for bit is checked by
`auditor.editors.testing.check_editor`, run over the registry in tests/test_editor_contract.py.
(The audit log surviving a killed process is tested with the store, in tests/test_store.py.)
"""
from __future__ import annotations

import pytest
import torch

from auditor import evaluate, load_data, load_model
from auditor.editors import EDITORS, Editor
from auditor.models import editable_layers
from tests.conftest import SAMPLES
from tests.editor_cases import data_digest, file_digest, numbers, sample, state
from tests.fixtures import shown


@pytest.mark.parametrize("model, data_name", [("digits_cnn_trojan", "digits-trojan"), ("compas_mlp", "compas")])
def test_loading_evaluating_and_localizing_change_nothing(model, data_name):
    path = SAMPLES / f"{model}.safetensors"
    digest = file_digest(path)
    bundle = load_model(path)
    data = load_data(data_name, spec=bundle.spec)
    sha, dd, weights = bundle.sha256, data_digest(data), state(bundle)
    evaluate(bundle, data, ["accuracy >= 0.5"])
    from auditor.audit import localize
    loc = localize(bundle, data, samples=1)
    assert loc is not None
    assert (file_digest(path), bundle.sha256, data_digest(data)) == (digest, sha, dd)
    assert all((weights[k] == v).all() for k, v in state(bundle).items())
    # hooks and training mode are left as they were
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in bundle.model.modules())
    assert not bundle.model.training


class _CrashingEditor(Editor):
    """Scribbles over the first layer of its copy, then fails (as a buggy editor or a kill would)."""

    name = "crash-test"
    description = "zeroes the first layer, then raises"
    kind = "baseline"

    def _edit(self, model, data, requirements, device, callback, **_):
        with torch.no_grad():
            editable_layers(model)[0][1].weight.zero_()
        callback(0.5, "half way")
        raise RuntimeError("editor crashed mid-edit")


def test_a_crash_mid_edit_leaves_the_original_intact():
    bundle, data = sample("compas_mlp", "compas")
    sha = bundle.sha256
    with pytest.raises(RuntimeError, match="crashed mid-edit"):
        _CrashingEditor().edit(bundle, data, device="cpu")
    assert bundle.sha256 == sha


@pytest.fixture
def crash_editor_registered(monkeypatch):
    monkeypatch.setitem(EDITORS, _CrashingEditor.name, _CrashingEditor)


def test_a_crash_mid_edit_leaves_the_sessions_previous_model_intact(crash_editor_registered, monkeypatch):
    from auditor.audit import AuditSession
    bundle, data = sample("compas_mlp", "compas")
    pristine = bundle.sha256
    s = AuditSession(bundle, data)
    record = s.run_edit("magnitude-pruning", {"sparsity": 0.3})
    previous, n_edits, current_numbers = s.current.sha256, len(s.edits), numbers(s.evaluate())
    with pytest.raises(RuntimeError, match="crashed mid-edit"):
        s.run_edit("crash-test")
    assert (s.current.sha256, len(s.edits)) == (previous, n_edits)
    assert numbers(s.evaluate()) == current_numbers
    # the session goes on: undo works bit for bit, the shared original was never touched
    s.revert(0)
    assert s.current.sha256 == pristine == bundle.sha256
    assert record.sha_before == pristine


def test_a_failure_after_the_editor_returned_leaves_the_sessions_previous_model_intact(monkeypatch):
    from auditor.audit import AuditSession
    bundle, data = sample("compas_mlp", "compas")
    s = AuditSession(bundle, data)
    s.run_edit("magnitude-pruning", {"sparsity": 0.3})
    previous, n_edits = s.current.sha256, len(s.edits)
    real_evaluate = AuditSession.evaluate

    def failing_evaluate(self, which="current", split="test"):
        if which == "current" and self.current.sha256 != previous:
            raise RuntimeError("evaluation failed")
        return real_evaluate(self, which, split)

    monkeypatch.setattr(AuditSession, "evaluate", failing_evaluate)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        s.run_edit("magnitude-pruning", {"sparsity": 0.6})
    monkeypatch.setattr(AuditSession, "evaluate", real_evaluate)
    assert (s.current.sha256, len(s.edits)) == (previous, n_edits), "a failed edit replaced the current model"


@pytest.mark.usefixtures("navigation_mode")
def test_a_crash_mid_edit_in_the_dashboard_shows_a_message_and_keeps_the_model(crash_editor_registered):
    """The Edit page under AppTest: the crashing editor's error is a message; the audit's current
    model is the one from before."""
    from streamlit.testing.v1 import AppTest

    from auditor.audit import AuditSession
    bundle, data = sample("compas_mlp", "compas")
    s = AuditSession(bundle, data, model_label="compas_mlp", data_label="compas")
    before = s.current.sha256
    at = AppTest.from_file(str(SAMPLES.parent / "app.py"), default_timeout=180)
    at.session_state["audit"] = s
    at.run()
    at.switch_page("pages/edit.py").run()
    at.selectbox(key="edit_editor").set_value("crash-test").run()
    at.button(key="edit_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("crashed mid-edit" in shown(e.value) for e in at.error), [e.value for e in at.error]
    assert at.session_state["audit"].current.sha256 == before and not at.session_state["audit"].edits

