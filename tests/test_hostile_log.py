"""Issue 16, items 3-5: a log whose tampering shows, exit codes CI can trust, and the smaller holes.

Each test is an attack that got through before: it fails on the old code and passes now.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.errors import AuditorError
from auditor.store import GENESIS, AuditLog, parse_anchor
from tests.conftest import ROOT, SAMPLES

ADULT = str(SAMPLES / "adult_mlp.safetensors")


def _log(tmp_path, n=4) -> AuditLog:
    log = AuditLog(tmp_path / "a.db", key_path=tmp_path / "keys" / "log.key")
    for k in range(n):
        log.append("evaluation", passed=False, results={"k": k}, requirements=["accuracy >= 0.9"])
    assert log.verify() == []
    return log


def _sql(log: AuditLog, *statements) -> None:
    con = sqlite3.connect(log.path)
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def _unkeyed(prev: str, row: dict) -> str:
    """The old module's unkeyed hash, as an attacker recomputes it."""
    cols = ("time", "kind", "user", "run", "model_path", "model_sha256", "data_name", "data_sha256",
            "requirements", "passed", "results", "reports", "command")
    body = {c: row[c] for c in cols}
    return hashlib.sha256((prev + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode()).hexdigest()


def _rows(log: AuditLog) -> list[dict]:
    return [e.to_dict() for e in log.entries()]


# --- the key and the anchor ---------------------------------------------------------------------
def test_key_is_created_once_outside_the_database_with_private_permissions(tmp_path):
    log = _log(tmp_path, 1)
    key = tmp_path / "keys" / "log.key"
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert key.read_text().strip() not in log.path.read_bytes().decode("latin-1")
    first = key.read_text()
    AuditLog(log.path, key_path=key).append("report", passed=True)
    assert key.read_text() == first and log.get(1).key_id == log.key_id


def test_anchor_sidecar_follows_every_append_and_log_anchor_prints_it(tmp_path, capsys):
    log = _log(tmp_path, 3)
    side = json.loads(log.anchor_path.read_text())
    assert side["count"] == 3 and side["head"] == log.get(3).hash
    a = log.anchor()
    assert parse_anchor(a["anchor"]) == (3, log.get(3).hash)
    assert main(["log", "anchor", "--db", str(log.path), "--log-key", str(log.key_path)]) == 0
    assert capsys.readouterr().out.strip() == a["anchor"]
    assert main(["log", "verify", "--db", str(log.path), "--log-key", str(log.key_path),
                 "--anchor", a["anchor"]]) == 0


# --- the tampering scenarios: each one verified "ok" before --------------------------------------
def test_insert_or_replace_rewrite_is_caught(tmp_path):
    log = _log(tmp_path)
    row = _rows(log)[1]
    _sql(log, f"INSERT OR REPLACE INTO entries (id, time, kind, requirements, passed, results, reports, prev_hash, "
              f"hash, key_id) VALUES (2, '{row['time']}', 'evaluation', '[\"accuracy >= 0.9\"]', 1, "
              f"'{{\"k\": 1}}', '[]', '{row['prev_hash']}', '{row['hash']}', '{row['key_id']}')")
    assert log.get(2).passed is True  # the rewrite went through the triggers...
    problems = log.verify()
    assert any("entry 2" in p for p in problems), problems  # ...and shows


def test_chain_recomputed_with_the_unkeyed_hash_is_caught(tmp_path):
    log = _log(tmp_path)
    _sql(log, "DROP TRIGGER entries_no_update")
    prev = GENESIS
    for row in _rows(log):  # flip entry 2 from FAIL to PASS, re-chain everything the old way
        if row["id"] == 2:
            row["passed"] = True
        h = _unkeyed(prev, row)  # posing as entries written before keying
        _sql(log, f"UPDATE entries SET passed = {int(bool(row['passed']))}, prev_hash = '{prev}', hash = '{h}', "
                  f"key_id = NULL WHERE id = {row['id']}")
        prev = h
    _sql(log, "CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN SELECT RAISE(ABORT, 'no'); END")
    assert log.get(2).passed is True
    problems = log.verify()
    assert problems and any("anchor" in p or "head" in p for p in problems), problems
    assert main(["log", "verify", "--db", str(log.path), "--log-key", str(log.key_path)]) == 1


def test_chain_recomputed_keeping_the_key_ids_is_caught(tmp_path):
    log = _log(tmp_path)
    _sql(log, "DROP TRIGGER entries_no_update")
    prev = GENESIS
    for row in _rows(log):
        if row["id"] == 2:
            row["passed"] = True
        h = _unkeyed(prev, row)
        _sql(log, f"UPDATE entries SET passed = {int(bool(row['passed']))}, prev_hash = '{prev}', hash = '{h}' "
                  f"WHERE id = {row['id']}")
        prev = h
    problems = log.verify()
    assert any("keyed hash" in p for p in problems) and any("trigger entries_no_update" in p for p in problems)


def test_dropped_triggers_and_deleted_newest_entries_are_caught_and_not_recreated(tmp_path):
    log = _log(tmp_path)
    _sql(log, "DROP TRIGGER entries_no_delete", "DROP TRIGGER entries_no_update", "DELETE FROM entries WHERE id >= 3")
    reopened = AuditLog(log.path, key_path=log.key_path)  # opening no longer re-creates the triggers
    problems = reopened.verify()
    assert any("entries_no_delete" in p and "missing" in p for p in problems), problems
    assert any("2 entries but the anchor records 4" in p for p in problems), problems
    reopened.append("report", passed=True)  # a later append does not launder the truncation
    assert any("anchor records 4" in p or "not the head" in p for p in reopened.verify())
    assert reopened.restore_triggers() == ["entries_no_update", "entries_no_delete"]


def test_truncation_with_the_triggers_restored_is_caught(tmp_path):
    log = _log(tmp_path)
    _sql(log, "DROP TRIGGER entries_no_delete", "DELETE FROM entries WHERE id = 4",
         "CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN SELECT RAISE(ABORT, 'x'); END")
    problems = log.verify()
    assert problems == ["the log has 3 entries but the anchor records 4: entries were deleted (truncated)"]


def test_anchor_file_deleted_or_forged_is_caught(tmp_path):
    log = _log(tmp_path)
    forged = json.loads(log.anchor_path.read_text())
    forged.update(count=2, last_id=2, head=log.get(2).hash)
    log.anchor_path.write_text(json.dumps(forged))
    assert any("altered" in p for p in log.verify())
    log.anchor_path.unlink()
    assert any("anchor file" in p and "missing" in p for p in log.verify())
    log.append("report")  # a missing anchor is not silently re-created by an append
    assert not log.anchor_path.exists()
    assert log.reanchor()["count"] == 5 and log.verify() == []  # explicitly, when the chain verifies
    _sql(log, "DROP TRIGGER entries_no_update")
    with pytest.raises(AuditorError, match="not re-anchoring"):
        log.reanchor()


def test_external_anchor_catches_a_rewrite_of_log_and_sidecar_together(tmp_path):
    """Someone with write access to the folder (not the key) replaces database and sidecar with an older
    copy: only a head kept elsewhere (a report's JSON, `auditor log anchor` in CI output) shows it."""
    log = _log(tmp_path, 2)
    with sqlite3.connect(log.path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    old_db, old_anchor = log.path.read_bytes(), log.anchor_path.read_bytes()
    log.append("evaluation", passed=False)
    recorded = log.anchor()["anchor"]
    with sqlite3.connect(log.path) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    log.path.write_bytes(old_db)
    log.anchor_path.write_bytes(old_anchor)
    assert log.verify() == []  # self-consistent...
    assert any("truncated" in p for p in log.verify(recorded))  # ...but not the log the record saw


def test_old_unkeyed_database_stays_readable_and_says_which_entries_predate_keying(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""CREATE TABLE entries (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL,
        kind TEXT NOT NULL, user TEXT, run TEXT, model_path TEXT, model_sha256 TEXT, data_name TEXT,
        data_sha256 TEXT, requirements TEXT NOT NULL DEFAULT '[]', passed INTEGER, results TEXT NOT NULL
        DEFAULT '{}', reports TEXT NOT NULL DEFAULT '[]', command TEXT, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
        CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries BEGIN SELECT RAISE(ABORT, 'x'); END;
        CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries BEGIN SELECT RAISE(ABORT, 'x'); END;""")
    prev = GENESIS
    for k in range(2):
        row = {"time": f"2024-01-0{k + 1}", "kind": "evaluation", "user": "ada", "run": None, "model_path": None,
               "model_sha256": None, "data_name": "adult", "data_sha256": None, "requirements": [], "passed": True,
               "results": {"k": k}, "reports": [], "command": None}
        h = _unkeyed(prev, row)
        con.execute("INSERT INTO entries (time, kind, user, data_name, requirements, passed, results, reports, "
                    "prev_hash, hash) VALUES (?, 'evaluation', 'ada', 'adult', '[]', 1, ?, '[]', ?, ?)",
                    (row["time"], json.dumps(row["results"]), prev, h))
        prev = h
    con.commit()
    con.close()
    log = AuditLog(db, key_path=tmp_path / "k")
    assert [e.results["k"] for e in log.entries()] == [0, 1]
    log.append("report", passed=True)
    v = log.check()
    assert v.ok and v.count == 3, v.problems
    assert v.notes == ["entries 1-2 predate keyed hashes (unkeyed sha256: whoever can write the database could "
                       "rewrite them unnoticed)"]


def test_report_json_carries_the_anchor(tmp_path, capsys):
    db = tmp_path / "a.db"
    rc = main(["audit", ADULT, "adult", "--require", "accuracy >= 0.5", "--no-localize", "--baselines", "none",
               "--json", str(tmp_path / "r.json"), "--db", str(db)])
    assert rc == 0, capsys.readouterr()
    d = json.loads((tmp_path / "r.json").read_text())
    log = AuditLog(db)
    assert d["audit_log"]["anchor"] == f"1:{log.get(1).hash}"  # the evaluation before the report entry
    assert log.verify(d["audit_log"]["anchor"]) == []


# --- exit codes ---------------------------------------------------------------------------------
def _nested_model(tmp_path, depth=900) -> Path:
    from auditor import load_model
    from auditor.models.files import save_model

    bundle = load_model(ADULT)
    nested: list = []
    for _ in range(depth - 3):
        nested = [nested]
    bundle.spec.provenance = {"notes": nested}
    path = tmp_path / "nested.safetensors"
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 10_000))  # writing it (dataclasses.asdict) recurses too
    try:
        save_model(bundle, path)
    finally:
        sys.setrecursionlimit(old)
    return path


def test_spec_nested_900_deep_is_bad_input_at_load(tmp_path, capsys):
    path = _nested_model(tmp_path)
    assert main(["evaluate", str(path), "adult", "--require", "accuracy >= 0.5", "--no-log"]) == 2
    err = capsys.readouterr().err
    assert "nested more than" in err and err.count("\n") == 1


def test_internal_error_exits_3_with_one_line_and_a_trace_file(tmp_path, capsys, monkeypatch):
    import importlib

    def boom(*a, **k):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(importlib.import_module("auditor.evaluate"), "evaluate", boom)
    assert main(["evaluate", ADULT, "adult", "--require", "accuracy >= 0.5", "--no-log"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("auditor: internal error: ZeroDivisionError: a bug deep inside")
    trace = Path(err.rsplit("full trace in ", 1)[1].strip())
    assert "Traceback" in trace.read_text() and "boom" in trace.read_text()
    trace.unlink()


def test_locked_log_is_a_bounded_wait_and_a_one_line_error_not_a_failed_verdict(tmp_path, capsys, monkeypatch):
    db = tmp_path / "a.db"
    AuditLog(db)
    monkeypatch.setenv("AUDITOR_DB_TIMEOUT", "0.5")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        t0 = time.monotonic()
        rc = main(["evaluate", ADULT, "adult", "--require", "accuracy >= 0.5", "--db", str(db)])
        waited = time.monotonic() - t0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1 and waited < 30
    assert "locked by another process (waited 0.5 s" in err and "all requirements met" in err
    assert "PASS" in out.upper()


def test_failed_pdf_leaves_the_other_reports_and_the_log_entry(tmp_path, capsys, monkeypatch):
    import auditor.report

    def no_pdf(report, path, **k):
        raise AuditorError("Chromium crashed")

    monkeypatch.setattr(auditor.report, "find_chromium", lambda: "/bin/true")
    monkeypatch.setattr(auditor.report, "write_pdf", no_pdf)
    db = tmp_path / "a.db"
    rc = main(["audit", ADULT, "adult", "--require", "accuracy >= 0.5", "--no-localize", "--baselines", "none",
               "--json", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.html"), "--pdf",
               str(tmp_path / "r.pdf"), "--db", str(db)])
    err = capsys.readouterr().err
    assert rc == 2 and "the PDF report" in err and "Chromium crashed" in err and "r.html" in err
    assert (tmp_path / "r.json").exists() and (tmp_path / "r.html").exists() and not (tmp_path / "r.pdf").exists()
    report = AuditLog(db).entries("report")[-1]
    assert [Path(p).name for p in report.reports] == ["r.html", "r.json"]


@pytest.mark.slow
def test_every_cli_exit_is_0_1_2_or_3_in_a_subprocess(tmp_path):
    env = {**os.environ, "AUDITOR_DB": str(tmp_path / "a.db")}
    cases = {("evaluate", ADULT, "adult", "--require", "accuracy >= 0.5"): 0,
             ("evaluate", ADULT, "adult", "--require", "accuracy >= 0.99"): 1,
             ("evaluate", ADULT, "adult", "--require", "demographic_parity <= 1e400"): 2,
             ("evaluate", str(_nested_model(tmp_path)), "adult"): 2}
    for argv, code in cases.items():
        proc = subprocess.run([sys.executable, "-m", "auditor.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == code, (argv, proc.stderr[-2000:])
        if code >= 2:
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


# --- the smaller ones ---------------------------------------------------------------------------
def test_out_equal_to_the_input_is_refused_before_anything_runs(tmp_path, capsys):
    model = tmp_path / "vendor.safetensors"
    model.write_bytes(Path(ADULT).read_bytes())
    link = tmp_path / "link.safetensors"
    link.symlink_to(model)
    before = model.read_bytes()
    for out in (str(model), str(tmp_path / "sub" / ".." / "vendor.safetensors"), str(link)):
        rc = main(["edit", str(model), "adult", "--editor", "magnitude-pruning", "--require", "sparsity >= 0.5",
                   "--out", out, "--db", str(tmp_path / "a.db")])
        assert rc == 2 and "would be overwritten" in capsys.readouterr().err
        rc = main(["audit", str(model), "adult", "--require", "accuracy >= 0.5", "--editor", "magnitude-pruning",
                   "--out", out, "--db", str(tmp_path / "a.db")])
        assert rc == 2 and "would be overwritten" in capsys.readouterr().err
    assert model.read_bytes() == before and not (tmp_path / "a.db").exists()


def test_report_write_never_follows_a_planted_symlink(tmp_path):
    from auditor.report.render import _write

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for planted in (tmp_path / "r.json.tmp", tmp_path / "r.json"):
        planted.symlink_to(victim)
    _write(tmp_path / "r.json", "{}")
    assert victim.read_text() == "precious"
    assert (tmp_path / "r.json").read_text() == "{}" and not (tmp_path / "r.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.tmp", "victim.txt"]  # no temp left


def test_model_save_never_follows_a_planted_symlink(tmp_path):
    from auditor import load_model
    from auditor.models.files import save_model

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "m.safetensors.tmp").symlink_to(victim)
    save_model(load_model(ADULT), tmp_path / "m.safetensors")
    assert victim.read_text() == "precious" and load_model(tmp_path / "m.safetensors").sha256


@pytest.mark.parametrize("expr", ["demographic_parity <= 1e400", "accuracy >= -1e999", "accuracy >= 1e309"])
def test_non_finite_threshold_is_refused(expr):
    from auditor.requirements import parse_requirements

    with pytest.raises(AuditorError, match="not a finite number"):
        parse_requirements([expr])


def test_fifty_megabyte_cell_gives_a_bounded_one_line_error(tmp_path, capsys):
    csv = tmp_path / "big.csv"
    csv.write_text("a,y\n" + "x" * 50_000_000 + ",1\n1,0\n")
    main(["evaluate", ADULT, str(csv), "--target", "y", "--no-log"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 2000, len(err)


def test_dashboard_error_box_is_bounded(monkeypatch):
    import pages.common as common

    shown = []
    monkeypatch.setattr(common.st, "error", lambda text, **k: shown.append(text))
    common.show_error(AuditorError("bad value " + "x" * 50_000_000))
    common.show_error(RuntimeError("y" * 10_000_000))
    assert len(shown) == 2 and all(len(s) < 2000 and "\n" not in s for s in shown)


def test_ansi_escapes_in_values_are_neutralised_in_terminal_tables():
    from auditor.cli.common import format_table

    evil = "white\x1b[2K\x1b[1A\x1b[32mPASS\x1b[0m\r\u202egnp.\x9b31m"
    out = format_table([[evil, "FAIL"]], ["group", "verdict"])
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7f <= ord(c) < 0xa0 or c == "\u202e" for c in out)
    assert "\\x1b[2K" in out and "FAIL" in out


def test_builtin_data_cache_is_bounded():
    import pages.common as common

    assert common.builtin_data._info.max_entries  # streamlit's CachedFunc keeps its settings here


def test_text_columns_are_categorical_under_pandas_string_dtype():
    import pandas as pd

    from auditor.audit.uploads import is_text_column

    df = pd.DataFrame({"race": pd.Series(["a", "b"], dtype="string"), "sex": pd.Series(["f", "m"], dtype=object),
                       "age": [30, 40], "ok": [True, False]})
    assert [c for c in df if is_text_column(df[c])] == ["race", "sex"]


_APPENDER = """
import sys, types
pkg = types.ModuleType("auditor")  # the store alone (fast start)
pkg.__path__ = [sys.argv[3]]
sys.modules["auditor"] = pkg
from auditor.store import AuditLog
log = AuditLog(sys.argv[1])
for k in range(25):
    log.append("evaluation", results={"writer": sys.argv[2], "k": k})
"""


def test_concurrent_writers_lose_nothing_and_leave_the_anchor_at_the_head(tmp_path):
    db = tmp_path / "a.db"
    AuditLog(db)
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(db), str(w), str(ROOT / "auditor")], cwd=ROOT)
             for w in range(4)]
    assert [p.wait(120) for p in procs] == [0] * 4
    log = AuditLog(db)
    v = log.check()
    assert v.ok and not v.notes and v.count == 100, (v.problems, v.notes)
    got = sorted((e.results["writer"], e.results["k"]) for e in log.entries())
    assert got == sorted((str(w), k) for w in range(4) for k in range(25))


def test_a_writer_without_the_logs_key_is_refused_and_verify_makes_no_key(tmp_path):
    """A CI runner without the key file used to start a key of its own and append: `verify` then failed for
    everyone. Appending under another key is refused, and checking never creates a key."""
    from auditor.store import AuditLog

    db = tmp_path / "audit.db"
    AuditLog(db, key_path=tmp_path / "ours.key").append(kind="evaluation", model_sha256="a" * 64, data_name="d")
    runner = AuditLog(db, key_path=tmp_path / "runner.key")
    with pytest.raises(AuditorError, match=r"was written with key .*does not exist.*nothing was appended"):
        runner.append(kind="evaluation", model_sha256="b" * 64, data_name="d")
    assert not (tmp_path / "runner.key").exists()
    with pytest.raises(AuditorError, match="no audit log key at"):
        runner.check()
    assert not (tmp_path / "runner.key").exists()
    (tmp_path / "other.key").write_text("ab" * 32 + "\n")
    with pytest.raises(AuditorError, match="not with .*other.key"):
        AuditLog(db, key_path=tmp_path / "other.key").append(kind="evaluation", model_sha256="c" * 64, data_name="d")
    assert AuditLog(db, key_path=tmp_path / "ours.key").check().ok
