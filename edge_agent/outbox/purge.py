"""Deleting stored messages from outside the agent (`edge-agent results purge`), also while
it runs. The agent's writer and sender keep their own connection; this one takes SQLite's
write lock a short transaction at a time, so they wait milliseconds, never seconds:

- each transaction deletes at most `_ROWS_PER_TRANSACTION` rows chosen by `created` and
  class only, so a row the writer commits meanwhile (made now, after `before`) is never
  touched, and a failure undoes that transaction whole;
- the space is then given back to the disk by an incremental vacuum in steps of
  `_PAGES_PER_STEP` pages (the file was created with auto_vacuum=INCREMENTAL), and the WAL
  is checkpointed and truncated once at the end;
- the running agent sees the commits (SQLite's data_version), counts its tallies again and
  counts the undelivered rows that went as "class:purged" in its drops."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.outbox.database import BUSY_WAIT_MS, OutboxWriteError, file_size

# Small enough that the agent's writer waits a few milliseconds for the lock (its own wait
# is BUSY_WAIT_MS), and that one transaction's WAL stays near the agent's bound.
_ROWS_PER_TRANSACTION = 500
_PAGES_PER_STEP = 256
# The WAL this connection lets grow before a passive checkpoint, and what it is truncated
# back to: the agent's own largest bound (store.py).
_CHECKPOINT_PAGES = 256
_WAL_LIMIT = 4 * 1024 * 1024
# How long the final truncation waits for a reader (the agent's sender, `results tail`):
# it holds back writers while it waits.
_TRUNCATE_WAIT_MS = 100
_STATES = {0: "pending", 1: "delivered", 2: "set_aside"}


@dataclass
class Purged:
    """What a purge removed, and what the files took before and after."""

    count: int = 0
    bytes: int = 0  # bytes of topic and payload of the rows removed
    by_class: dict[str, int] = field(default_factory=dict)
    by_state: dict[str, int] = field(default_factory=dict)
    file_bytes_before: int = 0
    file_bytes_after: int = 0


def purge(
    path: Path, before: float | None, classes: tuple[str, ...], dry_run: bool = False
) -> Purged:
    """Deletes the messages of `classes` made before `before` (None: whatever their age),
    whatever their state; with `dry_run`, only counts them. Raises OutboxWriteError when a
    write fails (a full disk, or the lock held past BUSY_WAIT_MS): what was deleted before
    stays deleted, the rest stays stored."""
    # mode=rw: a missing file is an error, not a new empty outbox.
    db = sqlite3.connect(
        f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=BUSY_WAIT_MS / 1000
    )
    db.execute(f"PRAGMA wal_autocheckpoint={_CHECKPOINT_PAGES}")
    db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
    done = Purged(file_bytes_before=_files(path))
    where = f"class IN ({','.join('?' * len(classes))})" + (
        " AND created < ?" if before is not None else ""
    )
    args: list[object] = [*classes, *([before] if before is not None else [])]
    try:
        if dry_run:
            for cls, state, count, size in db.execute(
                "SELECT class, state, COUNT(*), COALESCE(SUM(size), 0) FROM messages"
                f" WHERE {where} GROUP BY class, state",
                args,
            ):
                _add(done, cls, state, count, size)
        else:
            while _delete_some(db, where, args, done):
                pass
            _shrink(db)
    except sqlite3.Error as exc:
        raise OutboxWriteError(path, exc) from exc
    finally:
        db.close()
    done.file_bytes_after = _files(path)
    return done


def _delete_some(db: sqlite3.Connection, where: str, args: list[object], done: Purged) -> bool:
    """One transaction of at most _ROWS_PER_TRANSACTION rows; True if it was full."""
    db.execute("BEGIN IMMEDIATE")
    try:
        gone = db.execute(
            f"DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE {where}"
            " ORDER BY seq LIMIT ?) RETURNING class, state, size",
            [*args, _ROWS_PER_TRANSACTION],
        ).fetchall()
        db.execute("COMMIT")
    except sqlite3.Error:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    for cls, state, size in gone:
        _add(done, cls, state, 1, size)
    return len(gone) >= _ROWS_PER_TRANSACTION


def _shrink(db: sqlite3.Connection) -> None:
    """Gives the freed pages back to the disk, a step at a time, then truncates the WAL
    (when no reader holds it: the agent's own next commit truncates it otherwise)."""
    while int(db.execute("PRAGMA freelist_count").fetchone()[0]) > 0:
        before = int(db.execute("PRAGMA page_count").fetchone()[0])
        # Each step of the pragma frees a page; executescript runs it to the end.
        db.executescript(f"PRAGMA incremental_vacuum({_PAGES_PER_STEP});")
        if int(db.execute("PRAGMA page_count").fetchone()[0]) >= before:
            break  # a file made without auto_vacuum: its free pages are reused, not returned
    db.execute(f"PRAGMA busy_timeout={_TRUNCATE_WAIT_MS}")
    with contextlib.suppress(sqlite3.Error):
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def _add(done: Purged, cls: str, state: int, count: int, size: int) -> None:
    done.count += count
    done.bytes += size
    done.by_class[cls] = done.by_class.get(cls, 0) + count
    name = _STATES.get(state, str(state))
    done.by_state[name] = done.by_state.get(name, 0) + count


def _files(path: Path) -> int:
    return file_size(path) + file_size(Path(f"{path}-wal"))
