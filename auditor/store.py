"""The audit log: an append-only SQLite database (WAL mode) of every evaluation, edit and report.

Each entry records when, who (if given), what kind, the model and data hashes, the
requirements, the results and the paths of the reports written. Entries are never updated or
deleted (triggers refuse it) and each one carries the sha256 of its content chained to the
previous entry's, so `verify()` detects an entry altered outside this module. Every append is
one committed transaction with `synchronous=FULL`: a process killed mid-write loses at most the
entry it was writing, never an earlier one, and leaves a readable database.

    >>> log = AuditLog("/tmp/audit.db")                                # doctest: +SKIP
    >>> log.append("evaluation", model_sha256="ab..", passed=False)   # doctest: +SKIP
    1
    >>> [e.kind for e in log.entries()]                                # doctest: +SKIP
    ['evaluation']

The default database is `~/.auditor/audit.db`; the environment variable `AUDITOR_DB` or the
CLI's `--db` choose another.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import AuditorError

KINDS = ("evaluation", "edit", "revert", "report")
_COLUMNS = ("time", "kind", "user", "run", "model_path", "model_sha256", "data_name", "data_sha256",
            "requirements", "passed", "results", "reports", "command", "prev_hash", "hash")
_JSON_COLUMNS = ("requirements", "results", "reports")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    user TEXT,
    run TEXT,
    model_path TEXT,
    model_sha256 TEXT,
    data_name TEXT,
    data_sha256 TEXT,
    requirements TEXT NOT NULL DEFAULT '[]',
    passed INTEGER,
    results TEXT NOT NULL DEFAULT '{}',
    reports TEXT NOT NULL DEFAULT '[]',
    command TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_model ON entries(model_sha256);
CREATE INDEX IF NOT EXISTS entries_run ON entries(run);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted'); END;
"""
GENESIS = "0" * 64


def default_db_path() -> Path:
    """`$AUDITOR_DB`, else `~/.auditor/audit.db`."""
    env = os.environ.get("AUDITOR_DB")
    return Path(env).expanduser() if env else Path.home() / ".auditor" / "audit.db"


def current_user() -> str | None:
    """The login name, or None when it cannot be found (containers without a passwd entry)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 (getpass raises several kinds)
        return None


@dataclass
class Entry:
    """One row of the audit log (JSON columns decoded)."""

    id: int
    time: str
    kind: str
    user: str | None = None
    run: str | None = None
    model_path: str | None = None
    model_sha256: str | None = None
    data_name: str | None = None
    data_sha256: str | None = None
    requirements: list = field(default_factory=list)
    passed: bool | None = None
    results: dict = field(default_factory=dict)
    reports: list = field(default_factory=list)
    command: str | None = None
    prev_hash: str = GENESIS
    hash: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _content_hash(prev_hash: str, record: dict) -> str:
    body = {k: record[k] for k in _COLUMNS if k not in ("prev_hash", "hash")}
    text = prev_hash + json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class AuditLog:
    """Append-only audit log in one SQLite file (created on first use, WAL mode)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser() if path else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(self._connect()) as con:
                con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise AuditorError(f"cannot open the audit log {self.path}: {exc} (is it an SQLite file?)") from None
        except OSError as exc:
            raise AuditorError(f"cannot create the audit log {self.path}: {exc.strerror}") from None

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.row_factory = sqlite3.Row
        return con

    def append(self, kind: str, *, user: str | None = None, run: str | None = None, model_path: str | None = None,
               model_sha256: str | None = None, data_name: str | None = None, data_sha256: str | None = None,
               requirements: list | None = None, passed: bool | None = None, results: dict | None = None,
               reports: list | None = None, command: str | None = None, time: str | None = None) -> int:
        """Add one entry in its own transaction; returns its id."""
        if kind not in KINDS:
            raise AuditorError(f"unknown audit log entry kind {kind!r}; valid: {', '.join(KINDS)}")
        record = {"time": time or datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "kind": kind,
                  "user": user if user is not None else current_user(), "run": run, "model_path": model_path,
                  "model_sha256": model_sha256, "data_name": data_name, "data_sha256": data_sha256,
                  "requirements": _jsonable(requirements or []), "passed": None if passed is None else bool(passed),
                  "results": _jsonable(results or {}), "reports": [str(p) for p in (reports or [])],
                  "command": command}
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")  # one writer at a time: the hash chain stays linear
            try:
                row = con.execute("SELECT hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
                record["prev_hash"] = row["hash"] if row else GENESIS
                record["hash"] = _content_hash(record["prev_hash"], record)
                values = [json.dumps(record[c]) if c in _JSON_COLUMNS else record[c] for c in _COLUMNS]
                values[_COLUMNS.index("passed")] = None if record["passed"] is None else int(record["passed"])
                cur = con.execute(f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES "
                                  f"({', '.join('?' * len(_COLUMNS))})", values)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            return int(cur.lastrowid)

    @staticmethod
    def _entry(row: sqlite3.Row) -> Entry:
        d = dict(row)
        for c in _JSON_COLUMNS:
            d[c] = json.loads(d[c]) if d[c] else ([] if c != "results" else {})
        d["passed"] = None if d["passed"] is None else bool(d["passed"])
        return Entry(**d)

    def entries(self, kind: str | None = None, *, model_sha256: str | None = None, run: str | None = None,
                limit: int | None = None, newest_first: bool = False) -> list[Entry]:
        """Entries in order of writing (optionally only one kind, model or run; the last `limit`)."""
        where, args = [], []
        for col, val in (("kind", kind), ("run", run)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        if model_sha256:
            where.append("model_sha256 LIKE ?")
            args.append(model_sha256 + "%")
        sql = "SELECT * FROM entries" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with closing(self._connect()) as con:
            rows = [self._entry(r) for r in con.execute(sql, args)]
        return rows if newest_first else rows[::-1]

    def get(self, entry_id: int) -> Entry:
        with closing(self._connect()) as con:
            row = con.execute("SELECT * FROM entries WHERE id = ?", (int(entry_id),)).fetchone()
        if row is None:
            raise AuditorError(f"the audit log {self.path} has no entry {entry_id}")
        return self._entry(row)

    def __len__(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    def verify(self) -> list[str]:
        """Problems found (empty when the database is sound and every entry's hash chain holds)."""
        problems = []
        with closing(self._connect()) as con:
            check = con.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                problems.append(f"SQLite integrity check: {check}")
            prev = GENESIS
            for row in con.execute("SELECT * FROM entries ORDER BY id"):
                e = self._entry(row)
                record = e.to_dict()
                if e.prev_hash != prev:
                    problems.append(f"entry {e.id}: does not follow entry before it (an entry was removed?)")
                if _content_hash(e.prev_hash, record) != e.hash:
                    problems.append(f"entry {e.id}: content does not match its hash (changed after writing)")
                prev = e.hash
        return problems


def log_evaluation(log: AuditLog, evaluation, *, model_path: str | None = None, user: str | None = None,
                   run: str | None = None, command: str | None = None, label: str | None = None) -> int:
    """Record an `Evaluation` (from `auditor.evaluate`)."""
    d = evaluation.to_dict()
    results = {"metrics": d["metrics"], "requirements": d["requirements"], "split": d["data"]["split"],
               "rows": d["data"]["rows"]}
    if label:
        results["label"] = label
    return log.append("evaluation", user=user, run=run, model_path=model_path, model_sha256=evaluation.model_sha256,
                      data_name=evaluation.data_name, data_sha256=evaluation.data_sha256,
                      requirements=[r["expr"] for r in d["requirements"]], passed=evaluation.passed,
                      results=results, command=command)


def log_edit(log: AuditLog, result, *, original_sha256: str, data=None, requirements=(), passed: bool | None = None,
             model_path: str | None = None, user: str | None = None, run: str | None = None,
             command: str | None = None) -> int:
    """Record an `EditResult` (from `Editor.edit`): editor, settings, layers, size of the change."""
    d = result.to_dict()
    results = {k: d[k] for k in ("editor", "hyperparameters", "layers", "changes", "seconds", "device")}
    results.update(original_sha256=original_sha256, edited_sha256=d["model_sha256"])
    return log.append("edit", user=user, run=run, model_path=model_path, model_sha256=d["model_sha256"],
                      data_name=getattr(data, "name", None), data_sha256=getattr(data, "sha256", None),
                      requirements=[getattr(r, "expr", str(r)) for r in requirements], passed=passed,
                      results=results, command=command)
