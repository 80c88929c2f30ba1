"""The audit log: an append-only SQLite database (WAL mode) of every evaluation, edit and report.

Each entry records when, who (if given), what kind, the model and data hashes, the
requirements, the results and the paths of the reports written. Entries are never updated or
deleted (triggers refuse it) and each one carries an HMAC-SHA256 of its content chained to the
previous entry's, keyed with a secret kept outside the database (`$AUDITOR_LOG_KEY`, default
`~/.auditor/log.key`, created on first use, mode 0600): whoever can write the database but not
read the key cannot recompute the chain. The chain's head and the number of entries are anchored
outside the database too: the sidecar `audit.db.anchor` (updated on every append, itself keyed),
every report's JSON, and `auditor log anchor` for an external record. `verify()` checks the chain,
the triggers, and the count and head against the anchor, so a changed, replaced (`INSERT OR
REPLACE`), re-chained or deleted entry and a truncated log are all reported. Entries written
before keying (an old database) are verified with their unkeyed hash and reported as such.

Every append is one committed transaction with `synchronous=FULL`: a process killed mid-write
loses at most the entry it was writing, never an earlier one, and leaves a readable database. A
database locked by another process is waited for at most `$AUDITOR_DB_TIMEOUT` seconds (default
10), then `LogLockedError` says so in one line.

    >>> log = AuditLog("/tmp/audit.db")                                # doctest: +SKIP
    >>> log.append("evaluation", model_sha256="ab..", passed=False)   # doctest: +SKIP
    1
    >>> [e.kind for e in log.entries()]                                # doctest: +SKIP
    ['evaluation']

The default database is `~/.auditor/audit.db`; the environment variable `AUDITOR_DB` or the
CLI's `--db` choose another; `AUDITOR_LOG_KEY` or `--log-key` the key file.
"""
from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import AuditorError

KINDS = ("evaluation", "edit", "revert", "report")
_COLUMNS = ("time", "kind", "user", "run", "model_path", "model_sha256", "data_name", "data_sha256",
            "requirements", "passed", "results", "reports", "command", "prev_hash", "hash")
_JSON_COLUMNS = ("requirements", "results", "reports")
TRIGGERS = ("entries_no_update", "entries_no_delete")

_TABLE = """CREATE TABLE IF NOT EXISTS entries (
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
    hash TEXT NOT NULL,
    key_id TEXT
)"""
_INDEXES = ("CREATE INDEX IF NOT EXISTS entries_model ON entries(model_sha256)",
            "CREATE INDEX IF NOT EXISTS entries_run ON entries(run)")
_TRIGGER_SQL = {
    "entries_no_update": "CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries BEGIN "
                         "SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be changed'); END",
    "entries_no_delete": "CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries BEGIN "
                         "SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted'); END",
}
GENESIS = "0" * 64
DEFAULT_TIMEOUT = 10.0  # seconds to wait for a database another process holds locked


class LogLockedError(AuditorError):
    """The audit log stayed locked by another process for longer than the timeout."""


def default_db_path() -> Path:
    """`$AUDITOR_DB`, else `~/.auditor/audit.db`."""
    env = os.environ.get("AUDITOR_DB")
    return Path(env).expanduser() if env else Path.home() / ".auditor" / "audit.db"


def default_key_path() -> Path:
    """`$AUDITOR_LOG_KEY`, else `~/.auditor/log.key`."""
    env = os.environ.get("AUDITOR_LOG_KEY")
    return Path(env).expanduser() if env else Path.home() / ".auditor" / "log.key"


def _timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("AUDITOR_DB_TIMEOUT", DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT


def load_key(path: str | Path | None = None, *, create: bool = True) -> bytes:
    """The log's HMAC key (32 random bytes, hex in a file of mode 0600), created on first use."""
    path = Path(path).expanduser() if path else default_key_path()
    if not path.exists() and create:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".log.key.", dir=path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, path)  # atomic and never replaces a key another process just made
                except FileExistsError:
                    pass
            finally:
                os.unlink(tmp)
        except OSError as exc:
            raise AuditorError(f"cannot create the audit log key {path}: {exc.strerror}") from None
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise AuditorError(f"cannot read the audit log key {path}: {exc.strerror} (set $AUDITOR_LOG_KEY or "
                           f"--log-key to the key this log was written with)") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise AuditorError(f"the audit log key {path} is not a key (expected 64 hex digits)")
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (which key wrote an entry), not enough to recover it."""
    return hashlib.sha256(b"auditor-log-key-id:" + key).hexdigest()[:16]


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
    key_id: str | None = None  # None: written before entries were keyed (unkeyed sha256)

    def to_dict(self) -> dict:
        return asdict(self)


def _content_text(prev_hash: str, record: dict) -> str:
    body = {k: record[k] for k in _COLUMNS if k not in ("prev_hash", "hash")}
    return prev_hash + json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


def _content_hash(prev_hash: str, record: dict) -> str:
    """The unkeyed hash of entries written before keying (kept to verify old databases)."""
    return hashlib.sha256(_content_text(prev_hash, record).encode()).hexdigest()


def _content_mac(key: bytes, prev_hash: str, record: dict) -> str:
    return hmac.new(key, _content_text(prev_hash, record).encode(), hashlib.sha256).hexdigest()


def _anchor_mac(key: bytes, count: int, last_id: int, head: str) -> str:
    return hmac.new(key, f"auditor-log-anchor:{count}:{last_id}:{head}".encode(), hashlib.sha256).hexdigest()


@dataclass
class Verification:
    """What `AuditLog.check()` found: problems (tampering, damage) and notes (worth knowing, not wrong)."""

    count: int
    head: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _ranges(ids: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out, start = [], None
    for i, x in enumerate(ids):
        if start is None:
            start = x
        if i + 1 == len(ids) or ids[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


def parse_anchor(text: str) -> tuple[int, str]:
    """'COUNT:HEAD' (as `auditor log anchor` prints it) -> (count, head)."""
    count, sep, head = str(text).strip().partition(":")
    head = head.strip().lower()
    if not sep or not count.strip().isdigit() or len(head) != 64 or any(c not in "0123456789abcdef" for c in head):
        raise AuditorError(f"an anchor is COUNT:HEAD as `auditor log anchor` prints it (e.g. 12:3fa9...); "
                           f"got {str(text)[:80]!r}")
    return int(count), head


class AuditLog:
    """Append-only audit log in one SQLite file (created on first use, WAL mode), keyed and anchored.

    `key_path`: the HMAC key file (default `$AUDITOR_LOG_KEY` or `~/.auditor/log.key`, created on
    first use); `timeout`: seconds to wait for a database another process holds locked (default
    `$AUDITOR_DB_TIMEOUT` or 10)."""

    def __init__(self, path: str | Path | None = None, *, key_path: str | Path | None = None,
                 timeout: float | None = None):
        self.path = Path(path).expanduser() if path else default_db_path()
        self.key_path = Path(key_path).expanduser() if key_path else default_key_path()
        self.timeout = _timeout() if timeout is None else max(0.0, float(timeout))
        self.anchor_path = self.path.with_name(self.path.name + ".anchor")
        self._key: bytes | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditorError(f"cannot create the audit log {self.path}: {exc.strerror}") from None
        with self._db() as con:
            self._open(con)

    # -- connections ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
        except BaseException:
            con.close()
            raise
        con.row_factory = sqlite3.Row
        return con

    def _locked(self) -> LogLockedError:
        return LogLockedError(f"the audit log {self.path} is locked by another process (waited {self.timeout:g} s; "
                              f"$AUDITOR_DB_TIMEOUT sets the wait)")

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection; SQLite's errors become one-line `AuditorError`s (a lock: `LogLockedError`)."""
        con = None
        try:
            con = self._connect()
            yield con
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise self._locked() from None
            raise AuditorError(f"cannot use the audit log {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise AuditorError(f"cannot open the audit log {self.path}: {exc} (is it an SQLite file?)") from None
        except OSError as exc:
            raise AuditorError(f"cannot create the audit log {self.path}: {exc.strerror}") from None
        finally:
            if con is not None:
                con.close()

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self.key_path)
        return self._key

    @property
    def key_id(self) -> str:
        return key_id(self.key)

    def _open(self, con: sqlite3.Connection) -> None:
        """Create the schema and the anchor (new log) or add the key column (old log). Triggers
        found missing are left missing: `verify` reports them, `restore_triggers` puts them back."""
        def columns():
            return {r[1] for r in con.execute("PRAGMA table_info(entries)")}

        cols = columns()
        if cols and "key_id" in cols:
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            cols = columns()  # another process may have done it meanwhile
            if not cols:
                for sql in (_TABLE, *_INDEXES, *_TRIGGER_SQL.values()):
                    con.execute(sql)
                self._write_anchor(*self._state(con))
            elif "key_id" not in cols:  # written by a version without keyed entries: migrate
                con.execute("ALTER TABLE entries ADD COLUMN key_id TEXT")
                if not self.anchor_path.exists():
                    self._write_anchor(*self._state(con))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- the anchor -----------------------------------------------------------------------------
    @staticmethod
    def _state(con: sqlite3.Connection) -> tuple[int, int, str]:
        """(number of entries, id of the last, its hash)."""
        count = int(con.execute("SELECT COUNT(*) FROM entries").fetchone()[0])
        row = con.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        return count, (int(row[0]) if row else 0), (row[1] if row else GENESIS)

    def _write_anchor(self, count: int, last_id: int, head: str) -> None:
        body = {"log": str(self.path.resolve()), "count": count, "last_id": last_id, "head": head,
                "key_id": self.key_id, "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "mac": _anchor_mac(self.key, count, last_id, head)}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.anchor.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.anchor_path)
        except BaseException:
            with suppress(OSError):
                os.unlink(tmp)
            raise

    def _read_anchor(self) -> dict | None:
        """The sidecar anchor (None when there is none); raises AuditorError when unreadable."""
        try:
            text = self.anchor_path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditorError(f"cannot read the audit log anchor {self.anchor_path}: {exc.strerror}") from None
        try:
            a = json.loads(text)
            a = {"count": int(a["count"]), "last_id": int(a["last_id"]), "head": str(a["head"]),
                 "key_id": str(a.get("key_id")), "mac": str(a["mac"]), "time": a.get("time")}
        except (ValueError, KeyError, TypeError):
            raise AuditorError(f"the audit log anchor {self.anchor_path} is not an anchor file") from None
        return a

    def _anchor_problems(self, con: sqlite3.Connection, a: dict | None, count: int) -> list[str]:
        if a is None:
            return [f"the anchor file {self.anchor_path} is missing (deleted?): the number of entries and the "
                    f"head of the chain cannot be checked"]
        if a["key_id"] != self.key_id:
            return [f"the anchor file {self.anchor_path} was written with another key ({a['key_id']}; this key is "
                    f"{self.key_id})"]
        if not hmac.compare_digest(a["mac"], _anchor_mac(self.key, a["count"], a["last_id"], a["head"])):
            return [f"the anchor file {self.anchor_path} has been altered (its keyed hash does not match)"]
        return self._position_problems(con, a["count"], a["head"], count, "the anchor", a["last_id"])

    @staticmethod
    def _position_problems(con, n: int, head: str, count: int, what: str, last_id: int | None = None) -> list[str]:
        """Whether the n-th entry (in order of writing) is the one `what` recorded."""
        if n > count:
            return [f"the log has {count} entries but {what} records {n}: entries were deleted (truncated)"]
        if n == 0:
            return [] if head == GENESIS else [f"{what} records an empty log with a head: not this log"]
        row = con.execute("SELECT id, hash FROM entries ORDER BY id LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
        if row["hash"] != head or (last_id is not None and int(row["id"]) != last_id):
            return [f"entry {n} of the log is not the head {what} records ({head[:16]}...): entries were "
                    f"rewritten, replaced or removed"]
        return []

    def anchor(self) -> dict:
        """The chain's head now, for an external record: {'count', 'last_id', 'head', 'anchor': 'COUNT:HEAD',
        'log', 'key_id', 'time'} (what the sidecar holds and every report's JSON carries)."""
        with self._db() as con:
            count, last_id, head = self._state(con)
        return {"log": str(self.path.resolve()), "count": count, "last_id": last_id, "head": head,
                "anchor": f"{count}:{head}", "key_id": self.key_id,
                "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}

    def _update_anchor(self, con: sqlite3.Connection) -> None:
        """Move the sidecar anchor to the log's head, under the write lock (so concurrent writers
        leave it at the newest), and only when the log still extends what the anchor recorded:
        a log found tampered with keeps the anchor that shows it."""
        con.execute("BEGIN IMMEDIATE")
        try:
            count, last_id, head = self._state(con)
            a = self._read_anchor()
            if a is not None and not self._anchor_problems(con, a, count):
                self._write_anchor(count, last_id, head)
        finally:
            con.execute("COMMIT")

    def reanchor(self) -> dict:
        """Write a new anchor at the head, when the chain itself verifies (after a lost or damaged
        anchor file was investigated). Raises AuditorError listing the chain's problems otherwise."""
        v = self.check(anchored=False)
        if v.problems:
            raise AuditorError("the log does not verify, not re-anchoring: " + "; ".join(v.problems[:3]))
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                self._write_anchor(*self._state(con))
            finally:
                con.execute("COMMIT")
        return self.anchor()

    def restore_triggers(self) -> list[str]:
        """Re-create the triggers that refuse changes and deletions; returns those that were missing."""
        with self._db() as con:
            missing = self._missing_triggers(con)
            for name in missing:
                con.execute(_TRIGGER_SQL[name])
        return missing

    @staticmethod
    def _missing_triggers(con: sqlite3.Connection) -> list[str]:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        return [t for t in TRIGGERS if t not in present]

    # -- writing and reading --------------------------------------------------------------------
    def append(self, kind: str, *, user: str | None = None, run: str | None = None, model_path: str | None = None,
               model_sha256: str | None = None, data_name: str | None = None, data_sha256: str | None = None,
               requirements: list | None = None, passed: bool | None = None, results: dict | None = None,
               reports: list | None = None, command: str | None = None, time: str | None = None) -> int:
        """Add one entry in its own transaction (then move the anchor to it); returns its id."""
        if kind not in KINDS:
            raise AuditorError(f"unknown audit log entry kind {kind!r}; valid: {', '.join(KINDS)}")
        record = {"time": time or datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "kind": kind,
                  "user": user if user is not None else current_user(), "run": run, "model_path": model_path,
                  "model_sha256": model_sha256, "data_name": data_name, "data_sha256": data_sha256,
                  "requirements": _jsonable(requirements or []), "passed": None if passed is None else bool(passed),
                  "results": _jsonable(results or {}), "reports": [str(p) for p in (reports or [])],
                  "command": command}
        columns = (*_COLUMNS, "key_id")
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")  # one writer at a time: the hash chain stays linear
            try:
                row = con.execute("SELECT hash, key_id FROM entries ORDER BY id DESC LIMIT 1").fetchone()
                key, kid = self._writing_key(row["key_id"] if row else None)
                record["prev_hash"] = row["hash"] if row else GENESIS
                record["hash"] = _content_mac(key, record["prev_hash"], record)
                record["key_id"] = kid
                values = [json.dumps(record[c]) if c in _JSON_COLUMNS else record[c] for c in columns]
                values[columns.index("passed")] = None if record["passed"] is None else int(record["passed"])
                cur = con.execute(f"INSERT INTO entries ({', '.join(columns)}) VALUES "
                                  f"({', '.join('?' * len(columns))})", values)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            try:
                self._update_anchor(con)
            except (sqlite3.OperationalError, OSError):
                pass  # the entry is committed; the anchor lags until the next append (verify notes it)
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
        with self._db() as con:
            rows = [self._entry(r) for r in con.execute(sql, args)]
        return rows if newest_first else rows[::-1]

    def get(self, entry_id: int) -> Entry:
        with self._db() as con:
            row = con.execute("SELECT * FROM entries WHERE id = ?", (int(entry_id),)).fetchone()
        if row is None:
            raise AuditorError(f"the audit log {self.path} has no entry {entry_id}")
        return self._entry(row)

    def __len__(self) -> int:
        with self._db() as con:
            return int(con.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    def _keyed_entries(self) -> int:
        with self._db() as con:
            return int(con.execute("SELECT COUNT(*) FROM entries WHERE key_id IS NOT NULL").fetchone()[0])

    def _writing_key(self, last: str | None) -> tuple[bytes, str]:
        """The key to append with: a log already keyed with another key is refused (a CI runner without
        the log's key file would start a key of its own, and `verify` would then fail for everyone)."""
        if last and not self.key_path.exists():
            raise AuditorError(f"the audit log {self.path} was written with key {last}, and the key file "
                               f"{self.key_path} does not exist: set $AUDITOR_LOG_KEY (or --log-key) to the key "
                               "file this log was written with, or log to a new --db; nothing was appended")
        key, kid = self.key, self.key_id
        if last and last != kid:
            raise AuditorError(f"the audit log {self.path} was written with key {last}, not with {self.key_path} "
                               f"({kid}): set $AUDITOR_LOG_KEY (or --log-key) to the key file this log was "
                               "written with, or log to a new --db; nothing was appended")
        return key, kid

    # -- verification ---------------------------------------------------------------------------
    def check(self, anchor: str | None = None, *, anchored: bool = True) -> Verification:
        """Everything `verify` looks at: SQLite's integrity check, the triggers, every entry's keyed
        hash and link to the one before, the count and head against the sidecar anchor (unless
        `anchored=False`) and against `anchor` ('COUNT:HEAD' from an external record) when given."""
        external = parse_anchor(anchor) if anchor is not None else None
        if not self.key_path.exists() and self._keyed_entries():  # checking reads the log's key, never makes one
            raise AuditorError(f"no audit log key at {self.key_path}: set $AUDITOR_LOG_KEY (or --log-key) to the "
                               f"key file the log {self.path} was written with")
        key, kid = self.key, self.key_id
        problems, notes = [], []
        with self._db() as con:
            con.execute("BEGIN")  # one snapshot: a writer meanwhile does not make it inconsistent
            try:
                check = con.execute("PRAGMA integrity_check").fetchone()[0]
                if check != "ok":
                    problems.append(f"SQLite integrity check: {check}")
                prev, count, seen_keyed = GENESIS, 0, False
                legacy, others = [], {}
                for row in con.execute("SELECT * FROM entries ORDER BY id"):
                    e = self._entry(row)
                    count += 1
                    if e.prev_hash != prev:
                        problems.append(f"entry {e.id}: does not follow entry before it (an entry was removed?)")
                    record = e.to_dict()
                    if e.key_id is None:
                        if seen_keyed:
                            problems.append(f"entry {e.id}: unkeyed but written after keyed entries (rewritten?)")
                        elif _content_hash(e.prev_hash, record) != e.hash:
                            problems.append(f"entry {e.id}: content does not match its hash (changed after writing)")
                        else:
                            legacy.append(e.id)
                    else:
                        seen_keyed = True
                        if e.key_id != kid:
                            others.setdefault(e.key_id, []).append(e.id)
                        elif not hmac.compare_digest(_content_mac(key, e.prev_hash, record), e.hash):
                            problems.append(f"entry {e.id}: content does not match its keyed hash (changed after "
                                            f"writing)")
                    prev = e.hash
                for t in self._missing_triggers(con):
                    what = "changes" if t.endswith("update") else "deletions"
                    problems.append(f"the trigger {t} that refuses {what} is missing (dropped: entries could have "
                                    f"been {'changed' if what == 'changes' else 'deleted'} without it)")
                for other, ids in others.items():
                    one = len(ids) == 1
                    problems.append(f"{'entry' if one else 'entries'} {_ranges(ids)} {'was' if one else 'were'} "
                                    f"keyed with another key ({other}; this key {self.key_path} is {kid}): "
                                    f"{'it' if one else 'they'} cannot be checked")
                if legacy:
                    notes.append(f"entries {_ranges(legacy)} predate keyed hashes (unkeyed sha256: whoever can "
                                 f"write the database could rewrite them unnoticed)")
                if anchored:
                    a = self._read_anchor()
                    problems += self._anchor_problems(con, a, count)
                    if a is not None and count > a["count"] and not problems:
                        notes.append(f"{count - a['count']} entr{'y' if count - a['count'] == 1 else 'ies'} written "
                                     f"after the anchor was last moved (a writer stopped before moving it?)")
                if external is not None:
                    problems += self._position_problems(con, *external, count, "the given anchor")
            finally:
                con.execute("COMMIT")
        return Verification(count, prev, problems, notes)

    def verify(self, anchor: str | None = None) -> list[str]:
        """Problems found (empty when the database is sound, its triggers in place, every entry's keyed
        hash chain holds and the count and head agree with the anchor, and with `anchor` when given)."""
        return self.check(anchor).problems


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
