"""`AuditSession`, the dashboard's UI-independent state: edits on a private copy, bit-exact undo,
requirements, settings as plain data, the report of what the session shows."""
from __future__ import annotations

from pathlib import Path

import pytest

from auditor import load_data, load_model
from auditor.audit import AuditSession, default_requirements
from auditor.audit.uploads import read_upload
from auditor.editors import EDITORS, get_editor
from auditor.present import format_value, metric_label, setting_fields
from auditor.report import validate_report
from tests.fixtures import assert_same_numbers

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


@pytest.fixture(scope="module")
def trojan():
    return load_model(SAMPLES / "digits_cnn_trojan.safetensors"), load_data("digits-trojan")


def test_format_and_labels():
    assert format_value("accuracy", 0.98) == "98.00 %"
    assert format_value("demographic_parity[sex]", 0.1523) == "15.23 pp"
    assert format_value("features_used", 11.0) == "11"
    assert metric_label("equalized_odds[race]") == "Equalized odds (race)"


def test_default_requirements(trojan, adult):
    assert [r.expr for r in default_requirements(trojan[1])] == ["attack_success_rate <= 0.02", "accuracy >= 0.95"]
    assert [r.expr for r in default_requirements(adult)] == ["demographic_parity <= 0.05", "accuracy >= 0.82"]


def test_edits_are_private_and_undo_is_bit_exact(trojan):
    bundle, data = trojan
    original = bundle.sha256
    s = AuditSession(bundle, data)
    first = s.run_edit("rank-one", {"samples": 1})
    second = s.run_edit("magnitude-pruning", {"sparsity": 0.2})
    assert first.sha_after == second.sha_before != original
    assert s.evaluate().metrics["sparsity"] == pytest.approx(0.2, abs=1e-3) and bundle.sha256 == original
    assert s.weight_change().layers  # all edits together, against the model as loaded
    s.revert(1)
    assert s.current.sha256 == first.sha_after and len(s.edits) == 1
    s.run_edit("magnitude-pruning", {"sparsity": 0.2})
    s.revert(0)  # undoing the first edit undoes the later one too
    assert s.current.sha256 == original and not s.edits and bundle.sha256 == original


def test_requirements_add_set_remove(trojan):
    s = AuditSession(*trojan)
    assert not s.passed
    s.set_threshold(0, 1.0)
    assert s.passed and s.requirement_table()["passes"].all()
    s.add_requirement("sparsity >= 0.5")
    assert not s.passed
    with pytest.raises(Exception, match="demographic_parity"):
        s.add_requirement("demographic_parity <= 0.05")  # needs protected groups
    s.remove_requirement("sparsity >= 0.5")
    s.reset_requirements()
    assert [r.expr for r in s.requirements] == ["attack_success_rate <= 0.02", "accuracy >= 0.95"]


def test_editor_settings_are_plain_data(trojan):
    bundle, data = trojan
    settings = {s.name: s for s in setting_fields(EDITORS["dynamic-rank-one"], bundle, data)}
    assert settings["samples"].kind == "int" and settings["samples"].default == 1
    assert settings["layer"].kind == "choice" and settings["layer"].optional
    assert settings["layer"].choices == ["conv1", "conv2", "fc1", "out"]
    assert settings["max_accuracy_drop"].kind == "float" and settings["samples"].help


def test_report_has_every_edit_and_validates(trojan):
    s = AuditSession(*trojan)
    s.localize()
    s.run_edit("dynamic-rank-one", {"samples": 1})
    s.run_edit("magnitude-pruning", {"sparsity": 0.1})
    s.run_tradeoff(["rank-one"])
    doc = validate_report(s.build_report(auditor="A. Tester", notes="ok"))
    assert [e["editor"] for e in doc["edits"]] == ["dynamic-rank-one", "magnitude-pruning"]
    assert doc["model"]["sha256_after"] == s.current.sha256
    assert doc["localization"]["layers"][0]["layer"] == s.localization.top_layer
    # the row of this audit's edit is the two edits' combined result, named as such and starred
    ours = "dynamic-rank-one → magnitude-pruning"
    assert {r["method"] for r in doc["tradeoff"]["rows"]} == {"original", ours, "rank-one"}
    assert doc["tradeoff"]["edit"] == ours
    first, last = doc["reproduce"]["command"].split("; auditor ")
    assert "auditor edit" in first and "--editor dynamic-rank-one" in first
    assert "--editor magnitude-pruning" in last and "step1.safetensors" in last
    layers = next(r["layers"] for r in doc["tradeoff"]["rows"] if r["method"] == ours)
    assert set(layers) == {n for e in doc["edits"] for n in e["layers"]}


def test_localize_prepares_the_dynamic_edit_that_follows(trojan):
    """Localize does ahead what the dynamic rank-one edit does first (its checks on the unedited model, its pick
    and ranking), so the edit after it runs no whole-model check and gives the same edit as without."""
    from auditor.editors.rank_one import clear_check_cache
    from auditor.localize import clear_ranking_cache

    s = AuditSession(*trojan)
    clear_check_cache()
    clear_ranking_cache()
    s.localize()
    prepared = s.run_edit("dynamic-rank-one", {"samples": 1}).result
    assert prepared.extras["check_runs"]["kept_runs"] > 0 and prepared.extras["check_runs"]["full_runs"] == 0
    clear_check_cache()
    clear_ranking_cache()
    plain = get_editor("dynamic-rank-one", samples=1).edit(AuditSession(*trojan).current, trojan[1])
    assert plain.extras["check_runs"]["kept_runs"] == 0
    assert prepared.bundle.sha256 == plain.bundle.sha256


def test_read_upload_sanitises_names(tmp_path):
    path = read_upload(b"x", "../../etc/my model.safetensors", tmp_path)
    assert path.parent == tmp_path and path.name == "my_model.safetensors"


def test_every_step_reaches_the_audit_log_under_one_run(trojan, tmp_path):
    from auditor.store import AuditLog

    log = AuditLog(tmp_path / "a.db")
    s = AuditSession(*trojan, log=log, user="Ada", model_path="sample_models/digits_cnn_trojan.safetensors")
    s.run_edit("static-rank-one-last", {"samples": 1})
    s.revert(0)
    s.run_edit("dynamic-rank-one", {"samples": 1})
    report = s.build_report()
    s.log_report(report, ["r.html"], downloaded=True)
    assert report.audit_log["run"] == s.run_id  # the report points to its log run (evidence for record-keeping)
    from auditor.report import render_html
    assert f"audit-log run {s.run_id}" in render_html(report)
    entries = log.entries()
    assert [e.kind for e in entries] == ["evaluation", "edit", "evaluation", "revert", "edit", "evaluation", "report"]
    assert {e.run for e in entries} == {s.run_id} and {e.user for e in entries} == {"Ada"}
    assert entries[3].results["undone"] == ["static-rank-one-last"]
    assert entries[4].results["edited_sha256"] == s.current.sha256 == entries[5].model_sha256
    assert entries[-1].reports == ["downloaded as r.html"] and log.verify() == []


def test_saved_model_carries_the_provenance_of_every_edit(trojan, tmp_path):
    import json

    from auditor.models import read_metadata

    s = AuditSession(*trojan)
    s.run_edit("dynamic-rank-one", {"samples": 1})
    s.run_edit("magnitude-pruning", {"sparsity": 0.1})
    path = tmp_path / "m.safetensors"
    path.write_bytes(s.model_bytes())
    meta = json.loads(read_metadata(path)["auditor.edit"])
    assert meta["format"] == "auditor.provenance/1" and meta["editor"] == "magnitude-pruning"
    assert [e["editor"] for e in meta["edits"]] == ["dynamic-rank-one", "magnitude-pruning"]
    assert meta["edits"][0]["sha_after"] == meta["edits"][1]["sha_before"]
    assert meta["original_sha256"] == trojan[0].sha256 and meta["edited_sha256"] == load_model(path).sha256


def test_the_reproduce_command_reproduces_the_report(trojan, tmp_path):
    """The dashboard's command, run as printed, gives the same requirement values and trade-off."""
    import json
    import shlex

    from auditor.cli import main

    s = AuditSession(*trojan, model_path=str(SAMPLES / "digits_cnn_trojan.safetensors"))
    s.run_edit("dynamic-rank-one", {"samples": 1})
    s.run_tradeoff(["finetune"])
    ours = s.build_report().to_dict()
    argv = shlex.split(s.command())
    assert argv[:2] == ["auditor", "audit"] and "--samples" in argv and "--baselines" in argv
    out = tmp_path / "r.json"
    argv = [a for a in argv[2:]]
    for flag in ("--report", "--pdf"):
        i = argv.index(flag)
        del argv[i:i + 2]
    argv[argv.index("--json") + 1] = str(out)
    assert main([*argv[:0], "audit", *argv, "--no-log", "--no-localize", "--quiet",
                 "--out", str(tmp_path / "e.safetensors")]) == 0
    theirs = json.loads(out.read_text())
    assert_same_numbers(ours, theirs)


def test_stale_upload_folders_are_removed_and_a_failed_load_leaves_none(tmp_path, monkeypatch):
    import os
    import tempfile
    import time

    from auditor.audit.uploads import UPLOAD_PREFIX, discard_upload, upload_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale, fresh = tmp_path / (UPLOAD_PREFIX + "stale"), tmp_path / (UPLOAD_PREFIX + "fresh")
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))
    new = upload_folder()
    assert new.parent == tmp_path and new.name.startswith(UPLOAD_PREFIX) and new.is_dir()
    assert not stale.exists() and fresh.exists()
    discard_upload(new)
    assert not new.exists()
