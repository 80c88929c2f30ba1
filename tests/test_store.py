"""The audit log: append-only SQLite in WAL mode that survives a writer killed mid-write."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditor.cli import main
from auditor.errors import AuditorError
from auditor.store import AuditLog, default_db_path

ROOT = Path(__file__).resolve().parent.parent


def test_append_list_show_roundtrip(tmp_path):
    log = AuditLog(tmp_path / "a.db")
    i = log.append("evaluation", user="ada", model_sha256="ab" * 32, data_name="adult", data_sha256="cd" * 32,
                   requirements=["accuracy >= 0.8"], passed=True, results={"metrics": {"accuracy": 0.85}})
    j = log.append("report", reports=["/tmp/r.html"], passed=False, results={"verdict": {"status": "FAIL"}})
    assert (i, j) == (1, 2) and len(log) == 2
    e = log.get(1)
    assert e.kind == "evaluation" and e.user == "ada" and e.passed is True
    assert e.results == {"metrics": {"accuracy": 0.85}} and e.requirements == ["accuracy >= 0.8"]
    assert [x.id for x in log.entries("report")] == [2] and log.get(2).reports == ["/tmp/r.html"]
    assert [x.id for x in log.entries(model_sha256="abab")] == [1]
    assert log.verify() == []
    with sqlite3.connect(log.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(AuditorError, match="no entry 9"):
        log.get(9)
    with pytest.raises(AuditorError, match="unknown audit log entry kind"):
        log.append("cleanup")


def test_entries_cannot_be_changed_or_deleted(tmp_path):
    log = AuditLog(tmp_path / "a.db")
    log.append("evaluation", passed=False)
    con = sqlite3.connect(log.path)
    for sql in ("UPDATE entries SET passed = 1", "DELETE FROM entries"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    con.close()
    assert log.get(1).passed is False


def test_verify_detects_an_entry_altered_behind_its_back(tmp_path):
    log = AuditLog(tmp_path / "a.db")
    for k in range(3):
        log.append("evaluation", passed=False, results={"k": k})
    con = sqlite3.connect(log.path)  # someone drops the guard and rewrites a verdict
    con.execute("DROP TRIGGER entries_no_update")
    con.execute("UPDATE entries SET passed = 1 WHERE id = 2")
    con.commit()
    con.close()
    problems = log.verify()
    assert problems and "entry 2" in problems[0]


_WRITER = """
import sys, types
pkg = types.ModuleType("auditor")  # the store alone, without importing torch & co. (faster start)
pkg.__path__ = [sys.argv[2]]
sys.modules["auditor"] = pkg
from auditor.store import AuditLog
log = AuditLog(sys.argv[1])
blob = "x" * 200_000  # large entries: the kill lands mid-write more often than not
for k in range(100_000):
    i = log.append("evaluation", model_sha256=f"{k:064x}", results={"k": k, "blob": blob}, passed=k % 2 == 0)
    print(i, k, flush=True)
"""


def test_killed_writer_loses_no_earlier_record(tmp_path):
    db = tmp_path / "audit.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(ROOT / "auditor")],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    committed = []
    deadline = time.monotonic() + 60
    while len(committed) < 10 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(tuple(map(int, line.split())))
    os.kill(proc.pid, signal.SIGKILL)  # mid-write: it was appending the next entry
    proc.wait()
    proc.stdout.close()
    assert len(committed) >= 10, "the writer did not start"
    log = AuditLog(db)
    assert log.verify() == []  # integrity check ok, hash chain intact
    by_id = {e.id: e for e in log.entries()}
    for i, k in committed:  # every entry reported as written is there, whole
        assert by_id[i].results["k"] == k and by_id[i].model_sha256 == f"{k:064x}"
        assert len(by_id[i].results["blob"]) == 200_000 and by_id[i].passed is (k % 2 == 0)
    assert len(by_id) in (len(committed), len(committed) + 1)  # at most the one in flight also made it
    assert log.append("report", passed=True) == max(by_id) + 1  # and the log takes new entries


def test_default_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITOR_DB", str(tmp_path / "env.db"))
    assert default_db_path() == tmp_path / "env.db"
    assert AuditLog().path == tmp_path / "env.db"
    monkeypatch.delenv("AUDITOR_DB")
    assert default_db_path() == Path.home() / ".auditor" / "audit.db"


def test_not_a_database_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("this is not sqlite " * 100)
    with pytest.raises(AuditorError, match="cannot open the audit log"):
        AuditLog(bad)


def test_log_cli_list_show_verify(tmp_path, capsys):
    db = tmp_path / "a.db"
    log = AuditLog(db)
    log.append("evaluation", user="ada", model_sha256="ab" * 32, data_name="adult", passed=False,
               results={"label": "before"})
    log.append("edit", model_sha256="cd" * 32, data_name="adult", passed=True,
               results={"editor": "finetune-fairness", "layers": ["fc1"]})
    assert main(["log", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "evaluation" in out and "finetune-fairness on fc1" in out and "FAIL" in out and "PASS" in out
    assert main(["log", "list", "--db", str(db), "--kind", "edit"]) == 0
    out = capsys.readouterr().out
    assert "edit" in out and "evaluation" not in out
    assert main(["log", "--db", str(db), "show", "1", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["user"] == "ada" and shown["results"] == {"label": "before"}
    assert main(["log", "verify", "--db", str(db)]) == 0
    assert "2 entries" in capsys.readouterr().out
    assert main(["log", "show", "7", "--db", str(db)]) == 2
    assert "no entry 7" in capsys.readouterr().err
