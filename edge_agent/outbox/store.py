"""SQLite outbox. Every message is a row: committed in batches by one writer thread,
read oldest-first by the sender, marked delivered on PUBACK, kept a while for local use.

Durability: WAL with synchronous=FULL survives power loss; NORMAL survives a crash of the
process. Cheap SD cards may acknowledge an fsync they have not done: no setting here can
help with that. A file that is not a database, or fails its check, is moved aside and a
new one started, so a corrupt outbox never becomes a crash loop."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_agent.config.settings import ClassPolicy, OutboxSettings

log = logging.getLogger(__name__)

MessageClass = Literal["event", "result", "telemetry"]
# Delivery order after a reconnect: events, then results, then telemetry.
PRIORITY: dict[str, int] = {"event": 0, "result": 1, "telemetry": 2}
PENDING, DELIVERED, SET_ASIDE = 0, 1, 2

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


@dataclass(frozen=True)
class Message:
    id: str
    topic: str
    payload: bytes
    qos: int
    cls: MessageClass
    created: float


@dataclass(frozen=True)
class Stored:
    seq: int
    id: str
    topic: str
    payload: bytes
    qos: int
    cls: str


class OutboxFull(Exception):
    """No room for a message whose class refuses rather than drops."""


class Outbox:
    """One SQLite file. Thread-safe: every call takes the connection's lock; the writer
    thread (outbox/writer.py) makes the appends, the sender the reads and marks."""

    def __init__(self, path: Path, settings: OutboxSettings) -> None:
        self.path = path
        self.settings = settings
        self.drops: dict[str, int] = {}  # "result:rejected_full", "telemetry:expired", ...
        self.moved_aside: Path | None = None
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open()
        # Tallies kept in memory: counting a 100,000-row backlog in SQL takes tens of
        # milliseconds under the lock the sender needs.
        self._pending: dict[str, list[int]] = {}  # class -> [count, bytes]
        self._delivered = 0
        self._set_aside = 0
        with self._lock:
            self._recount_locked()

    # Opening -----------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "outbox %s is damaged (%s); moved to %s, starting a new one", self.path, exc, aside
            )
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{self.path}{suffix}")
                if part.exists():
                    shutil.move(part, Path(f"{aside}{suffix}"))
            self.moved_aside = aside
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            # auto_vacuum must be set before the first table exists to take effect.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            sync = "FULL" if self.settings.durability == "full" else "NORMAL"
            db.execute(f"PRAGMA synchronous={sync}")
            result = db.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {result[0] if result else 'no answer'}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # Appending ---------------------------------------------------------------------------

    def append(self, messages: list[Message]) -> list[Message]:
        """Commits `messages` in one transaction; returns those refused for room (their
        class says reject_new). Raises sqlite3.OperationalError when the disk is full:
        nothing of the batch is then stored, and the caller keeps it."""
        refused: list[Message] = []
        with self._lock:
            room = self._room()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = []
                added = 0
                dropped: dict[str, int] = {}
                for m in messages:
                    size = len(m.payload) + len(m.topic)
                    policy = self._policy(m.cls)
                    if added + size > room:
                        if policy.when_full == "reject_new":
                            refused.append(m)
                            continue
                        freed, count = self._drop_oldest_locked(m.cls, added + size - room)
                        room += freed
                        dropped[m.cls] = dropped.get(m.cls, 0) + count
                    expires = m.created + policy.ttl_s if policy.ttl_s else None
                    rows.append(
                        (
                            m.id,
                            m.topic,
                            m.payload,
                            m.qos,
                            m.cls,
                            PRIORITY[m.cls],
                            m.created,
                            expires,
                            size,
                        )
                    )
                    added += size
                inserted = self._db.executemany(
                    "INSERT OR IGNORE INTO messages (id, topic, payload, qos, class, priority,"
                    " created, expires, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                ).rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                self._recount_locked()  # drops made inside the batch were rolled back too
                raise
            if inserted == len(rows):
                for row in rows:
                    self._tally(row[4], 1, row[8])
            else:
                self._recount_locked()  # some ids were already stored: rare, count again
        for cls, count in dropped.items():
            self._count(f"{cls}:dropped_oldest", count)
        for m in refused:
            self._count(f"{m.cls}:rejected_full")
        return refused

    def _recount_locked(self) -> None:
        self._pending = {cls: [0, 0] for cls in PRIORITY}
        for cls, count, size in self._db.execute(
            "SELECT class, COUNT(*), SUM(size) FROM messages WHERE state=0 GROUP BY class"
        ):
            self._pending[cls] = [count, size]
        self._delivered = self._scalar_locked("SELECT COUNT(*) FROM messages WHERE state=1", [])
        self._set_aside = self._scalar_locked("SELECT COUNT(*) FROM messages WHERE state=2", [])

    def _tally(self, cls: str, count: int, size: int) -> None:
        tally = self._pending.setdefault(cls, [0, 0])
        tally[0] += count
        tally[1] += size

    @property
    def _bytes(self) -> int:
        return sum(size for _, size in self._pending.values())

    def _policy(self, cls: str) -> ClassPolicy:
        policy: ClassPolicy = getattr(self.settings, f"{cls}s" if cls != "telemetry" else cls)
        return policy

    def _room(self) -> int:
        """Bytes that may still be added: the size bound, and a share of the free disk."""
        free = shutil.disk_usage(self.path.parent).free
        limit = min(self.settings.max_bytes, int(free * self.settings.max_disk_share) + self._bytes)
        return max(0, limit - self._bytes)

    def _drop_oldest_locked(self, cls: str, need: int) -> tuple[int, int]:
        """Deletes the oldest undelivered messages of `cls` until `need` bytes are free;
        returns the bytes freed and the count."""
        victims = []
        freed = 0
        for seq, size in self._db.execute(
            "SELECT seq, size FROM messages WHERE state=0 AND class=? ORDER BY seq", (cls,)
        ):
            if freed >= need:
                break
            victims.append((seq,))
            freed += size
        self._db.executemany("DELETE FROM messages WHERE seq=?", victims)
        self._tally(cls, -len(victims), -freed)
        return freed, len(victims)

    # Sending -----------------------------------------------------------------------------

    def pending(self, limit: int, exclude: set[int] | frozenset[int] = frozenset()) -> list[Stored]:
        """The oldest undelivered messages, events first, then results, then telemetry;
        read a page at a time, so a large backlog costs nothing at start-up."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, topic, payload, qos, class FROM messages WHERE state=0"
                " ORDER BY priority, seq LIMIT ?",
                (limit + len(exclude),),
            ).fetchall()
        return [Stored(*row) for row in rows if row[0] not in exclude][:limit]

    def pending_after(self, limit: int, after: dict[str, int]) -> list[Stored]:
        """Like pending(), but only rows past `after[class]` (the last seq the caller has
        read of each class): the sender's cursor, so rows in flight are not read again."""
        found: list[Stored] = []
        with self._lock:
            for cls in sorted(PRIORITY, key=PRIORITY.__getitem__):
                if len(found) >= limit:
                    break
                found.extend(
                    Stored(*row)
                    for row in self._db.execute(
                        "SELECT seq, id, topic, payload, qos, class FROM messages"
                        " WHERE state=0 AND priority=? AND seq>? ORDER BY seq LIMIT ?",
                        (PRIORITY[cls], after.get(cls, 0), limit - len(found)),
                    )
                )
        return found

    def mark_delivered(self, seqs: list[int]) -> None:
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            marked = self._db.execute(
                "UPDATE messages SET state=1, delivered=? WHERE state=0"
                f" AND seq IN ({_marks(seqs)}) RETURNING class, size",
                [time.time(), *seqs],
            ).fetchall()
            self._db.execute("COMMIT")
            for cls, size in marked:
                self._tally(cls, -1, -size)
            self._delivered += len(marked)

    def set_aside(self, seq: int, reason: str) -> None:
        """A message that can never be delivered (too large for the broker): kept, counted,
        and out of the way of the rest."""
        with self._lock:
            row = self._db.execute(
                "SELECT class, size FROM messages WHERE seq=? AND state=0", (seq,)
            ).fetchone()
            if row is None:
                return
            self._db.execute("UPDATE messages SET state=2 WHERE seq=?", (seq,))
            self._tally(row[0], -1, -row[1])
            self._set_aside += 1
        self._count(f"{row[0]}:{reason}")

    # Housekeeping --------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Drops undelivered messages past their TTL and delivered ones past retention,
        then lets the file shrink."""
        now = time.time() if now is None else now
        with self._lock:
            expired = self._db.execute(
                "SELECT class, COUNT(*), SUM(size) FROM messages WHERE state=0 AND expires < ?"
                " GROUP BY class",
                (now,),
            ).fetchall()
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM messages WHERE state=0 AND expires < ?", (now,))
            self._delivered -= self._db.execute(
                "DELETE FROM messages WHERE state=1 AND delivered < ?",
                (now - self.settings.retention_s,),
            ).rowcount
            self._db.execute("COMMIT")
            # Each step frees one page; executescript runs it to the end (execute stops
            # after the first step).
            self._db.executescript("PRAGMA incremental_vacuum;")
            for cls, count, size in expired:
                self._tally(cls, -count, -size)
        for cls, count, _ in expired:
            self._count(f"{cls}:expired", count)
        return sum(count for _, count, _ in expired)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            by_class = {
                cls: {"pending": count, "bytes": size}
                for cls, (count, size) in self._pending.items()
                if count
            }
            # The first pending row of each class, found through the index.
            firsts = [
                self._scalar_locked(
                    "SELECT created FROM messages WHERE state=0 AND priority=? ORDER BY seq"
                    " LIMIT 1",
                    [priority],
                )
                for priority in PRIORITY.values()
            ]
            oldest = min((f for f in firsts if f is not None), default=None)
            delivered, aside, pending_bytes = self._delivered, self._set_aside, self._bytes
        file_bytes = sum(
            Path(f"{self.path}{s}").stat().st_size
            for s in ("", "-wal")
            if Path(f"{self.path}{s}").exists()
        )
        return {
            "pending": sum(c["pending"] for c in by_class.values()),
            "pending_bytes": pending_bytes,
            "by_class": by_class,
            "oldest_age_s": round(time.time() - oldest, 3) if oldest else 0.0,
            "delivered_kept": delivered,
            "set_aside": aside,
            "file_bytes": file_bytes,
            "drops": dict(self.drops),
        }

    def _count(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def _scalar_locked(self, sql: str, args: list[Any]) -> Any:
        row = self._db.execute(sql, args).fetchone()
        return row[0] if row else None


def _marks(items: list[Any]) -> str:
    return ",".join("?" * len(items))


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
