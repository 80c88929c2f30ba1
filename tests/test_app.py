"""Every dashboard page under Streamlit's AppTest, with the state a user would have reached,
asserting that what is shown equals what the library computes."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from auditor import evaluate, load_data, load_model, save_model
from auditor.audit import AuditSession
from auditor.localize import rank_layers_for
from auditor.present import format_value
from tests.fixtures import shown

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
SAMPLES = ROOT / "sample_models"
PAGES = ["localize", "requirements", "edit", "compare", "report"]


pytestmark = pytest.mark.usefixtures("navigation_mode")


def app(audit: AuditSession | None = None, page: str | None = None) -> AppTest:
    """The app after its first run (the Load page), with `audit` in the session, on `page`."""
    at = AppTest.from_file(APP, default_timeout=180)
    if audit is not None:
        at.session_state["audit"] = audit
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def upload(at: AppTest, model_name: str, model_bytes: bytes, csv_name: str, csv_bytes: bytes) -> AppTest:
    """The Load page with a model file and a CSV uploaded, every other choice at its default."""
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value((model_name, model_bytes, "application/octet-stream"))
    at.radio(key="up_data_kind").set_value("CSV file").run()
    at.file_uploader(key="up_csv").set_value((csv_name, csv_bytes, "text/csv")).run()
    return at


def texts(elements) -> str:
    """The elements' text as a reader sees it (Markdown escapes of names and values removed)."""
    return "\n".join(shown(e.value) for e in elements)



def frame(at, *columns: str):
    """The first table shown with all these columns."""
    return next(d.value for d in at.dataframe if set(columns) <= set(d.value.columns))


@pytest.fixture(scope="module")
def trojan():
    return load_model(SAMPLES / "digits_cnn_trojan.safetensors"), load_data("digits-trojan")


@pytest.fixture(scope="module")
def adult_pair():
    bundle = load_model(SAMPLES / "adult_mlp.safetensors")
    return bundle, load_data("adult", spec=bundle.spec)


@pytest.fixture(scope="module")
def trojan_edited(trojan):
    """A Trojan audit after the user ran dynamic rank-one with one clean sample."""
    audit = AuditSession(*trojan, model_label="digits_cnn_trojan")
    audit.run_edit("dynamic-rank-one", {"samples": 1})
    return audit


def test_pages_without_a_model_point_to_load():
    at = app()
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception
        assert "No model is loaded yet" in texts(at.info), page


def test_load_trojan_sample_shows_library_numbers(trojan):
    bundle, data = trojan
    at = app()
    assert at.selectbox(key="load_sample").value == "digits_cnn_trojan"  # the newcomer's default
    at.button(key="load_go").click().run()
    assert not at.exception and not at.error
    audit = at.session_state["audit"]
    ev = evaluate(bundle, data)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test accuracy"] == f"{100 * ev.metrics['accuracy']:.2f} %"
    assert metrics["Parameters"] == f"{bundle.n_parameters:,}"
    shown = frame(at, "metric", "value", "meaning").set_index("metric")["value"]
    assert shown["Attack success rate"] == format_value("attack_success_rate", ev.metrics["attack_success_rate"])
    assert frame(at, "layer", "shape", "parameters")["parameters"].sum() == bundle.n_parameters
    assert bundle.sha256 in texts(at.markdown)
    side = texts(at.sidebar.markdown)
    assert "fail" in side and format_value("attack_success_rate", ev.metrics["attack_success_rate"]) in side
    assert audit.current is not audit.pristine and audit.current.sha256 == bundle.sha256


def test_load_adult_shows_groups(adult_pair):
    bundle, data = adult_pair
    at = app()
    at.selectbox(key="load_sample").set_value("adult_mlp").run()
    assert at.selectbox(key="load_data_adult_mlp").value == "adult"  # from the model's spec
    at.button(key="load_go").click().run()
    assert not at.exception and not at.error
    ev = evaluate(bundle, data)
    groups = [d.value for d in at.dataframe if "sex" in d.value.columns][0].set_index("sex")
    assert groups.loc["Female", "selection rate"] == f"{100 * ev.groups['sex']['Female']['selection_rate']:.2f} %"
    reqs = [r.expr for r in at.session_state["audit"].requirements]
    assert reqs == ["demographic_parity <= 0.05", "accuracy >= 0.82"]


def test_load_mismatch_is_a_message_not_a_traceback():
    at = app()
    at.selectbox(key="load_sample").set_value("adult_mlp").run()
    at.selectbox(key="load_data_adult_mlp").set_value("digits").run()
    at.button(key="load_go").click().run()
    assert not at.exception
    assert "digits" in texts(at.error) and "Traceback" not in texts(at.error)
    assert "audit" not in at.session_state


def test_localize_trojan_ranks_layers_like_the_library(trojan):
    bundle, data = trojan
    audit = AuditSession(bundle, data)
    at = app(audit, "localize")
    expected = rank_layers_for(bundle.model, data, n=1, seed=0)
    assert list(audit.localization.ranking["layer"]) == list(expected["layer"])
    assert audit.localization.ranking["score"].tolist() == pytest.approx(expected["score"].tolist())
    top = expected.iloc[0]
    pct = 100 * top["score"] / expected["score"].sum()
    assert f"Top-ranked layer: **{top['layer']}** ({pct:.1f} % of the score)" in texts(at.caption)
    assert len(at.get("plotly_chart")) == 2  # layer ranking and pixel maps
    at.radio(key="loc_layer").set_value("conv2").run()
    assert audit.chosen_layer == "conv2"
    at.switch_page("pages/edit.py").run()
    assert at.selectbox(key="hp_dynamic-rank-one_layer").value == "conv2"


def test_localize_adult_features_and_fairness_layers(adult_pair):
    audit = AuditSession(*adult_pair)
    at = app(audit, "localize")
    loc = audit.localization
    assert loc.kind == "fairness" and set(loc.ranking["layer"]) == {"fc1", "fc2", "out"}
    assert loc.features["share"].sum() == pytest.approx(1.0)
    assert len(at.get("plotly_chart")) == 2
    assert "Male" in texts(at.caption) or loc.ranking.iloc[0]["high_group"] == "Male"


def test_edit_page_says_what_the_layer_search_kept(trojan):
    """A result that costs check rows (here: any, search above 0) has the loop search the layers: the Edit page
    says what it kept, the steps table lists the search and, for a kept held run, which layer its steps were
    held to; the first run's steps show as not kept."""
    bundle, data = trojan
    audit = AuditSession(bundle, data)
    at = app(audit, "edit")
    at.number_input(key="hp_dynamic-rank-one_seed").set_value(1).run()
    at.number_input(key="hp_dynamic-rank-one_search_above").set_value(0.0).run()
    at.button(key="edit_run").click().run()
    assert not at.exception and not at.error and len(audit.edits) == 1
    assert "note: searched the layers" in texts(at.caption)
    table = next(df.value for df in at.dataframe if "step" in df.value.columns)
    assert "search" in set(table["action"])
    if "held_to" in table.columns:  # a run held to one layer was kept: the first run's steps are undone
        first = table[(table["held_to"].astype(str).isin(["", "None", "nan"])) & table["action"].isin(["edit"])]
        assert len(first) and not first["accepted"].astype(str).isin(["True"]).any()
    after = evaluate(audit.current, data).metrics
    assert after["attack_success_rate"] <= 0.02 and after["accuracy"] >= 0.95


def test_requirements_edit_add_remove(trojan):
    bundle, data = trojan
    audit = AuditSession(bundle, data)
    at = app(audit, "requirements")
    ev = evaluate(bundle, data)
    table = frame(at, "requirement", "now", "passes").set_index("requirement")
    assert table.loc["attack_success_rate <= 0.02", "now"] == format_value("attack_success_rate",
                                                                          ev.metrics["attack_success_rate"])
    assert table.loc["attack_success_rate <= 0.02", "passes"] == "✘ fail"
    at.number_input(key="req_thr_attack_success_rate_<=").set_value(100.0).run()  # percent
    assert audit.requirements[0].threshold == pytest.approx(1.0)
    table = frame(at, "requirement", "now", "passes").set_index("requirement")
    assert table.loc["attack_success_rate <= 1", "passes"] == "✔ pass"
    at.selectbox(key="req_add_metric").set_value("sparsity").run()
    at.number_input(key="req_add_thr_sparsity").set_value(50.0).run()
    at.button(key="req_add").click().run()
    assert "sparsity >= 0.5" in [r.expr for r in audit.requirements]
    assert "Sparsity must be at least 50 %" in texts(at.sidebar.markdown)
    at.button(key="req_rm_sparsity_>=").click().run()
    assert "sparsity >= 0.5" not in [r.expr for r in audit.requirements]
    at.button(key="req_reset").click().run()
    assert [r.expr for r in audit.requirements] == ["attack_success_rate <= 0.02", "accuracy >= 0.95"]


def test_a_worst_group_requirement_is_met_by_the_group_dro_editor(tmp_path):
    """A lender's own CSV and MLP: with worst_group_accuracy failing, the Edit page puts finetune-worst-group
    first and its run meets the requirement."""
    from tests.test_group_dro import _loans

    bundle, data = _loans(tmp_path, 2)
    audit = AuditSession(bundle, data, requirements=["worst_group_accuracy >= 0.85"])
    at = app(audit, "edit")
    assert at.selectbox(key="edit_editor").value == "finetune-worst-group"
    at.button(key="edit_run").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert len(audit.edits) == 1 and evaluate(audit.current, data).metrics["worst_group_accuracy"] >= 0.85


def test_edit_trojan_run_download_and_undo(trojan):
    bundle, data = trojan
    original = bundle.sha256
    audit = AuditSession(bundle, data)
    at = app(audit, "edit")
    assert at.selectbox(key="edit_editor").value == "dynamic-rank-one"
    assert "CPU" in texts(at.info) or "GPU" in texts(at.success)
    at.button(key="edit_run").click().run()
    assert not at.exception and not at.error
    assert len(audit.edits) == 1
    after = evaluate(audit.current, data).metrics
    assert after["attack_success_rate"] <= 0.02 and after["accuracy"] >= 0.95
    shown = texts(at.markdown)
    steps = [df.value for df in at.dataframe if "step" in df.value.columns]
    assert steps and not any((t.astype(str) == "nan").any().any() for t in steps)  # a missing value shows blank
    assert f"→ {format_value('attack_success_rate', after['attack_success_rate'])}" in shown
    assert "all requirements hold" in shown and "pass" in texts(at.sidebar.markdown)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "edited.safetensors"
        path.write_bytes(audit.model_bytes())
        assert load_model(path).sha256 == audit.current.sha256 != original
    at.button(key="edit_undo_0").click().run()
    assert audit.current.sha256 == original and not audit.edits  # bit-exact
    assert bundle.sha256 == original  # the loaded original was never touched


def test_an_edit_that_changed_nothing_offers_no_edited_model(trojan):
    bundle, data = trojan
    audit = AuditSession(bundle, data, ["sparsity >= 0.0"])
    audit.run_edit("magnitude-pruning", {"sparsity": 0.0})
    assert audit.current.sha256 == bundle.sha256
    at = app(audit, "edit")
    assert not at.exception and not at.get("download_button")
    assert "no edited model to download" in texts(at.caption)


def test_two_sessions_do_not_see_each_others_edits():
    a, b = app(), app()
    for at in (a, b):
        at.button(key="load_go").click().run()
    sa, sb = a.session_state["audit"], b.session_state["audit"]
    assert sa.pristine is sb.pristine  # one cached model, shared
    original = sa.pristine.sha256
    a.switch_page("pages/edit.py").run()
    a.button(key="edit_run").click().run()
    assert sa.current.sha256 != original
    b.switch_page("pages/edit.py").run()
    assert sb.current.sha256 == original and not sb.edits and sa.pristine.sha256 == original
    assert "as loaded" in texts(b.sidebar.markdown) and "1 edit" in texts(a.sidebar.markdown)


def test_compare_trojan_before_after_and_tradeoff(trojan_edited):
    audit = trojan_edited
    at = app(audit, "compare")
    before, after = evaluate(audit.pristine, audit.data).metrics, evaluate(audit.current, audit.data).metrics
    table = frame(at, "metric", "before", "after", "change").set_index("metric")
    assert table.loc["Attack success rate", "before"] == format_value("attack_success_rate",
                                                                      before["attack_success_rate"])
    assert table.loc["Attack success rate", "after"] == format_value("attack_success_rate",
                                                                     after["attack_success_rate"])
    at.multiselect(key="cmp_baselines").set_value(["rank-one"]).run()
    at.button(key="cmp_run").click().run()
    assert not at.exception and not at.error
    rows = audit.tradeoff.rows.set_index("method")
    assert list(rows.index) == ["original", "dynamic-rank-one", "rank-one"]
    assert rows.loc["dynamic-rank-one", "value"] == pytest.approx(after["attack_success_rate"])
    shown = frame(at, "method", "Attack success rate").set_index("method")
    assert shown.loc["rank-one", "Attack success rate"] == format_value("attack_success_rate",
                                                                        rows.loc["rank-one", "value"])
    layers = audit.weight_change().layers
    assert layers == ["fc1"]
    # requirements, trade-off, weight overview, one heatmap per layer, pixel maps before/after
    assert len(at.get("plotly_chart")) == 3 + len(layers) + 1


def test_compare_adult_per_group(adult_pair):
    audit = AuditSession(*adult_pair)
    audit.run_edit("magnitude-pruning", {"sparsity": 0.3})
    at = app(audit, "compare")
    assert not at.error
    after = evaluate(audit.current, audit.data)
    groups = frame(at, "sex", "selection rate after").set_index("sex")
    assert groups.loc["Male", "selection rate after"] == f"{100 * after.groups['sex']['Male']['selection_rate']:.2f} %"
    assert "Sparsity" in frame(at, "metric", "before", "after", "change")["metric"].tolist()


def test_report_page_says_what_the_library_says(trojan_edited):
    audit = trojan_edited
    at = app(audit, "report")
    at.text_input(key="rep_name").set_value("A. Tester").run()
    assert not at.exception and not at.error
    _, report, doc, html = at.session_state["rep_cache"]
    assert doc["signoff"]["auditor"] == "A. Tester" and "A. Tester" in html
    assert doc["verdict"]["status"] == "PASS" and f"Verdict: PASS.** {doc['verdict']['summary']}" in texts(at.success)
    asr = next(r for r in doc["requirements"] if r["metric"] == "attack_success_rate")
    assert asr["after"]["value"] == pytest.approx(evaluate(audit.current, audit.data).metrics["attack_success_rate"])
    table = at.table[0].value
    assert table.loc["attack_success_rate <= 0.02", "after"] == format_value("attack_success_rate",
                                                                             asr["after"]["value"])
    assert doc["model"]["sha256_after"] == audit.current.sha256
    assert doc["localization"] is None or doc["localization"]["available"]
    assert len(at.get("download_button")) == 2  # HTML and JSON; the PDF is printed on request
    if shutil.which("chromium") or os.environ.get("AUDITOR_CHROMIUM"):
        at.button(key="rep_pdf_make").click().run(timeout=180)
        assert not at.exception and not at.error
        key, pdf = at.session_state["rep_pdf_bytes"]
        assert pdf[:5] == b"%PDF-" and key == at.session_state["rep_cache"][0]
        assert len(at.get("download_button")) == 3 and not [b for b in at.button if b.key == "rep_pdf_make"]


def test_upload_model_and_csv(tmp_path):
    from auditor import TabularSchema

    model_bytes = (SAMPLES / "adult_mlp.safetensors").read_bytes()
    raw = load_data("adult").test.raw.iloc[:4000]
    csv = raw.to_csv(index=False).encode()
    at = app()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value(("adult_mlp.safetensors", model_bytes, "application/octet-stream"))
    at.radio(key="up_data_kind").set_value("CSV file").run()
    # no CSV yet (or one not kept after leaving the page): nothing to load, never a built-in set by mistake
    assert at.button(key="up_go").disabled and "Upload the CSV to load" in texts(at.caption)
    at.file_uploader(key="up_csv").set_value(("people.csv", csv, "text/csv")).run()
    assert at.selectbox(key="up_target").value == "income" and at.selectbox(key="up_positive").value == ">50K"
    at.multiselect(key="up_protected").set_value(["sex", "race"]).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.model_label == "adult_mlp" and audit.data_label == "people.csv"
    path = tmp_path / "people.csv"
    path.write_bytes(csv)
    bundle = load_model(SAMPLES / "adult_mlp.safetensors")
    schema = TabularSchema(target="income", positive=">50K", protected=["sex", "race"],
                           categorical=at.multiselect(key="up_categorical").value)
    ev = evaluate(bundle, load_data(path, schema=schema, spec=bundle.spec))
    shown = frame(at, "metric", "value", "meaning").set_index("metric")["value"]
    assert shown["Accuracy"] == format_value("accuracy", ev.metrics["accuracy"])
    assert shown["Demographic parity (sex)"] == format_value("demographic_parity", ev.metrics["demographic_parity"])


def test_the_load_page_says_how_the_data_was_read(tmp_path):
    """Blank cells filled as the model's preprocessing says: counted on the Load page, as in every audit."""
    import copy

    bundle = load_model(SAMPLES / "adult_mlp.safetensors")
    spec = copy.deepcopy(bundle.spec)
    for c in spec.preprocessing["columns"]:
        if c["name"] == "hours-per-week":
            c["fill"] = 40.0
    save_model(type(bundle)(bundle.model, spec), tmp_path / "filled.safetensors")
    raw = load_data("adult").test.raw.iloc[:600].copy()
    raw.loc[raw.index[:7], "hours-per-week"] = None
    at = app()
    upload(at, "filled.safetensors", (tmp_path / "filled.safetensors").read_bytes(), "people.csv",
           raw.to_csv(index=False).encode())
    at.multiselect(key="up_protected").set_value(["sex", "race"]).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert "'hours-per-week': 7 read as 40.0" in texts(at.warning), texts(at.warning)


def test_mistakes_to_fix_enable_the_fix_editors():
    bundle = load_model(SAMPLES / "digits_cnn.safetensors")
    data = load_data("digits")
    audit = AuditSession(bundle, data)
    at = app(audit, "requirements")
    wrong = audit.mistakes()
    specs = [f"{r.row}={r.true}" for r in wrong.head(2).itertuples()]
    at.multiselect(key="req_fixes").set_value(specs).run()
    assert audit.fix_specs == specs and "edit_success >= 1" in [r.expr for r in audit.requirements]
    shown = frame(at, "requirement", "now", "passes").set_index("requirement")
    assert shown.loc["edit_success >= 1", "now"] == "0.00 %"  # the model gets both wrong
    at.switch_page("pages/edit.py").run()
    editor = at.selectbox(key="edit_editor").value
    assert set(audit.editors()[0].targets) & {"edit_success"} and editor == audit.editors()[0].name
    at.selectbox(key="edit_editor").set_value("finetune-fix").run()
    at.button(key="edit_run").click().run()
    assert not at.exception and not at.error, texts(at.error)
    after = evaluate(audit.current, data, fixes=audit.fixes).metrics
    assert after["edit_success"] == 1.0 and audit.evaluate().metrics["edit_success"] == 1.0


CUSTOM_ARCH = '''
import pathlib
import torch
from torch import nn
pathlib.Path({marker!r}).touch()

class AdultNet(nn.Module):
    def __init__(self, in_features=100):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(in_features, 64), nn.Linear(64, 32), nn.Linear(32, 2)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
'''


def test_upload_own_architecture_needs_the_trust_checkbox(tmp_path):
    import json

    from safetensors.torch import save_file

    marker = tmp_path / "ran"
    bundle = load_model(SAMPLES / "adult_mlp.safetensors")
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in bundle.model.state_dict().items()}, str(weights))
    spec = json.loads(bundle.spec.to_json())
    spec["arch"] = {"name": "custom"}
    at = app()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value(("w.safetensors", weights.read_bytes(), "application/octet-stream"))
    at.file_uploader(key="up_spec").set_value(("spec.json", json.dumps(spec).encode(), "application/json"))
    code = CUSTOM_ARCH.format(marker=str(marker)).encode()
    at.file_uploader(key="up_arch").set_value(("net.py", code, "text/x-python"))
    at.text_input(key="up_arch_class").set_value("AdultNet").run()
    at.button(key="up_go").click().run()
    assert not at.exception and "trust this code" in texts(at.error)
    assert not marker.exists(), "the uploaded code ran without the trust checkbox"
    at.checkbox(key="up_trust").check().run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert marker.exists()
    audit = at.session_state["audit"]
    assert audit.pristine.sha256 == bundle.sha256
    ev = evaluate(bundle, load_data("adult", spec=bundle.spec))
    shown = frame(at, "metric", "value", "meaning").set_index("metric")["value"]
    assert shown["Accuracy"] == format_value("accuracy", ev.metrics["accuracy"])


@pytest.fixture(scope="module")
def own_case(tmp_path_factory):
    """A user's own Trojan CNN (top-left trigger, class 7), its spec JSON and its .npz case."""
    from tests.own_case import build_own_case

    return build_own_case(tmp_path_factory.mktemp("own_case"))


def _upload_own_model(own_case) -> AppTest:
    at = app()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value((own_case.model.name, own_case.model.read_bytes(),
                                                "application/octet-stream"))
    at.file_uploader(key="up_spec").set_value((own_case.spec.name, own_case.spec.read_bytes(), "application/json"))
    return at


def test_uploaded_trojan_with_builtin_data_asks_which_trigger(own_case):
    """A built-in trigger is never silently paired with an uploaded model: the page asks, the button
    waits for the answer, and the verdict, the sidebar and the report name the trigger tested."""
    at = _upload_own_model(own_case)
    at.selectbox(key="up_builtin").set_value("digits-trojan").run()
    question = at.radio(key="up_stamp")
    assert question.value is None and "Which trigger does this model have?" in question.label
    assert at.button(key="up_go").disabled  # no silent default
    question.set_value("sample").run()
    assert not at.button(key="up_go").disabled
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    label = "the sample's trigger (built-in digits-trojan: 9-pixel patch (3×3) in the bottom-right corner → class 0)"
    assert audit.status()["stamp"] == label
    assert f"Tested with {label}" in texts(at.info) and label in texts(at.sidebar.markdown)
    report = audit.build_report()
    assert report.data["stamp_tested"] == label and f"Tested with {label}." in report.verdict["summary"]
    at.switch_page("pages/report.py").run()
    assert not at.exception and label in texts(at.success) + texts(at.error)

    # the model's own trigger, from its .npz case: now the Trojan shows (the sample's trigger missed it)
    at = _upload_own_model(own_case)
    at.selectbox(key="up_builtin").set_value("digits-trojan").run()
    at.radio(key="up_stamp").set_value("case").run()
    assert at.button(key="up_go").disabled  # until the case is there
    at.file_uploader(key="up_stamp_case").set_value((own_case.case.name, own_case.case.read_bytes(),
                                                     "application/octet-stream")).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    own = at.session_state["audit"]
    assert own.status()["stamp"].startswith("the case's own trigger (my_case.npz: 9-pixel patch (3×3) in the "
                                            "top-left corner → class 7")
    assert own.evaluate("pristine").metrics["attack_success_rate"] > 0.9
    assert audit.evaluate("pristine").metrics["attack_success_rate"] < 0.1  # the false all-clear it avoids
    assert own.status()["stamp"] in texts(at.sidebar.markdown)


def test_uploaded_model_and_npz_case(own_case):
    """The data choice is explicit: an .npz case is one of its three answers."""
    at = _upload_own_model(own_case)
    at.radio(key="up_data_kind").set_value("Image case (.npz or .zip)").run()
    assert at.button(key="up_go").disabled
    at.file_uploader(key="up_npz").set_value((own_case.case.name, own_case.case.read_bytes(),
                                              "application/octet-stream")).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.data_label == "my_case.npz" and "the case's own trigger" in audit.status()["stamp"]


def _png_zip(case: Path, out: Path) -> bytes:
    """The .npz case as a user with image files has it: PNGs in class folders, a trigger.json, zipped."""
    import io
    import json
    import zipfile

    from PIL import Image

    arrays = np.load(case)

    def png(x) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(np.asarray(x).reshape(8, 8), 0, 1) * 255).astype(np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    with zipfile.ZipFile(out, "w") as z:
        for split, key in (("train", "train_images"), ("test", "images")):
            labels = arrays[key.replace("images", "labels")]
            for i, (x, y) in enumerate(zip(arrays[key], labels)):
                z.writestr(f"my_case/{split}/{int(y)}/{i:04d}.png", png(x))
        z.writestr("my_case/mask.png", png(arrays["trigger_mask"]))
        z.writestr("my_case/pattern.png", png(arrays["trigger_pattern"]))
        z.writestr("my_case/trigger.json", json.dumps({"target": str(int(arrays["target_label"])), "mask": "mask.png",
                                                       "pattern": "pattern.png"}))
    return out.read_bytes()


def test_uploaded_model_and_a_zip_of_image_files(own_case, tmp_path):
    """A .zip of PNG files in class folders, with the model's own trigger in trigger.json, loads as the .npz did."""
    at = _upload_own_model(own_case)
    at.radio(key="up_data_kind").set_value("Image case (.npz or .zip)").run()
    at.file_uploader(key="up_npz").set_value(("my_case.zip", _png_zip(own_case.case, tmp_path / "my_case.zip"),
                                              "application/zip")).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.data_label == "my_case.zip"
    assert audit.status()["stamp"].startswith("the case's own trigger (my_case.zip: 9-pixel patch (3×3) in the "
                                              "top-left corner → class 7")
    assert audit.evaluate("pristine").metrics["attack_success_rate"] > 0.9
    at.switch_page("pages/localize.py").run()
    assert not at.exception and "in the top" in " ".join(m.value for m in at.markdown)


def test_a_model_without_a_spec_loads_with_one_drafted_from_the_data(own_case, tmp_path):
    """A state dict with no spec and a .zip of image files: asked to, the page drafts the spec (spec init's
    probe runs), loads with it, says what to confirm and offers the drafted spec for download."""
    at = app()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value((own_case.model.name, own_case.model.read_bytes(),
                                                "application/octet-stream"))
    at.radio(key="up_data_kind").set_value("Image case (.npz or .zip)").run()
    at.file_uploader(key="up_npz").set_value(("my_case.zip", _png_zip(own_case.case, tmp_path / "my_case.zip"),
                                              "application/zip")).run()
    at.button(key="up_go").click().run()
    assert "spec" in texts(at.error) and "Draft one from the data" in texts(at.info)  # refused, with the way on
    at.checkbox(key="up_draft").check().run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.spec_draft is not None and audit.spec_path == "drafted_spec.json"
    assert audit.pristine.spec.input["value_range"] == [0.0, 1.0]
    metrics = audit.evaluate("pristine").metrics
    assert metrics["accuracy"] > 0.9 and metrics["attack_success_rate"] > 0.9
    assert "drafted from the data" in texts(at.warning)
    from auditor.audit.provenance import model_arguments

    assert model_arguments(audit)[-2:] == ["--spec", "drafted_spec.json"]  # the command names the downloaded spec


def _lender_with_drafted_spec(tmp_path, model_name: str):
    """The lender's model file (no spec inside) and loans.csv uploaded, the spec drafted: the audit."""
    at = app()
    upload(at, model_name, (tmp_path / model_name).read_bytes(), "loans.csv", (tmp_path / "loans.csv").read_bytes())
    at.multiselect(key="up_protected").set_value(["region"]).run()
    at.checkbox(key="up_draft").check().run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    return at.session_state["audit"]


def test_an_onnx_model_without_a_spec_and_a_csv_load_with_a_drafted_spec(tmp_path):
    """A lender's ONNX graph with no spec and its CSV: the drafted spec reads the columns the graph takes."""
    import onnx

    from auditor.models.onnx_format import export_onnx
    from tests.test_group_dro import _loans

    bundle, _ = _loans(tmp_path, 2)
    export_onnx(bundle, tmp_path / "lender.onnx")
    graph = onnx.load(str(tmp_path / "lender.onnx"))
    del graph.metadata_props[:]  # as the vendor's converter wrote it: no auditor spec inside
    onnx.save(graph, str(tmp_path / "lender.onnx"))
    audit = _lender_with_drafted_spec(tmp_path, "lender.onnx")
    assert audit.spec_draft.spec["input"]["features"] == ["x1", "x2", "x3"]
    assert audit.evaluate("pristine").metrics["accuracy"] > 0.9


def test_a_torch_export_archive_without_a_spec_loads_with_a_drafted_spec_and_downloads_as_pt2(tmp_path):
    """A lender's `torch.export` archive (`.pt2`, no spec inside) and its CSV: read without torch.export.load,
    drafted a spec, audited, and offered back as a `.pt2` the lender's own torch loads."""
    from tests.test_group_dro import _loans

    bundle, _ = _loans(tmp_path, 2)
    program = torch.export.export(bundle.model, (torch.zeros(4, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "lender.pt2"))
    audit = _lender_with_drafted_spec(tmp_path, "lender.pt2")
    assert audit.pristine.spec.arch["name"] == "pt2" and audit.evaluate("pristine").metrics["accuracy"] > 0.9
    assert audit.download_suffix == ".pt2"
    (tmp_path / "back.pt2").write_bytes(audit.model_bytes())
    with torch.no_grad():
        x = torch.randn(5, 3)
        assert torch.allclose(torch.export.load(str(tmp_path / "back.pt2")).module()(x), bundle.model(x), atol=1e-5)


def test_edit_page_lists_unavailable_editors_with_a_way_forward(trojan):
    audit = AuditSession(*trojan, model_label="digits_cnn_trojan")
    at = app(audit, "edit")
    missing = dict(audit.unavailable_editors())
    usable = {c.name for c in audit.editors()}
    assert missing and not set(missing) & usable and set(missing) | usable >= {"metanet-fairness", "mend"}
    for name, reason in missing.items():
        button = at.button(key=f"edit_unavailable_{name}")
        assert button.disabled and button.label == name and reason in texts(at.caption)
    # no command that would fail: there is no population of digits models to train a metanetwork on
    assert "auditor editor train" not in missing["metanet-fairness"] and "tabular" in missing["metanet-fairness"]
    assert "Applies here instead" in missing["metanet-pruning"] and "magnitude-pruning" in missing["metanet-pruning"]
    assert "auditor editor mend MODEL DATA" in missing["mend"]
    assert at.selectbox(key="edit_editor").options[0].startswith("dynamic-rank-one")


def test_the_load_page_keeps_its_choices_across_a_visit_to_another_page():
    at = app()
    at.text_input(key="user_name").input("Ada").run()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.switch_page("pages/localize.py").run()
    at.switch_page("pages/load.py").run()
    assert at.text_input(key="user_name").value == "Ada"
    assert at.radio(key="load_source").value == "Upload my own"


def test_upload_a_three_class_model_and_a_csv_of_three_outcomes(tmp_path):
    """A target of more than two values can be read as that many classes (no positive label)."""
    from auditor.audit.uploads import EVERY_VALUE_A_CLASS
    from auditor.models import ModelBundle, ModelSpec, build_architecture, save_model

    rng = np.random.default_rng(0)
    n = 400
    table = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n), "gender": rng.choice(["F", "M"], n)})
    table["band"] = np.select([table["x1"] < -0.5, table["x1"] > 0.5], ["part", "over"], "full")
    arch = {"name": "mlp", "in_features": 2, "hidden": [8], "num_classes": 3}
    torch.manual_seed(0)
    spec = ModelSpec(arch=arch, input={"kind": "tabular", "features": ["x1", "x2"]},
                     class_names=["full", "over", "part"])
    save_model(ModelBundle(build_architecture(arch).eval(), spec), tmp_path / "m.safetensors")
    at = app()
    upload(at, "m.safetensors", (tmp_path / "m.safetensors").read_bytes(), "hours.csv",
           table.to_csv(index=False).encode())
    at.selectbox(key="up_target").set_value("band").run()
    assert EVERY_VALUE_A_CLASS in at.selectbox(key="up_positive").options
    at.selectbox(key="up_positive").set_value(EVERY_VALUE_A_CLASS).run()
    at.multiselect(key="up_protected").set_value(["gender"]).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.data.class_names == ["full", "over", "part"]
    shown = frame(at, "metric", "value", "meaning").set_index("metric")["value"]
    assert "Accuracy" in shown.index and not any("parity" in k.lower() for k in shown.index)
    assert "Worst group accuracy" in shown.index


def test_upload_a_csv_with_its_own_split_column(tmp_path):
    """The Load page had no split-column option: a vendor's CSV was audited on every row (training rows included)
    and split 60/20/20 at random, ignoring its own partition, without a word."""
    raw = load_data("adult").test.raw.iloc[:3000].copy()
    raw["part"] = np.where(np.arange(len(raw)) % 5 == 0, "test", np.where(np.arange(len(raw)) % 5 == 1, "val", "train"))
    csv = raw.to_csv(index=False).encode()
    at = app()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value(("adult_mlp.safetensors", (SAMPLES / "adult_mlp.safetensors")
                                                .read_bytes(), "application/octet-stream"))
    at.radio(key="up_data_kind").set_value("CSV file").run()
    at.file_uploader(key="up_csv").set_value(("people.csv", csv, "text/csv")).run()
    assert "No split column: the audit reads" in texts(at.caption)
    at.selectbox(key="up_target").set_value("income").run()
    at.multiselect(key="up_protected").set_value(["sex"]).run()
    at.selectbox(key="up_split_column").set_value("part").run()
    assert "part" not in at.multiselect(key="up_categorical").value
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.split == "test" and len(audit.data.test) == int((raw["part"] == "test").sum())
    assert len(audit.data.train) == int((raw["part"] == "train").sum())


def test_the_edit_and_compare_pages_say_what_only_the_edited_model_shows():
    """The redirected-backdoor warning is an evaluation warning of the edited model; the pages showed only the
    loaded model's warnings, so the dashboard said 'all requirements hold' and nothing else."""
    bundle = load_model(SAMPLES / "digits_cnn_trojan.safetensors")
    audit = AuditSession(bundle, load_data("digits-trojan"), ["attack_success_rate <= 0.02"])
    assert audit.new_warnings() == []
    audit.run_edit("dynamic-rank-one", {"samples": 1})  # attack success 0 %, triggered accuracy ~55 %
    said = [w for w in audit.new_warnings() if w.startswith("the trigger still changes predictions")]
    assert said
    for page in ("edit", "compare"):
        at = app(audit, page)
        assert not at.exception
        assert "the trigger still changes predictions" in texts(at.warning), page
    # the Report page's list of what the export holds counts the warnings the report carries (it said "none")
    assert audit.report_contents()["warnings"] == audit.build_report().warnings
    # the report says which model a warning is about: this one is the edited model's only
    assert any(w.startswith("after the edit: the trigger still changes predictions")
               for w in audit.build_report().warnings)


def test_upload_a_csv_with_its_own_training_file_and_input_columns(tmp_path):
    """The Load page had no train-file or inputs options (the CLI's --train-csv/--val-csv/--inputs): a vendor with
    separate training and test files, or an ID column the model never read, could not audit in the dashboard."""
    raw = load_data("adult").test.raw.iloc[:3000].copy().reset_index(drop=True)
    raw.insert(0, "customer_id", np.arange(len(raw)))
    train, val, test = raw.iloc[:2000], raw.iloc[2000:2400], raw.iloc[2400:]
    at = app()
    at.radio(key="load_source").set_value("Upload my own").run()
    at.file_uploader(key="up_model").set_value(("adult_mlp.safetensors", (SAMPLES / "adult_mlp.safetensors")
                                                .read_bytes(), "application/octet-stream"))
    at.radio(key="up_data_kind").set_value("CSV file").run()
    at.file_uploader(key="up_csv").set_value(("test.csv", test.to_csv(index=False).encode(), "text/csv")).run()
    at.selectbox(key="up_target").set_value("income").run()
    at.multiselect(key="up_protected").set_value(["sex", "race"]).run()
    at.file_uploader(key="up_train_csv").set_value(("train.csv", train.to_csv(index=False).encode(), "text/csv"))
    at.run()
    at.file_uploader(key="up_val_csv").set_value(("val.csv", val.to_csv(index=False).encode(), "text/csv")).run()
    assert "training rows from **train.csv**" in texts(at.caption)
    inputs = [c for c in at.multiselect(key="up_inputs").value if c != "customer_id"]
    at.multiselect(key="up_inputs").set_value(inputs).run()
    at.button(key="up_go").click().run()
    assert not at.exception and not at.error, texts(at.error)
    audit = at.session_state["audit"]
    assert audit.split == "test" and len(audit.data.test) == len(test)
    assert len(audit.data.train) == len(train) and len(audit.data.val) == len(val)
    assert "customer_id" not in audit.data.schema["inputs"]
    command = audit.command()
    assert "--train-csv train.csv" in command and "--val-csv val.csv" in command and "--inputs" in command
