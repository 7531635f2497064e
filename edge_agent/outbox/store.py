"""SQLite outbox. Every message is a row: committed in batches by one writer thread,
read oldest-first by the sender, marked delivered on PUBACK, kept a while for local use.

Durability: WAL with synchronous=FULL survives power loss; NORMAL survives a crash of the
process. Cheap SD cards may acknowledge an fsync they have not done: no setting here can
help with that. Opening the file, and moving a damaged one aside so a corrupt outbox never
becomes a crash loop, is database.py's part.

Room: the WAL is bounded (a checkpoint at an eighth of `wal_limit`, truncated back to it) and
that bound is counted against the outbox's budget, beside the messages themselves. A write
that fails (most often for a full disk) rolls back whole and raises OutboxWriteError, which
names the cause and the file; the database stays intact and the caller keeps what it had."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from edge_agent.config.settings import ClassPolicy, OutboxSettings
from edge_agent.counters import Counters
from edge_agent.outbox.database import (
    BUSY_WAIT_MS,
    OutboxWriteError,
    file_size,
    free_bytes,
    open_database,
)
from edge_agent.outbox.episodes import LossEpisodes
from edge_agent.outbox.growth import GrowthWindow, seconds_to_full

log = logging.getLogger(__name__)

MessageClass = Literal["event", "result", "telemetry", "escalation"]
# Delivery order after a reconnect: events, then results, then telemetry. Escalation
# requests come last and are not the sender's: the escalation client publishes them itself
# (they need a response topic) and expires them itself (an expired one is reported).
PRIORITY: dict[str, int] = {"event": 0, "result": 1, "telemetry": 2, "escalation": 3}
SENDER_CLASSES = ("event", "result", "telemetry")
_SENDER_PRIORITY = max(PRIORITY[cls] for cls in SENDER_CLASSES)
SELF_EXPIRING = ("escalation",)
PENDING, DELIVERED, SET_ASIDE = 0, 1, 2

# The WAL's bound: an eighth of the outbox's budget at open, within these limits. SQLite's
# own default (1,000 pages, never truncated) once filled a 3 MB volume with WAL alone.
_WAL_SHARE = 8
_WAL_MIN = 64 * 1024
_WAL_MAX = 4 * 1024 * 1024
# On-disk cost of a row beyond its topic and payload (row header, the id, index entries):
# used only to judge the free disk, so a guess on the high side is safe.
_ROW_OVERHEAD = 160
# How long the WAL's truncation waits for a reader beside the agent (`edge-agent results`).
_TRUNCATE_WAIT_MS = 100
# Losses told once per episode (a line when one begins and one when it ends); the others
# have their own line where they happen (the writer, the sender).
_EPISODE_REASONS = ("dropped_oldest", "expired")


@dataclass(frozen=True)
class Message:
    id: str
    topic: str
    payload: bytes
    qos: int
    cls: MessageClass
    created: float


class Stored(NamedTuple):
    """A row read for sending. A tuple: one is made for every message of a drain, at a
    quarter of a frozen dataclass's cost."""

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

    def __init__(
        self,
        path: Path,
        settings: OutboxSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.settings = settings
        # Messages lost, by "class:reason" ("result:rejected_full", "telemetry:expired"):
        # counted by the writer, the sender and housekeeping, read by telemetry.
        self.drops = Counters()
        self._episodes = LossEpisodes(self._loss_text)
        # The backlog's growth, for the time until the outbox is full (stats' full_in_s).
        self._growth = GrowthWindow(clock)
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        budget = min(settings.max_bytes, int(settings.max_disk_share * self._disk_span()))
        self.wal_limit = min(_WAL_MAX, max(_WAL_MIN, budget // _WAL_SHARE))
        self.wal_peak = 0  # the WAL's size after the largest commit so far
        self._db, self.moved_aside = open_database(path, settings.durability, self.wal_limit)
        self._page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        # Tallies kept in memory: counting a 100,000-row backlog in SQL takes tens of
        # milliseconds under the lock the sender needs.
        self._pending: dict[str, list[int]] = {}  # class -> [count, bytes]
        self._delivered = 0
        self._delivered_bytes = 0
        self._set_aside = 0
        # SQLite's count of commits by other connections (`edge-agent results purge`):
        # when it moves, the tallies are counted again.
        self._data_version = 0
        with self._lock:
            self._recount_locked()
            self._note_growth_locked()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # Appending ---------------------------------------------------------------------------

    def append(self, messages: list[Message]) -> list[Message]:
        """Commits `messages` in one transaction; returns those refused for room (their
        class says reject_new), not counted: the caller holds them or counts them dropped.
        Raises OutboxWriteError when the write fails (a full disk): nothing of the batch is
        then stored, and the caller keeps it."""
        refused: list[Message] = []
        dropped: dict[str, int] = {}
        with self._lock:
            self._sync_locked()
            with self._transaction():
                by_size, by_disk = self._room_locked()
                by_class = self._class_room_locked()
                rows = []
                for m in messages:
                    size = len(m.payload) + len(m.topic)
                    cost = size + _ROW_OVERHEAD
                    if cost > by_disk:
                        # Delivered rows are kept for local use only: they give way first.
                        by_disk += self._clear_delivered_locked(cost - by_disk)
                    in_class = by_class.get(m.cls, size)
                    if size > by_size or cost > by_disk or size > in_class:
                        if self._policy(m.cls).when_full == "reject_new":
                            refused.append(m)
                            continue
                        need = max(size - by_size, cost - by_disk, size - in_class)
                        freed, count = self._drop_oldest_locked(m.cls, need)
                        by_size += freed
                        by_disk += freed + count * _ROW_OVERHEAD
                        if m.cls in by_class:
                            by_class[m.cls] += freed
                        if count:
                            dropped[m.cls] = dropped.get(m.cls, 0) + count
                    if m.cls in by_class:
                        by_class[m.cls] -= size
                    ttl = self._policy(m.cls).ttl_s
                    rows.append(
                        (
                            m.id,
                            m.topic,
                            m.payload,
                            m.qos,
                            m.cls,
                            PRIORITY[m.cls],
                            m.created,
                            m.created + ttl if ttl else None,
                            size,
                        )
                    )
                    by_size -= size
                    by_disk -= cost
                inserted = self._db.executemany(
                    "INSERT OR IGNORE INTO messages (id, topic, payload, qos, class, priority,"
                    " created, expires, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                ).rowcount
            if inserted == len(rows):
                for row in rows:
                    self._tally(row[4], 1, row[8])
            else:
                self._recount_locked()  # some ids were already stored: rare, count again
            self._note_growth_locked()
        for cls, count in dropped.items():
            self.count_drop(f"{cls}:dropped_oldest", count)
        return refused

    @property
    def write_bytes(self) -> int:
        """Message bytes one append should carry at most: its WAL is about 1.5 times that."""
        return self.wal_limit // 4

    @property
    def rows_per_write(self) -> int:
        """Rows one update or delete may touch (about 1 kB of WAL each, as a page holds a
        few rows and every one rewrites its page)."""
        return max(16, self.wal_limit // 4096)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT, with the lock held. A failure rolls back whole (SQLite
        has already done so itself after a full disk) and raises OutboxWriteError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                self._recount_locked()  # drops and clears made inside it were undone too
            raise OutboxWriteError(self.path, exc) from exc
        self._bound_wal_locked()

    def _bound_wal_locked(self) -> None:
        wal = file_size(Path(f"{self.path}-wal"))
        self.wal_peak = max(self.wal_peak, wal)
        if wal <= self.wal_limit:
            return
        # Past the bound: a transaction larger than the checkpoint interval, or a reader
        # beside the agent that held the passive checkpoint back. Checkpoint and truncate
        # now, waiting only briefly for such a reader; on a full disk this fails until
        # space returns, and the next commit tries again.
        self._db.execute(f"PRAGMA busy_timeout={_TRUNCATE_WAIT_MS}")
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.debug("outbox: WAL checkpoint failed: %s", exc)
        finally:
            self._db.execute(f"PRAGMA busy_timeout={BUSY_WAIT_MS}")

    def _room_locked(self) -> tuple[int, int]:
        """Bytes of messages that may still be added: by the size bound, and by the disk.
        The WAL's bound counts against both: against max_bytes whole, and on the disk as
        what the WAL may still grow to. Pages SQLite freed for reuse count as room."""
        by_size = self.settings.max_bytes - self.wal_limit - self._bytes
        files = file_size(self.path) + file_size(Path(f"{self.path}-wal"))
        wal = file_size(Path(f"{self.path}-wal"))
        reusable = self._scalar_locked("PRAGMA freelist_count", []) * self._page
        share = int(self.settings.max_disk_share * (free_bytes(self.path.parent) + files))
        by_disk = share - files - max(0, self.wal_limit - wal) + reusable
        return max(0, by_size), max(0, by_disk)

    def _class_room_locked(self) -> dict[str, int]:
        """Bytes each class with its own max_bytes may still add."""
        room = {}
        for cls in PRIORITY:
            bound = self._policy(cls).max_bytes
            if bound is not None:
                room[cls] = max(0, bound - self._pending.get(cls, [0, 0])[1])
        return room

    def _clear_delivered_locked(self, need: int) -> int:
        """Deletes the oldest delivered rows, at most a write's worth, to free about `need`
        bytes of disk; returns the bytes freed."""
        victims = []
        freed = 0
        for seq, size in self._db.execute(
            "SELECT seq, size FROM messages WHERE state=1 ORDER BY seq LIMIT ?",
            (self.rows_per_write,),
        ):
            if freed >= need:
                break
            victims.append((seq,))
            freed += size + _ROW_OVERHEAD
        self._db.executemany("DELETE FROM messages WHERE seq=?", victims)
        self._delivered -= len(victims)
        self._delivered_bytes -= freed - len(victims) * _ROW_OVERHEAD
        return freed

    def _recount_locked(self) -> None:
        self._pending = {cls: [0, 0] for cls in PRIORITY}
        for cls, count, size in self._db.execute(
            "SELECT class, COUNT(*), SUM(size) FROM messages WHERE state=0 GROUP BY class"
        ):
            self._pending[cls] = [count, size]
        self._delivered, self._delivered_bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE state=1"
        ).fetchone()
        self._set_aside = self._scalar_locked("SELECT COUNT(*) FROM messages WHERE state=2", [])
        self._data_version = self._scalar_locked("PRAGMA data_version", [])

    def _sync_locked(self) -> None:
        """Counts again if another connection has committed since the last look: rows
        purged beside the running agent. Undelivered ones gone that way are counted as
        purged, with one line."""
        if self._scalar_locked("PRAGMA data_version", []) == self._data_version:
            return
        before = {cls: tally[0] for cls, tally in self._pending.items()}
        self._recount_locked()
        gone = {
            cls: count - self._pending.get(cls, [0, 0])[0]
            for cls, count in before.items()
            if count > self._pending.get(cls, [0, 0])[0]
        }
        for cls, count in gone.items():
            self.drops.add(f"{cls}:purged", count)
        if gone:
            log.warning(
                "outbox: %s undelivered message(s) removed by another process (%s)",
                sum(gone.values()),
                ", ".join(f"{cls} {n}" for cls, n in sorted(gone.items())),
            )

    def _note_growth_locked(self) -> None:
        self._growth.note(self._bytes, sum(count for count, _ in self._pending.values()))

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

    def _disk_span(self) -> int:
        """The free disk plus what the outbox's files already take."""
        files = sum(file_size(Path(f"{self.path}{s}")) for s in ("", "-wal"))
        return free_bytes(self.path.parent) + files

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

    def pending(
        self,
        limit: int,
        exclude: set[int] | frozenset[int] = frozenset(),
        cls: MessageClass | None = None,
    ) -> list[Stored]:
        """The oldest undelivered messages the sender sends, events first, then results,
        then telemetry (or those of `cls` alone); read a page at a time, so a large backlog
        costs nothing at start-up."""
        where, args = (
            ("priority=?", [PRIORITY[cls]]) if cls else ("priority<=?", [_SENDER_PRIORITY])
        )
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, topic, payload, qos, class FROM messages WHERE state=0"
                f" AND {where} ORDER BY priority, seq LIMIT ?",
                (*args, limit + len(exclude)),
            ).fetchall()
        return [Stored._make(row) for row in rows if row[0] not in exclude][:limit]

    def pending_after(self, limit: int, after: dict[str, int]) -> list[Stored]:
        """Like pending(), but only rows past `after[class]` (the last seq the caller has
        read of each class): the sender's cursor, so rows in flight are not read again."""
        found: list[Stored] = []
        with self._lock:
            for cls in SENDER_CLASSES:
                if len(found) >= limit:
                    break
                found.extend(
                    map(
                        Stored._make,
                        self._db.execute(
                            "SELECT seq, id, topic, payload, qos, class FROM messages"
                            " WHERE state=0 AND priority=? AND seq>? ORDER BY seq LIMIT ?",
                            (PRIORITY[cls], after.get(cls, 0), limit - len(found)),
                        ),
                    )
                )
        return found

    def mark_delivered(self, seqs: list[int]) -> None:
        """Marks rows acknowledged, a write's worth per transaction. Raises
        OutboxWriteError (a full disk): rows marked before it stay marked, and marking the
        same seqs again is harmless."""
        step = self.rows_per_write
        for start in range(0, len(seqs), step):
            chunk = seqs[start : start + step]
            with self._lock:
                self._sync_locked()
                with self._transaction():
                    marked = self._db.execute(
                        "UPDATE messages SET state=1, delivered=? WHERE state=0"
                        f" AND seq IN ({_marks(chunk)}) RETURNING class, size",
                        [time.time(), *chunk],
                    ).fetchall()
                for cls, size in marked:
                    self._tally(cls, -1, -size)
                    self._delivered_bytes += size
                self._delivered += len(marked)
                self._note_growth_locked()

    def put_back(self, since: float, classes: tuple[str, ...] = SENDER_CLASSES) -> int:
        """Rows of `classes` marked delivered at Unix time `since` or later made pending
        again, a write's worth per transaction; returns how many. For acknowledgements a
        broker may not have kept (it dropped the connection just after): they go again, and
        consumers drop the duplicates by id. Raises OutboxWriteError (a full disk): the rows
        put back before it stay pending."""
        with self._lock:
            self._sync_locked()
            seqs = [
                seq
                for (seq,) in self._db.execute(
                    "SELECT seq FROM messages WHERE state=1 AND delivered >= ?"
                    f" AND class IN ({_marks(list(classes))}) ORDER BY seq",
                    [since, *classes],
                )
            ]
        count = 0
        step = self.rows_per_write
        for start in range(0, len(seqs), step):
            chunk = seqs[start : start + step]
            with self._lock:
                with self._transaction():
                    back = self._db.execute(
                        "UPDATE messages SET state=0, delivered=NULL WHERE state=1"
                        f" AND seq IN ({_marks(chunk)}) RETURNING class, size",
                        chunk,
                    ).fetchall()
                for cls, size in back:
                    self._tally(cls, 1, size)
                    self._delivered_bytes -= size
                self._delivered -= len(back)
                count += len(back)
                self._note_growth_locked()
        return count

    def set_aside(self, seq: int, reason: str) -> None:
        """A message that can never be delivered (too large for the broker): kept, counted,
        and out of the way of the rest. Raises OutboxWriteError (a full disk)."""
        with self._lock:
            row = self._db.execute(
                "SELECT class, size FROM messages WHERE seq=? AND state=0", (seq,)
            ).fetchone()
            if row is None:
                return
            with self._transaction():
                self._db.execute("UPDATE messages SET state=2 WHERE seq=?", (seq,))
            self._tally(row[0], -1, -row[1])
            self._set_aside += 1
            self._note_growth_locked()
        self.count_drop(f"{row[0]}:{reason}")

    # Housekeeping --------------------------------------------------------------------------

    def expire(self, now: float | None = None) -> int:
        """Drops undelivered messages older than their class's ttl_s (as the policy is now,
        so a changed TTL applies to what is stored) and delivered ones past retention, a
        write's worth per transaction, then lets the file shrink. Each kind of loss is
        logged once per episode: its end is told by the first pass that finds none. On a
        write that fails (a full disk) it logs and stops; the next call goes on."""
        now = time.time() if now is None else now
        expired: dict[str, int] = {}
        try:
            for cls in PRIORITY:
                ttl = self._policy(cls).ttl_s
                if ttl is None or cls in SELF_EXPIRING:
                    continue
                while self._delete_some(
                    "state=0 AND class=? AND created < ?", [cls, now - ttl], expired
                ):
                    pass
            while self._delete_some("state=1 AND delivered < ?", [now - self.settings.retention_s]):
                pass
            with self._lock:
                # Each step frees one page; executescript runs it to the end (execute stops
                # after the first step).
                self._db.executescript("PRAGMA incremental_vacuum;")
        except OutboxWriteError as exc:
            log.warning("outbox: housekeeping postponed: %s", exc)
        except sqlite3.Error as exc:
            log.warning("outbox: housekeeping postponed: %s", OutboxWriteError(self.path, exc))
        for cls, count in expired.items():
            self.count_drop(f"{cls}:expired", count)
        self._episodes.close_quiet()
        return sum(expired.values())

    def take_expired(self, cls: MessageClass, now: float | None = None) -> list[Stored]:
        """Deletes the undelivered messages of `cls` past its ttl_s, a write's worth, and
        returns them: for a class that reports each one expired (SELF_EXPIRING)."""
        ttl = self._policy(cls).ttl_s
        if ttl is None:
            return []
        now = time.time() if now is None else now
        with self._lock:
            self._sync_locked()
            with self._transaction():
                gone = self._db.execute(
                    "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE state=0"
                    " AND class=? AND created < ? LIMIT ?)"
                    " RETURNING seq, id, topic, payload, qos, class, size",
                    [cls, now - ttl, self.rows_per_write],
                ).fetchall()
            for row in gone:
                self._tally(cls, -1, -row[6])
            self._note_growth_locked()
        if gone:
            self.count_drop(f"{cls}:expired", len(gone))
        return [Stored._make(row[:6]) for row in gone]

    def _delete_some(
        self, where: str, args: list[Any], counts: dict[str, int] | None = None
    ) -> bool:
        """Deletes up to a write's worth of rows matching `where`; True if it found a full
        write's worth (there may be more). Undelivered ones are counted by class."""
        with self._lock:
            self._sync_locked()
            with self._transaction():
                gone = self._db.execute(
                    f"DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE {where}"
                    " LIMIT ?) RETURNING class, size, state",
                    [*args, self.rows_per_write],
                ).fetchall()
            for cls, size, state in gone:
                if state == PENDING:
                    self._tally(cls, -1, -size)
                    if counts is not None:
                        counts[cls] = counts.get(cls, 0) + 1
                elif state == DELIVERED:
                    self._delivered -= 1
                    self._delivered_bytes -= size
            self._note_growth_locked()
        return len(gone) >= self.rows_per_write

    def stats(self) -> dict[str, Any]:
        """Counts, bytes, ages, drops and the time until full. Cheap (tallies kept in
        memory, one indexed row per class, a stat of the files): the status line calls it
        every second and an HTTP scrape may call it ten times a second."""
        with self._lock:
            self._sync_locked()
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
            by_size, by_disk = self._room_locked()
            # Delivered rows give their space to new ones before anything is dropped.
            by_disk += self._delivered_bytes + delivered * _ROW_OVERHEAD
            self._note_growth_locked()
        full_in = seconds_to_full((by_size, by_disk), self._growth.rates(), _ROW_OVERHEAD)
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
            # Bytes of messages that may still be added before the policies apply, and
            # when that happens at the backlog's growth over the last minutes (None: not
            # growing, or not known yet).
            "room_bytes": min(by_size, by_disk),
            "full_in_s": None if full_in is None else round(full_in, 1),
            "drops": self.drops.snapshot(),
            # Losses going on now (dropped oldest, expired), with their counts so far.
            "dropping": self._episodes.open(),
        }

    def count_drop(self, reason: str, n: int = 1) -> None:
        """`n` messages lost for `reason` ("class:why"): dropped here, or never stored (the
        writer gave them up)."""
        self.drops.add(reason, n)
        if reason.partition(":")[2] in _EPISODE_REASONS:
            self._episodes.note(reason, n)

    def _loss_text(self, cls: str, why: str) -> str:
        """What an episode of `why` means, for its first line."""
        if why == "dropped_oldest":
            return (
                f"full (max_bytes {self.settings.max_bytes / 1e6:.0f} MB, max_disk_share"
                f" {self.settings.max_disk_share:g}): dropping the oldest undelivered {cls}"
                " messages so the newest are kept"
            )
        ttl = self._policy(cls).ttl_s or 0
        return f"undelivered {cls} messages older than ttl_s {ttl:g} s are expiring"

    def _scalar_locked(self, sql: str, args: list[Any]) -> Any:
        row = self._db.execute(sql, args).fetchone()
        return row[0] if row else None


def _marks(items: list[Any]) -> str:
    return ",".join("?" * len(items))
