"""Hands messages to the outbox: pipelines put, one writer thread commits in batches, so
hand-off never waits on the disk. When the disk is full, messages wait in memory (up to a
bound) and the writer retries; past the bound they are counted as lost to a full disk."""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from edge_agent.outbox.store import Message, MessageClass, Outbox
from edge_agent.payloads import ResultPayload

log = logging.getLogger(__name__)

_MAX_BATCH = 2000
_RETRY_S = 1.0
_MAX_WAITING = 50_000  # messages held in memory while the disk is full

# Queue items: a message to store (with what to call once it is committed), an Event to set
# once all before it are committed, or None to stop.
_Item = Message | tuple[Message, Callable[[], None]] | threading.Event | None


class OutboxWriter:
    """A ResultSink whose results become outbox rows, and the way in for other messages."""

    def __init__(self, outbox: Outbox, topic_prefix: str, device: str) -> None:
        self.outbox = outbox
        self.topic_prefix = topic_prefix
        self.device = device
        self.committed = 0
        self.disk_full = False
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._waiting: list[Message] = []
        self._flushes: list[threading.Event] = []  # set once the disk takes writes again
        self._interval = outbox.settings.commit_interval_ms / 1000
        self.on_commit: Callable[[], None] = lambda: None  # the sender's wake-up
        self._on_durable: dict[str, Callable[[], None]] = {}  # message id -> callback
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    def put(self, payload: ResultPayload, on_durable: Callable[[], None] | None = None) -> None:
        topic = f"{self.topic_prefix}/{self.device}/results/{payload.pipeline}"
        body = payload.model_dump_json(by_alias=True).encode()
        message = Message(payload.id, topic, body, 1, "result", time.time())
        self._queue.put(message if on_durable is None else (message, on_durable))

    def put_message(self, topic: str, payload: bytes, cls: MessageClass, message_id: str) -> None:
        self._queue.put(Message(message_id, topic, payload, 1, cls, time.time()))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def flush(self, timeout: float = 5.0) -> bool:
        """True once everything put before this call is committed (or refused)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Commits what is queued, then ends the thread; a second call does nothing."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    # The writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch, flushed, stop = self._gather()
            self._commit(batch)
            self._flushes.extend(flushed)
            if not self.disk_full:
                for event in self._flushes:
                    event.set()
                self._flushes.clear()
            if stop and (not self.disk_full or not self._waiting):
                return

    def _gather(self) -> tuple[list[Message], list[threading.Event], bool]:
        batch, self._waiting = self._waiting, []
        flushed: list[threading.Event] = []
        stop = False
        try:
            item = self._queue.get(timeout=_RETRY_S if batch else None)
        except queue.Empty:
            return batch, flushed, stop
        deadline = time.monotonic() + self._interval
        while True:
            if item is None:
                stop = True
            elif isinstance(item, threading.Event):
                flushed.append(item)
            elif isinstance(item, tuple):
                batch.append(item[0])
                self._on_durable[item[0].id] = item[1]
            else:
                batch.append(item)
            if len(batch) >= _MAX_BATCH:
                break
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch, flushed, stop

    def _commit(self, batch: list[Message]) -> None:
        if not batch:
            return
        try:
            refused = self.outbox.append(batch)
        except sqlite3.OperationalError as exc:
            # Disk full: the transaction rolled back and the database is intact. Keep the
            # batch and try again.
            if not self.disk_full:
                log.error("outbox: cannot commit (%s); holding messages in memory", exc)
            self.disk_full = True
            self._waiting = self._bounded(batch)
            return
        if self.disk_full:
            log.info("outbox: committing again")
            self.disk_full = False
        self.committed += len(batch) - len(refused)
        self.on_commit()
        if refused:
            log.warning("outbox full: %d message(s) refused", len(refused))
        if self._on_durable:
            self._confirm(batch, {m.id for m in refused})

    def _confirm(self, batch: list[Message], refused: set[str]) -> None:
        """Tells the source that a result is stored (an image folder journals the file
        only now). A refused one is not confirmed: its input is taken again after a
        restart."""
        for m in batch:
            callback = self._on_durable.pop(m.id, None)
            if callback is None or m.id in refused:
                continue
            try:
                callback()
            except Exception:  # the writer must keep committing
                log.exception("outbox: a commit callback failed")

    def _bounded(self, batch: list[Message]) -> list[Message]:
        if len(batch) <= _MAX_WAITING:
            return batch
        for m in batch[:-_MAX_WAITING]:
            self._on_durable.pop(m.id, None)
            key = f"{m.cls}:disk_full"
            self.outbox.drops[key] = self.outbox.drops.get(key, 0) + 1
        return batch[-_MAX_WAITING:]
