"""Hands messages to the outbox: pipelines put, one writer thread commits in batches, so
hand-off never waits on the disk. What cannot be stored yet (the disk is full, or the
outbox is at its bound for a class that refuses rather than drops) waits in memory, up to
a bound, and is tried again every second: it is stored once space returns. Past the bound,
or still waiting at stop, it is counted and logged, never dropped silently.

Copies of results (the JSON-lines file) are written only from batches already committed,
so a copy never holds a result the outbox lacks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from edge_agent.counters import Counters
from edge_agent.link.topics import result_topic
from edge_agent.outbox.database import OutboxWriteError
from edge_agent.outbox.store import Message, MessageClass, Outbox
from edge_agent.payloads import ResultPayload

log = logging.getLogger(__name__)

_MAX_BATCH = 2000
_RETRY_S = 1.0
_MAX_WAITING_BYTES = 16 * 1024 * 1024  # held in memory while nothing can be stored
_STOP_SHARE = 0.8  # of close()'s timeout spent retrying before what waits is given up

# Queue items: a message to store (with what to call once it is committed), an Event to set
# once all before it are committed, or None to stop.
_Item = Message | tuple[Message, Callable[[], None]] | threading.Event | None


class CommittedCopy(Protocol):
    """Where committed results are copied (sinks.JsonlCopy)."""

    def put_committed(self, bodies: list[bytes]) -> None: ...

    def close(self, timeout: float = 5.0) -> None: ...


class OutboxWriter:
    """A ResultSink whose results become outbox rows, and the way in for other messages."""

    def __init__(
        self,
        outbox: Outbox,
        topic_prefix: str,
        device: str,
        copies: Sequence[CommittedCopy] = (),
    ) -> None:
        self.outbox = outbox
        self.topic_prefix = topic_prefix
        self.device = device
        self.copies = list(copies)
        self.committed = 0
        self.taken = Counters()  # by class, this run; read by telemetry's thread
        self.stored = Counters()
        self.disk_full = False  # the last write failed for a full disk
        self.write_error = ""  # the last write's error, while writes fail
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._waiting: list[Message] = []
        self._waiting_bytes = 0
        self._blocked = False  # the last try stored not all: wait for the retry time
        self._refusing = False
        self._retry_at = 0.0
        self._stop_by: float | None = None
        self._stopping = False  # the stop item was taken from the queue
        self._flushes: list[threading.Event] = []  # set once the disk takes writes again
        self._interval = outbox.settings.commit_interval_ms / 1000
        self.on_commit: Callable[[], None] = lambda: None  # the sender's wake-up
        self._on_durable: dict[str, Callable[[], None]] = {}  # message id -> callback
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def put(self, payload: ResultPayload, on_durable: Callable[[], None] | None = None) -> None:
        topic = result_topic(self.topic_prefix, self.device, payload.pipeline)
        body = payload.model_dump_json(by_alias=True).encode()
        message = Message(payload.id, topic, body, 1, "result", time.time())
        self._queue.put(message if on_durable is None else (message, on_durable))

    def put_message(self, topic: str, payload: bytes, cls: MessageClass, message_id: str) -> None:
        self._queue.put(Message(message_id, topic, payload, 1, cls, time.time()))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Messages held in memory, not yet stored."""
        return len(self._waiting)

    def flush(self, timeout: float = 5.0) -> bool:
        """True once everything put before this call is committed (or refused)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Commits what is queued (retrying for most of `timeout` if the disk is full,
        then counting and logging what is left), ends the thread, then closes the copies;
        a second call does nothing."""
        if self._thread.is_alive():
            self._stop_by = time.monotonic() + timeout * _STOP_SHARE
            self._queue.put(None)
            self._thread.join(timeout)
            for copy in self.copies:
                copy.close(timeout)
            log.info("%s", self.summary())

    def summary(self) -> str:
        """One line on this run: taken and stored by class, drops, the WAL's peak."""

        def counts(counter: Mapping[str, int]) -> str:
            return ", ".join(f"{cls} {n}" for cls, n in sorted(counter.items())) or "none"

        return (
            f"outbox: taken {counts(self.taken)}; stored {counts(self.stored)}; "
            f"dropped {counts(self.outbox.drops)}; WAL peak {self.outbox.wal_peak // 1024} kB "
            f"(bound {self.outbox.wal_limit // 1024} kB)"
        )

    # The writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            flushed, stop = self._gather()
            now = time.monotonic()
            final = stop and (self._stop_by is None or now >= self._stop_by)
            if self._waiting and (not self._blocked or now >= self._retry_at or final):
                self._commit()
            self._flushes.extend(flushed)
            if not self.write_error:
                for event in self._flushes:
                    event.set()
                self._flushes.clear()
            if stop and (final or not self._waiting):
                break
        if self._waiting:
            self._give_up(self._waiting, "at stop")

    def _gather(self) -> tuple[list[threading.Event], bool]:
        """Moves what the queue holds into the waiting list: the first item waited for
        (until the retry time, if messages wait), then what came within the commit
        interval. True with it: stop was asked."""
        flushed: list[threading.Event] = []
        timeout = None
        if self._waiting:
            timeout = max(0.0, self._retry_at - time.monotonic()) if self._blocked else 0.0
        if self._stopping:
            timeout = min(_RETRY_S, max(0.0, (self._stop_by or 0.0) - time.monotonic()))
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return flushed, self._stopping
        # Sleep out the interval, then take what came: waiting on the queue instead would
        # wake this thread for every result put, each wake-up taking the GIL from the
        # inference threads (about four context switches per result at 100 results/s).
        if self._interval > 0:
            time.sleep(self._interval)
        taken = 0
        while True:
            if item is None:
                self._stopping = True
            elif isinstance(item, threading.Event):
                flushed.append(item)
            else:
                message = item[0] if isinstance(item, tuple) else item
                if isinstance(item, tuple):
                    self._on_durable[message.id] = item[1]
                self.taken.add(message.cls)
                self._hold(message)
                taken += 1
            if taken >= _MAX_BATCH:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return flushed, self._stopping

    def _hold(self, message: Message) -> None:
        self._waiting.append(message)
        self._waiting_bytes += len(message.payload)
        if self._waiting_bytes <= _MAX_WAITING_BYTES:
            return
        # Past the bound: the oldest held go, counted.
        cut = 0
        while self._waiting_bytes > _MAX_WAITING_BYTES * 0.9 and cut < len(self._waiting) - 1:
            self._waiting_bytes -= len(self._waiting[cut].payload)
            cut += 1
        gone, self._waiting = self._waiting[:cut], self._waiting[cut:]
        self._give_up(gone, f"past the {_MAX_WAITING_BYTES // 2**20} MB held in memory")

    def _commit(self) -> None:
        """Tries to store everything waiting, in appends small enough for the WAL's bound;
        keeps what is refused or fails."""
        batch, self._waiting, self._waiting_bytes = self._waiting, [], 0
        still: list[Message] = []
        failed: OutboxWriteError | None = None
        for start, end in _chunks(batch, self.outbox.write_bytes):
            chunk = batch[start:end]
            try:
                refused = self.outbox.append(chunk)
            except OutboxWriteError as exc:
                failed = exc
                still.extend(batch[start:])
                break
            self._stored(chunk, refused)
            still.extend(refused)
        self._report(failed, len(still))
        self._waiting = still
        self._waiting_bytes = sum(len(m.payload) for m in still)
        self._blocked = bool(still)
        self._retry_at = time.monotonic() + _RETRY_S

    def _stored(self, chunk: list[Message], refused: list[Message]) -> None:
        refused_ids = {m.id for m in refused}
        stored = [m for m in chunk if m.id not in refused_ids] if refused else chunk
        if not stored:
            return
        self.committed += len(stored)
        self.stored.add_each(m.cls for m in stored)
        self.on_commit()
        if self.copies:
            bodies = [m.payload for m in stored if m.cls == "result"]
            for copy in self.copies:
                copy.put_committed(bodies)
        if self._on_durable:
            self._confirm(stored)

    def _report(self, failed: OutboxWriteError | None, held: int) -> None:
        """One line when writes start failing, or start being refused, and one when they
        recover: not one per retry."""
        if failed is not None:
            if str(failed) != self.write_error:
                log.error(
                    "outbox: %s; holding %d message(s) in memory, retrying every %.0f s",
                    failed,
                    held,
                    _RETRY_S,
                )
            self.write_error = str(failed)
            self.disk_full = failed.disk_full
            return
        if self.write_error:
            log.info("outbox: storing again (%s before)", self.write_error)
            self.write_error = ""
            self.disk_full = False
        if held and not self._refusing:
            log.warning(
                "outbox full: %d message(s) refused, held in memory until there is room", held
            )
        elif not held and self._refusing:
            log.info("outbox: room again, held messages stored")
        self._refusing = bool(held)

    def _confirm(self, stored: list[Message]) -> None:
        """Tells the source that a result is stored (an image folder journals the file
        only now). One not stored is not confirmed: its input is taken again after a
        restart."""
        for m in stored:
            callback = self._on_durable.pop(m.id, None)
            if callback is None:
                continue
            try:
                callback()
            except Exception:  # the writer must keep committing
                log.exception("outbox: a commit callback failed")

    def _give_up(self, messages: list[Message], when: str) -> None:
        reason = "disk_full" if self.disk_full or self.write_error else "rejected_full"
        by_class: Counter[str] = Counter(m.cls for m in messages)
        for cls, count in by_class.items():
            self.outbox.count_drop(f"{cls}:{reason}", count)
        for m in messages:
            self._on_durable.pop(m.id, None)
        cause = self.write_error or "the outbox is full"
        log.error(
            "outbox: %d message(s) lost %s, never stored (%s): %s",
            len(messages),
            when,
            ", ".join(f"{cls} {n}" for cls, n in sorted(by_class.items())),
            cause,
        )


def _chunks(batch: list[Message], limit: int) -> list[tuple[int, int]]:
    """(start, end) of runs of at most `limit` payload bytes (at least one message each)."""
    runs = []
    start = size = 0
    for i, m in enumerate(batch):
        if i > start and size + len(m.payload) > limit:
            runs.append((start, i))
            start, size = i, 0
        size += len(m.payload)
    if start < len(batch):
        runs.append((start, len(batch)))
    return runs
