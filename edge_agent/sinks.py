"""Where results go once a pipeline has them. Hand-off is a queue put; a writer thread
does the I/O, so a slow disk never stalls inference. Nothing handed off is dropped."""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from edge_agent.payloads import ResultPayload

log = logging.getLogger(__name__)

_BATCH = 256  # lines written per flush at most


OnDurable = Callable[[], None]


class ResultSink(Protocol):
    def put(self, payload: ResultPayload, on_durable: OnDurable | None = None) -> None:
        """Takes the result; `on_durable` is called once it survives a crash (a sink that
        keeps nothing durable never calls it)."""

    def close(self, timeout: float = 5.0) -> None: ...


class JsonlSink:
    """Results as JSON lines, to a file (appended) or to stdout ("-")."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.written = 0
        self._queue: queue.SimpleQueue[ResultPayload | None] = queue.SimpleQueue()
        if target == "-":
            self._file: IO[str] = sys.stdout
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name="sink-jsonl", daemon=True)
        self._thread.start()

    def put(self, payload: ResultPayload, on_durable: OnDurable | None = None) -> None:
        self._queue.put(payload)  # a copy for people: it never vouches for durability

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)
        if self._file is not sys.stdout:
            self._file.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            lines = []
            done = item is None
            if item is not None:
                lines.append(item.model_dump_json(by_alias=True))
            # Take what else is waiting, so a burst costs one write and one flush.
            while not done and len(lines) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                else:
                    lines.append(more.model_dump_json(by_alias=True))
            if lines:
                try:
                    self._file.write("\n".join(lines) + "\n")
                    self._file.flush()
                    self.written += len(lines)
                except OSError as exc:
                    log.error("results file %s: %s", self.target, exc)
            if done:
                return


class FanOutSink:
    """Every result to each sink in turn: the outbox first, then any copies."""

    def __init__(self, sinks: list[ResultSink]) -> None:
        self.sinks = sinks

    def put(self, payload: ResultPayload, on_durable: OnDurable | None = None) -> None:
        first, *copies = self.sinks
        first.put(payload, on_durable)  # the outbox says when it is durable
        for sink in copies:
            sink.put(payload)

    def close(self, timeout: float = 5.0) -> None:
        for sink in self.sinks:
            sink.close(timeout)
