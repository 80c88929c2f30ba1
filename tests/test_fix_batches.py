"""Many mistakes at once and one edit after another: fixes tables (CSV, pasted text), `auditor edit
--fixes`, provenance that lists every edit of a file edited again and again, the dashboard's input,
and batches and 20-edit sequences on the sample models that keep earlier fixes and utility."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from auditor import load_data, load_model
from auditor.audit import AuditSession
from auditor.cli import main
from auditor.editors import get_editor
from auditor.errors import AuditorError
from auditor.fixes import fixes_digest, fixes_from_table, make_fixes, parse_fixes_text, read_fixes_csv
from auditor.models import read_metadata
from auditor.requirements import compute_metrics, predict
from tests.conftest import SAMPLES

pytestmark = pytest.mark.usefixtures("one_thread", "navigation_mode")
DIGITS_CNN = str(SAMPLES / "digits_cnn.safetensors")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.fixture(scope="module")
def digits_cnn():
    return load_model(DIGITS_CNN)


@pytest.fixture(scope="module")
def adult_mlp():
    return load_model(SAMPLES / "adult_mlp.safetensors")


# -- fixes tables ------------------------------------------------------------------------------------
def test_row_table_with_labels_by_name_index_and_split(adult):
    frame = pd.DataFrame({"row": [0, 5, 7], "label": [">50K", "0", "<=50K"], "split": ["test", "val", "test"]})
    fixes, specs = fixes_from_table(frame, adult)
    assert specs == ["test:0=>50K", "val:5=0", "test:7=<=50K"]
    assert fixes.y.tolist() == [1, 0, 0]
    assert torch.equal(fixes.X[1], adult.val.X[5]) and torch.equal(fixes.X[2], adult.test.X[7])


def test_input_rows_go_through_the_data_preprocessing(adult):
    raw = adult.test.raw.iloc[[3, 11]].copy()
    raw["label"] = [">50K", "<=50K"]
    fixes, names = fixes_from_table(raw, adult)
    assert torch.allclose(fixes.X, adult.test.X[[3, 11]], atol=1e-5)
    assert fixes.y.tolist() == [1, 0] and len(names) == 2


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"row": [1], "label": ["eleven"]}), "row 1: unknown label"),
    (pd.DataFrame({"row": [1, 10**6], "label": [1, 2]}), "row 2: .*outside"),
    (pd.DataFrame({"row": [1]}), "no label column"),
    (pd.DataFrame({"pixel": [1], "label": [2]}), "needs a 'row' column"),
    (pd.DataFrame({"row": [], "label": []}), "no rows"),
    (pd.DataFrame({"row": ["x"], "label": [1]}), "not an integer"),
])
def test_bad_image_tables_say_what_is_wrong(digits, frame, message):
    with pytest.raises(AuditorError, match=message):
        fixes_from_table(frame, digits)


def test_tabular_table_without_input_columns_names_them(adult):
    with pytest.raises(AuditorError, match="lacks the input columns"):
        fixes_from_table(pd.DataFrame({"age": [30], "label": [">50K"]}), adult)


def test_csv_and_pasted_text(digits, tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("row, label\n12, 3\n40, 7\n")
    fixes, specs = read_fixes_csv(path, digits)
    assert specs == ["test:12=3", "test:40=7"] and fixes.y.tolist() == [3, 7]
    assert parse_fixes_text("12=3\n40=7, val:2=1", digits) == ["12=3", "40=7", "val:2=1"]
    assert parse_fixes_text("row,label\n12,3", digits) == ["test:12=3"]
    with pytest.raises(AuditorError, match="not found"):
        read_fixes_csv(tmp_path / "missing.csv", digits)
    with pytest.raises(AuditorError, match="outside"):
        parse_fixes_text("100000=3", digits)


# -- the CLI: a batch, and a file edited three times -----------------------------------------------------
def test_cli_edits_an_edited_file_three_times_and_lists_every_edit(tmp_path, capsys, digits):
    model, batches = DIGITS_CNN, [["5,3", "7,1", "12,0"], ["21,4"], ["22,5", "23,6"]]
    for i, rows in enumerate(batches, start=1):
        csv = tmp_path / f"fixes{i}.csv"
        csv.write_text("row,label\n" + "\n".join(rows) + "\n")
        out = tmp_path / f"e{i}.safetensors"
        assert main(["edit", model, "digits", "--editor", "retrieval", "--fixes", str(csv), "--out", str(out),
                     "--require", "edit_success >= 1"]) == 0
        model = str(out)
        said = capsys.readouterr().out
        entries = sum(len(b) for b in batches[:i])
        assert f"fc1.codebook_keys: entries {entries - len(rows)} -> {entries}" in said and "||dW|| =" not in said
    meta = json.loads(read_metadata(model)["auditor.edit"])
    edits = meta["edits"]
    assert [e["fixes"]["rows"] for e in edits] == [[f"test:{r.replace(',', '=')}" for r in b] for b in batches]
    assert [e["sha_after"] for e in edits[:-1]] == [e["sha_before"] for e in edits[1:]]  # each on the last
    assert meta["earlier_edits"] == 2 and meta["edited_sha256"] == edits[-1]["sha_after"]
    first = read_fixes_csv(tmp_path / "fixes1.csv", digits)[0]
    assert edits[0]["fixes"]["sha256"] == fixes_digest(first)
    final = load_model(model)
    every = [r for b in batches for r in b]
    X = torch.stack([digits.test.X[int(r.split(",")[0])] for r in every])
    assert predict(final.model, X).tolist() == [int(r.split(",")[1]) for r in every]  # every fix kept


def test_cli_fixes_input_rows_of_tabular_data(tmp_path, adult, capsys):
    raw = adult.test.raw.iloc[[3, 11, 20]].copy()
    model = load_model(SAMPLES / "adult_mlp.safetensors")
    wrong = 1 - predict(model.model, adult.test.X[[3, 11, 20]])  # the other class than the model's
    raw["label"] = [adult.class_names[int(k)] for k in wrong]
    csv = tmp_path / "applicants.csv"
    raw.to_csv(csv, index=False)
    out = tmp_path / "a.safetensors"
    assert main(["edit", str(SAMPLES / "adult_mlp.safetensors"), "adult", "--editor", "retrieval", "--fixes", str(csv),
                 "--out", str(out), "--require", "edit_success >= 1"]) == 0
    assert "3 mistake(s) to fix" in capsys.readouterr().out
    assert predict(load_model(out).model, adult.test.X[[3, 11, 20]]).tolist() == wrong.tolist()
    meta = json.loads(read_metadata(out)["auditor.edit"])
    assert meta["edits"][0]["fixes"]["rows"] == [f"input {i}={adult.class_names[int(k)]}"
                                                 for i, k in enumerate(wrong, start=1)]


def test_cli_refuses_bad_fix_input(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("row,label\n5,eleven\n")
    args = ["edit", DIGITS_CNN, "digits", "--editor", "retrieval", "--out", str(tmp_path / "o.safetensors")]
    assert main([*args, "--fixes", str(bad)]) == 2
    assert "bad.csv: fixes table row 1: unknown label" in capsys.readouterr().err
    assert main([*args, "--fixes", str(bad), "--fix", "5=3"]) == 2
    assert main(["edit", DIGITS_CNN, "digits", "--editor", "retrieval", "--fix", "5=3",
                 "--out", str(tmp_path / "o.onnx")]) == 2
    assert ".safetensors" in capsys.readouterr().err


# -- batches and sequences on the sample models keep earlier fixes and utility ------------------------------
def requests(bundle, data, n: int, wrong_labels: bool):
    """n test rows: correctly classified ones with another label asked for, or misclassified ones with their
    true one."""
    pred = predict(bundle.model, data.test.X)
    y = data.test.y.numpy()
    rows = [int(r) for r in (pred == y).nonzero()[0]] if wrong_labels else [int(r) for r in (pred != y).nonzero()[0]]
    rows = rows[::max(1, len(rows) // n)][:n]
    labels = [(int(y[r]) + 1) % len(data.class_names) if wrong_labels else int(y[r]) for r in rows]
    return rows, labels


@pytest.mark.parametrize("model, data_name, wrong_labels", [("digits_cnn", "digits", True),
                                                           ("adult_mlp", "adult", False)])
def test_batch_and_20_edit_sequence_keep_fixes_and_accuracy(model, data_name, wrong_labels, request):
    bundle = request.getfixturevalue(model)
    data = request.getfixturevalue("digits") if data_name == "digits" else load_data("adult", spec=bundle.spec)
    rows, labels = requests(bundle, data, 30, wrong_labels)
    editor = get_editor("retrieval")
    accuracy = compute_metrics(bundle.model, data).metrics["accuracy"]
    batch = make_fixes(data, data.test.X[rows[:10]], labels[:10])
    after = editor.edit(bundle, data, fixes=batch).bundle
    assert predict(after.model, batch.X).tolist() == labels[:10]
    assert accuracy - compute_metrics(after.model, data).metrics["accuracy"] <= 10 / len(data.test) + 0.005
    current = bundle
    for i in range(10, 30):  # 20 edits, each on the output of the previous one
        current = editor.edit(current, data, fixes=make_fixes(data, data.test.X[rows[i:i + 1]], labels[i:i + 1])).bundle
    kept = predict(current.model, data.test.X[rows[10:30]]).tolist()
    assert sum(k == t for k, t in zip(kept, labels[10:30])) / 20 >= 0.95  # retention of every earlier fix
    drop = accuracy - compute_metrics(current.model, data).metrics["accuracy"]
    assert drop <= 20 / len(data.test) + 0.005  # at most the edited rows plus half a point


# -- the session (what the dashboard drives) and the Edit page ---------------------------------------------
def test_session_edits_one_after_another_keep_each_edits_fixes(digits_cnn, digits, tmp_path):
    s = AuditSession(digits_cnn, digits, ["accuracy >= 0.9"])
    for specs in (["5=3", "7=1"], ["21=4"], ["22=5"]):
        s.set_fixes(specs)
        s.run_edit("retrieval", {})
    doc = s.provenance()
    assert [e["fixes"]["rows"] for e in doc["edits"]] == [["5=3", "7=1"], ["21=4"], ["22=5"]]
    assert {e["fixes"]["split"] for e in doc["edits"]} == {s.split}  # the rows count over this split
    path = tmp_path / "m.safetensors"
    path.write_bytes(s.model_bytes())  # the dashboard's download
    assert s.download_suffix == ".safetensors" and load_model(path).sha256 == s.current.sha256
    again = AuditSession(load_model(path), digits, ["accuracy >= 0.9"])
    assert [e["fixes"]["rows"] for e in again.earlier_edits] == [["5=3", "7=1"], ["21=4"], ["22=5"]]
    again.set_fixes(["30=2"])
    again.run_edit("retrieval", {})
    assert [e["fixes"]["rows"] for e in again.provenance()["edits"]] == [["5=3", "7=1"], ["21=4"], ["22=5"], ["30=2"]]


def test_a_second_table_of_fixes_under_the_same_names_is_evaluated_afresh(digits_cnn, digits):
    """Two uploaded tables whose specs name them alike: the second batch's 'before' showed the first's value."""
    from auditor.fixes import make_fixes
    from auditor.models import predict_logits

    wrong = torch.nonzero(predict_logits(digits_cnn.model, digits.test.X).argmax(1) != digits.test.y).flatten()
    first = make_fixes(digits, digits.test.X[wrong[:3]], digits.test.y[wrong[:3]], seed=0)
    second = make_fixes(digits, digits.test.X[wrong[3:6]], digits.test.y[wrong[3:6]], seed=0)
    s = AuditSession(digits_cnn, digits, ["accuracy >= 0.9"])
    s.set_fixes(["fixes.csv"], fixes=first)
    s.run_edit("retrieval", {})
    assert s.evaluate().metrics["edit_success"] == 1.0
    s.set_fixes(["fixes.csv"], fixes=second)  # the same name, other rows
    assert s.evaluate().metrics["edit_success"] < 1.0


def test_earlier_fixes_are_checked_over_the_split_they_were_made_on(digits_cnn, digits, tmp_path):
    """Fixes made with --split test were re-read over the later edit's split: other rows, another digest, and
    the check that they still hold was skipped without a word."""
    s = AuditSession(digits_cnn, digits, ["accuracy >= 0.9"], split="test")
    s.set_fixes(["5=3", "7=1"])
    s.run_edit("retrieval", {})
    path = tmp_path / "m.safetensors"
    path.write_bytes(s.model_bytes())
    later = AuditSession(load_model(path), digits, ["accuracy >= 0.9"], split="all")
    found = later.earlier_fixes()
    assert len(found) == 1 and torch.equal(found[0][1].X, s.fixes.X)


def test_edit_page_takes_many_mistakes_and_applies_edits_in_turn(digits_cnn, digits):
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    audit = AuditSession(digits_cnn, digits, ["accuracy >= 0.9"], model_label="digits_cnn")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.session_state["audit"] = audit
    at.run()
    at.switch_page("pages/edit.py").run()
    for text in ("5=3\n7=1\n12=0", "row,label\n21,4\n22,5"):
        at.text_area(key="edit_fixes_text").input(text).run()
        at.button(key="edit_fixes_set").click().run()
        assert not at.exception, [e.value for e in at.exception]
        at.selectbox(key="edit_editor").select("retrieval").run()
        at.button(key="edit_run").click().run()
        assert not at.exception, [e.value for e in at.exception]
    audit = at.session_state["audit"]  # the app's own copy of the session
    assert [rec.fixes["rows"] for rec in audit.edits] == [["5=3", "7=1", "12=0"], ["test:21=4", "test:22=5"]]
    shown = "\n".join(m.value for m in at.markdown)
    assert "fixes 3 mistake(s)" in shown and "fixes 2 mistake(s)" in shown
    assert predict(audit.current.model, digits.test.X[[5, 7, 12, 21, 22]]).tolist() == [3, 1, 0, 4, 5]
    at.text_area(key="edit_fixes_text").input("5=eleven").run()
    at.button(key="edit_fixes_set").click().run()
    assert "unknown label" in "\n".join(str(e.value) for e in at.error)


def test_fixes_that_ask_for_another_label_than_the_datas_are_said(digits_cnn, digits):
    """A user counting rows in the file fixed other rows, which the model already got right."""
    y = digits.test.y
    s = AuditSession(digits_cnn, digits, ["accuracy >= 0.9"], split="test")
    s.set_fixes([f"4={(int(y[4]) + 1) % 10}"])
    assert any("1 of 1 fix(es) ask for another label than the data's own" in w for w in s.evaluate().warnings)
    s.set_fixes([f"4={int(y[4])}"])
    assert not any("another label than the data's" in w for w in s.evaluate().warnings)


def test_fixes_given_as_input_rows_are_rechecked_by_a_later_audit(tmp_path):
    """A table of input rows (no row numbers) left nothing to rebuild the fixes from: a later edit that undid
    them was never checked. Their inputs now travel in the edit's record."""
    from auditor.fixes import fixes_from_table

    bundle = load_model(SAMPLES / "adult_mlp.safetensors")
    data = load_data("adult", spec=bundle.spec)
    table = data.test.raw.iloc[:3].drop(columns=["income"]).assign(label=[">50K", ">50K", "<=50K"])
    fixes, names = fixes_from_table(table, data)
    s = AuditSession(bundle, data, ["accuracy >= 0.8"])
    s.set_fixes(names, fixes=fixes)
    s.run_edit("retrieval", {})
    assert "inputs" in s.provenance()["edits"][0]["fixes"]
    path = tmp_path / "m.safetensors"
    path.write_bytes(s.model_bytes())
    later = AuditSession(load_model(path), data, ["accuracy >= 0.8"])
    found = later.earlier_fixes()
    assert len(found) == 1 and torch.equal(found[0][1].X, fixes.X) and torch.equal(found[0][1].y, fixes.y)
