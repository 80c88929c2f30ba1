"""`auditor audit`: evaluate, localize, edit, report, log; exit 0/1/2; same seed, same numbers."""
import json

import pytest

from auditor import load_model
from auditor.cli import main
from auditor.models import read_metadata
from auditor.report import stable, validate_report
from auditor.store import AuditLog
from tests.conftest import SAMPLES
from tests.fixtures import assert_same_numbers

TROJAN = str(SAMPLES / "digits_cnn_trojan.safetensors")
ADULT = str(SAMPLES / "adult_mlp.safetensors")
TROJAN_ARGS = ["audit", TROJAN, "digits-trojan", "--require", "attack_success_rate <= 0.02",
               "--require", "accuracy >= 0.95", "--editor", "dynamic-rank-one", "--baselines", "static-rank-one-last"]


def test_trojan_audit_passes_writes_report_model_and_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "audit.db"
    rc = main([*TROJAN_ARGS, "--report", "r.html", "--json", "r.json", "--db", str(db), "--auditor", "Ada"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("PASS: 2 of 2 requirements met after the dynamic-rank-one edit")
    d = validate_report(json.loads((tmp_path / "r.json").read_text()))
    assert d["verdict"]["passed"] and d["requirements"][0]["after"]["value"] <= 0.02
    assert d["requirements"][1]["after"]["value"] >= 0.95
    assert d["reproduce"]["command"].startswith("auditor audit ") and "--seed 0" in d["reproduce"]["command"]
    edited = load_model(tmp_path / "r_edited.safetensors")  # the edited model, next to the report
    assert edited.sha256 == d["model"]["sha256_after"] != d["model"]["sha256_before"]
    assert json.loads(read_metadata(tmp_path / "r_edited.safetensors")["auditor.edit"])["editor"] == "dynamic-rank-one"
    html = (tmp_path / "r.html").read_text()
    assert '<div class="status">PASS</div>' in html and d["model"]["sha256_after"] in html
    entries = AuditLog(db).entries()
    assert [e.kind for e in entries] == ["evaluation", "edit", "evaluation", "report"]
    assert len({e.run for e in entries}) == 1 and all(e.user == "Ada" for e in entries)
    assert entries[0].passed is False and entries[-1].passed is True
    assert entries[1].results["edited_sha256"] == d["model"]["sha256_after"]
    assert [p.rsplit("/", 1)[-1] for p in entries[-1].reports] == ["r.html", "r.json"]


def test_a_second_audit_keeps_the_first_edited_model(tmp_path, monkeypatch, capsys):
    """Without --out the edited model goes next to the report; a second audit writes *_edited-2 and leaves
    the first one as it was."""
    monkeypatch.chdir(tmp_path)
    args = [*TROJAN_ARGS, "--json", "r.json", "--no-log", "--baselines", "none", "--no-localize"]
    assert main(args) == 0
    first = (tmp_path / "r_edited.safetensors").read_bytes()
    assert main([*args, "--samples", "5"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "r_edited.safetensors").read_bytes() == first and "r_edited-2.safetensors" in out
    d = json.loads((tmp_path / "r.json").read_text())
    assert load_model(tmp_path / "r_edited-2.safetensors").sha256 == d["model"]["sha256_after"]


def test_same_seed_same_numbers(tmp_path, monkeypatch):
    reports = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        assert main([*TROJAN_ARGS, "--json", "r.json", "--no-log", "--quiet", "--seed", "3"]) == 0
        reports.append(json.loads((tmp_path / name / "r.json").read_text()))
    a, b = reports
    assert stable(a) == stable(b)
    assert a["model"]["sha256_after"] == b["model"]["sha256_after"]
    assert a["environment"]["seed"] == 3


def test_fairness_audit_with_finetune_fairness(tmp_path, capsys):
    rc = main(["audit", ADULT, "adult", "--require", "demographic_parity <= 0.05", "--require", "accuracy >= 0.82",
               "--editor", "finetune-fairness", "--baselines", "threshold-optimizer",
               "--json", str(tmp_path / "a.json"),
               "--out", str(tmp_path / "fair.safetensors"), "--no-log"])
    assert rc == 0, capsys.readouterr().out
    d = validate_report(json.loads((tmp_path / "a.json").read_text()))
    dp, acc = d["requirements"]
    assert dp["before"]["value"] > 0.1 and dp["after"]["value"] <= 0.05 and acc["after"]["value"] >= 0.82
    assert load_model(tmp_path / "fair.safetensors").sha256 == d["model"]["sha256_after"]
    assert d["localization"]["features"] and d["localization"]["layers"]
    rows = {r["method"]: r for r in d["tradeoff"]["rows"]}
    assert list(rows) == ["original", "finetune-fairness", "threshold-optimizer"]
    assert rows["finetune-fairness"]["value"] == pytest.approx(dp["after"]["value"])
    assert rows["threshold-optimizer"]["kind"] == "post-processing" and "protected attribute" in rows[
        "threshold-optimizer"]["note"]


def test_requirement_not_met_exits_1(tmp_path, capsys):
    rc = main(["audit", ADULT, "adult", "--require", "demographic_parity <= 0.05", "--no-localize",
               "--report", str(tmp_path / "f.html"), "--db", str(tmp_path / "a.db")])
    assert rc == 1
    assert capsys.readouterr().out.startswith("FAIL: 0 of 1 requirements met (no edit applied).")
    assert '<div class="status">FAIL</div>' in (tmp_path / "f.html").read_text()
    assert [e.kind for e in AuditLog(tmp_path / "a.db").entries()] == ["evaluation", "report"]
    assert not list(tmp_path.glob("*.safetensors"))  # no edit, no model written


@pytest.mark.parametrize("extra, message", [
    (["--require", "acuracy >= 0.9"], "unknown metric 'acuracy'"),
    (["--require", "accuracy >= 0.9", "--editor", "nope"], "unknown editor 'nope'"),
    (["--require", "accuracy >= 0.9", "--pdf", "out.txt"], "--pdf must end in .pdf"),
    (["--require", "accuracy >= 0.9", "--set", "steps=3"], "give --editor NAME too"),
    (["--require", "accuracy >= 0.9", "--editor", "rank-one"], "cannot edit this model"),
    (["--require", "accuracy >= 0.9", "--editor", "rank-one", "--set", "nope=1"], "has no setting 'nope'"),
    (["--require", "accuracy >= 0.9", "--baselines", "nope"], "unknown baseline 'nope'"),
    ([], "at least one --require"),
])
def test_bad_input_exits_2_with_one_line(extra, message, tmp_path, capsys):
    assert main(["audit", ADULT, "adult", *extra, "--db", str(tmp_path / "a.db")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_and_edit_commands_are_logged(tmp_path, capsys):
    db = str(tmp_path / "a.db")
    assert main(["evaluate", ADULT, "adult", "--require", "demographic_parity <= 0.05", "--db", db]) == 1
    assert main(["edit", TROJAN, "digits-trojan", "--editor", "static-rank-one-last", "--require",
                 "accuracy >= 0.9", "--out", str(tmp_path / "e.safetensors"), "--db", db]) == 0
    assert main(["evaluate", TROJAN, "digits-trojan", "--no-log", "--db", db]) == 0
    ev, before, ed, after = AuditLog(db).entries()
    assert ev.kind == "evaluation" and ev.passed is False and ev.requirements == ["demographic_parity <= 0.05"]
    assert ev.data_name == "adult" and ev.results["metrics"]["demographic_parity"] > 0.1
    assert ed.kind == "edit" and ed.results["editor"] == "static-rank-one-last"
    # an edit is one run: the original's evaluation, the edit, the edited model's evaluation
    assert [before.results["label"], after.results["label"]] == ["before", "after"]
    assert before.run == ed.run == after.run and after.model_sha256 == ed.model_sha256
    assert ed.model_sha256 == load_model(tmp_path / "e.safetensors").sha256


def test_the_reproduce_command_of_a_cli_report_reproduces_it(tmp_path, capsys):
    """The command a CLI-made report prints, run as printed (outputs redirected), gives the same numbers."""
    import shlex

    first = tmp_path / "first.json"
    assert main([*TROJAN_ARGS, "--samples", "1", "--json", str(first), "--no-log", "--quiet",
                 "--out", str(tmp_path / "a.safetensors")]) == 0
    ours = json.loads(first.read_text())
    argv = shlex.split(ours["reproduce"]["command"])
    assert argv[:2] == ["auditor", "audit"] and "--samples" in argv and "--seed" in argv
    again = tmp_path / "again.json"
    argv[argv.index("--json") + 1] = str(again)
    argv[argv.index("--out") + 1] = str(tmp_path / "b.safetensors")
    assert main([*argv[1:], "--no-log", "--quiet"]) == 0
    theirs = json.loads(again.read_text())
    assert_same_numbers(ours, theirs)


def test_an_audit_whose_log_cannot_be_written_still_writes_its_outputs(tmp_path, capsys):
    """A locked, read-only or other-key log used to stop `auditor audit` before any report was written."""
    from auditor.store import AuditLog

    db = tmp_path / "a.db"
    AuditLog(db, key_path=tmp_path / "ours.key").append(kind="evaluation", model_sha256="a" * 64, data_name="d")
    rc = main(["audit", ADULT, "adult", "--require", "accuracy >= 0.8", "--no-localize", "--baselines", "none",
               "--json", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.html"), "--db", str(db),
               "--log-key", str(tmp_path / "other.key")])
    err = capsys.readouterr().err
    assert rc == 2 and "the audit completed (PASS) and wrote" in err and "not logged" in err
    assert (tmp_path / "r.json").exists() and (tmp_path / "r.html").exists()
    assert not (tmp_path / "other.key").exists()
