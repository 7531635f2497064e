"""The outbox's SQLite file: opening it (WAL, a bounded journal, a quick check, a damaged
file moved aside), naming why a write failed, and reading it beside a running agent."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from edge_agent.errors import UserError

log = logging.getLogger(__name__)

# Below this much free space, an I/O error on a write is taken for a full disk (SQLite
# reports some ENOSPC failures as SQLITE_IOERR rather than SQLITE_FULL).
_LOW_FREE = 256 * 1024
# SQLite's primary result codes (stable; the stubs of the sqlite3 module lack them).
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26
BUSY_WAIT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,        -- insertion order
    id TEXT NOT NULL UNIQUE,        -- the payload's id: consumers drop duplicates by it
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    class TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL,                   -- NULL: never
    state INTEGER NOT NULL DEFAULT 0,
    delivered REAL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending ON messages (state, priority, seq);
CREATE INDEX IF NOT EXISTS by_created ON messages (created);
"""


class OutboxWriteError(UserError):
    """A write the outbox could not make; nothing of it was stored. `disk_full` says the
    cause was a full disk (the message then says so, with the path). Raised when the
    outbox is opened, it ends start-up with this one line."""

    def __init__(self, path: Path, cause: sqlite3.Error) -> None:
        self.path = path
        self.cause = cause
        free = free_bytes(path.parent)
        code = getattr(cause, "sqlite_errorcode", None)
        self.disk_full = code == _SQLITE_FULL or (
            code is not None and code & 0xFF == _SQLITE_IOERR and free < _LOW_FREE
        )
        if self.disk_full:
            text = f"the disk holding the outbox is full: {path} ({free // 1024} kB free)"
        else:
            text = f"cannot write the outbox {path}: {cause}"
        super().__init__(text)


def open_database(
    path: Path, durability: str, wal_limit: int
) -> tuple[sqlite3.Connection, Path | None]:
    """The outbox file opened (WAL, bounded), or a new one with the damaged file moved
    aside; returns the connection and where a damaged file went."""
    try:
        return _connect(path, durability, wal_limit), None
    except sqlite3.DatabaseError as exc:
        if not _damaged(exc):
            # A full disk or a lock held elsewhere: the file itself is fine.
            raise OutboxWriteError(path, exc) from exc
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        log.error("outbox %s is damaged (%s); moved to %s, starting a new one", path, exc, aside)
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                shutil.move(part, Path(f"{aside}{suffix}"))
        return _connect(path, durability, wal_limit), aside


def _connect(path: Path, durability: str, wal_limit: int) -> sqlite3.Connection:
    db = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=BUSY_WAIT_MS / 1000,
    )
    try:
        # auto_vacuum must be set before the first table exists to take effect.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        sync = "FULL" if durability == "full" else "NORMAL"
        db.execute(f"PRAGMA synchronous={sync}")
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        # A passive checkpoint at an eighth of the bound; once it has caught up, the next
        # write starts the WAL over and truncates the file back to the bound. With writes
        # of at most about two thirds of the bound each (write_bytes, rows_per_write),
        # the WAL stays within it.
        db.execute(f"PRAGMA wal_autocheckpoint={max(1, wal_limit // 8 // page)}")
        db.execute(f"PRAGMA journal_size_limit={wal_limit}")
        result = db.execute("PRAGMA quick_check").fetchone()
        if result is None or result[0] != "ok":
            raise _Damaged(f"quick_check: {result[0] if result else 'no answer'}")
        db.executescript(_SCHEMA)
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0  # the folder is gone: no room either way


class _Damaged(sqlite3.DatabaseError):
    """The file opened but failed its check."""


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, _Damaged) or code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def read_only(path: Path) -> sqlite3.Connection:
    """A connection for readers beside a running agent (WAL lets them in)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def iter_results(
    db: sqlite3.Connection, since: float | None, last: int | None = None
) -> Iterator[tuple[float, bytes, int]]:
    """(created, payload, state) of results, oldest first; `last`: only the newest N."""
    query = (
        "SELECT seq, created, payload, state FROM messages WHERE class='result' AND created >= ?"
    )
    if last is None:
        for _, created, payload, state in db.execute(query + " ORDER BY seq", (since or 0.0,)):
            yield created, payload, state
        return
    newest = db.execute(query + " ORDER BY seq DESC LIMIT ?", (since or 0.0, last)).fetchall()
    for _, created, payload, state in reversed(newest):
        yield created, payload, state
