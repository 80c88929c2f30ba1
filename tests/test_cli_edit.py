"""`auditor localize` and `auditor edit`: tables, provenance in the edited file, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.models import load_model, read_metadata, weights_sha256

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
TROJAN = str(SAMPLES / "digits_cnn_trojan.safetensors")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_localize_prints_ranked_layers(tmp_path, capsys):
    out = tmp_path / "loc.json"
    assert main(["localize", TROJAN, "digits-trojan", "--samples", "2", "--seed", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fc1" in text and "conv1" in text and "rank" in text
    payload = json.loads(out.read_text())
    assert [r["rank"] for r in payload["layers"]] == [1, 2, 3, 4]
    assert payload["layers"][0]["layer"] == "fc1" and payload["samples"] == 2


def test_localize_tabular_features_and_fairness(capsys):
    assert main(["localize", str(SAMPLES / "adult_mlp.safetensors"), "adult", "--rows", "64", "--steps", "8"]) == 0
    text = capsys.readouterr().out
    assert "marital-status" in text and "layers carrying the score gap" in text


def test_edit_writes_a_file_that_evaluate_confirms(tmp_path, capsys):
    sha_before = weights_sha256(load_model(TROJAN).model)
    out = tmp_path / "edited.safetensors"
    report = tmp_path / "edit.json"
    rc = main(["edit", TROJAN, "digits-trojan", "--editor", "dynamic-rank-one", "--require",
               "attack_success_rate <= 0.02", "--samples", "1", "--out", str(out), "--json", str(report)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "PASS" in text and "FAIL" in text  # before FAIL, after PASS
    # a warning is said of the model it is about (the redirected backdoor is the edited model's)
    assert "after the edit: the trigger still changes predictions" in text
    assert weights_sha256(load_model(TROJAN).model) == sha_before  # the original file is untouched
    meta = json.loads(read_metadata(out)["auditor.edit"])
    for key in ("editor", "hyperparameters", "layers", "changes", "seconds", "device", "original_sha256",
                "data_sha256", "requirements"):
        assert key in meta, key
    assert meta["editor"] == "dynamic-rank-one" and meta["hyperparameters"]["samples"] == 1
    assert meta["original_sha256"] == sha_before and meta["layers"] == ["fc1"]
    assert meta["edited_sha256"] == weights_sha256(load_model(out).model)
    assert meta["requirements"] == ["attack_success_rate <= 0.02"] and meta["after"]["passed"]
    assert json.loads(report.read_text())["after"]["passed"] is True
    assert main(["evaluate", str(out), "digits-trojan", "--require", "attack_success_rate <= 0.02"]) == 0
    assert main(["evaluate", TROJAN, "digits-trojan", "--require", "attack_success_rate <= 0.02"]) == 1


def test_edit_exit_1_when_the_requirement_still_fails(tmp_path, capsys):
    out = tmp_path / "ft.safetensors"
    rc = main(["edit", TROJAN, "digits-trojan", "--editor", "finetune-last-layer", "--samples", "1",
               "--set", "steps=5", "--require", "attack_success_rate <= 0.02", "--out", str(out)])
    assert rc == 1 and out.exists()
    meta = json.loads(read_metadata(out)["auditor.edit"])
    assert meta["hyperparameters"]["steps"] == 5 and meta["layers"] == ["out"]


def test_edit_settings_and_fixes(tmp_path, capsys):
    out = tmp_path / "r1.safetensors"
    rc = main(["edit", TROJAN, "digits-trojan", "--editor", "rank-one", "--layer", "out", "--set", "mu=0.1",
               "--set", "rank=none", "--fix", "3=1", "--out", str(out)])
    # a Trojan editor does not fix given mistakes: refused before anything runs, naming those that do
    assert rc == 2 and "does not fix given mistakes" in capsys.readouterr().err and not out.exists()
    rc = main(["edit", TROJAN, "digits-trojan", "--editor", "finetune-fix", "--fix", "3=1",
               "--out", str(tmp_path / "f.safetensors")])
    text = capsys.readouterr().out
    # --fix builds Fixes, evaluated before and after, and asks for them
    assert "edit_success >= 1" in text and rc in (0, 1)
    rc = main(["edit", TROJAN, "digits-trojan", "--editor", "rank-one", "--layer", "out", "--set", "mu=0.1",
               "--set", "rank=none", "--out", str(out)])
    meta = json.loads(read_metadata(out)["auditor.edit"])
    assert meta["layers"] == ["out"] and meta["hyperparameters"]["mu"] == 0.1


@pytest.mark.parametrize("argv, message", [
    (["--editor", "nope"], "unknown editor"),
    (["--editor", "rank-one", "--set", "bogus=1"], "no setting 'bogus'"),
    (["--editor", "finetune", "--layer", "fc1"], "no setting 'layer'"),
    (["--editor", "rank-one", "--set", "samples=two"], "not a valid int"),
    (["--editor", "rank-one", "--require", "attack_success <= 1"], "unknown metric"),
    (["--editor", "rank-one", "--layer", "relu1"], "only Linear and Conv2d"),
])
def test_edit_bad_input_exits_2(tmp_path, capsys, argv, message):
    rc = main(["edit", TROJAN, "digits-trojan", "--out", str(tmp_path / "x.safetensors"), *argv])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_edit_refuses_data_without_pairs(tmp_path, capsys):
    rc = main(["edit", TROJAN, "digits", "--editor", "rank-one", "--out", str(tmp_path / "x.safetensors")])
    assert rc == 2 and "corrupted twins" in capsys.readouterr().err


def test_without_a_requirement_the_edit_is_judged_on_what_the_editor_aims_for(tmp_path, capsys):
    """No --require: a Trojan editor on data with a trigger is judged on attack success (and says so);
    an editor with nothing to aim for says that nothing was judged instead of 'PASS: 0 of 0'."""
    rc = main(["edit", TROJAN, "digits-trojan", "--editor", "dynamic-rank-one", "--out",
               str(tmp_path / "e.safetensors"), "--no-log"])
    out = capsys.readouterr().out
    assert "no --require given: judged on attack_success_rate <= 0.02" in out
    assert rc == 0 and "PASS: 1 of 1 requirements met after the edit (0 of 1 before)" in out
    rc = main(["edit", TROJAN, "digits-trojan", "--editor", "magnitude-pruning", "--out",
               str(tmp_path / "p.safetensors"), "--no-log"])
    out = capsys.readouterr().out
    assert "no requirement was given, so none was judged" in out and "0 of 0" not in out


def test_json_never_overwrites_an_input_the_audit_log_or_a_links_target(tmp_path, monkeypatch, capsys):
    """`--json` was a plain write: it replaced the model or the data it was asked about, the audit log
    (the whole history gone, exit 0) or a file a planted link pointed at."""
    import shutil

    model = tmp_path / "m.safetensors"
    shutil.copy(TROJAN, model)
    before = model.read_bytes()
    db = tmp_path / "audit.db"
    monkeypatch.setenv("AUDITOR_DB", str(db))
    monkeypatch.setenv("AUDITOR_LOG_KEY", str(tmp_path / "log.key"))
    assert main(["evaluate", str(model), "digits-trojan"]) == 0 and db.exists()  # a logged run: some history
    history = db.read_bytes()
    capsys.readouterr()
    for cmd in (["evaluate"], ["localize"]):
        assert main([*cmd, str(model), "digits-trojan", "--json", str(model)]) == 2
        assert "is the input model" in capsys.readouterr().err and model.read_bytes() == before
    assert main(["evaluate", str(model), "digits-trojan", "--json", str(db), "--no-log"]) == 2
    assert "is the input db" in capsys.readouterr().err and db.read_bytes() == history
    assert main(["evaluate", str(model), "digits-trojan", "--json", str(tmp_path / "log.key"), "--no-log"]) == 2
    assert main(["evaluate", str(model), "digits-trojan", "--json", str(tmp_path), "--no-log"]) == 2
    assert "is a folder" in capsys.readouterr().err
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (tmp_path / "link.json").symlink_to(target)
    assert main(["evaluate", str(model), "digits-trojan", "--json", str(tmp_path / "link.json"), "--no-log"]) == 0
    assert target.read_text() == "keep me" and json.loads((tmp_path / "link.json").read_text())
    assert not (tmp_path / "link.json").is_symlink()
    out_dir = tmp_path / "edited.safetensors"
    out_dir.mkdir()
    assert main(["edit", str(model), "digits-trojan", "--editor", "rank-one", "--out", str(out_dir), "--no-log"]) == 2
    assert "is a folder" in capsys.readouterr().err
