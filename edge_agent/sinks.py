"""Where results go once a pipeline has them. Hand-off is a queue put; a writer thread
does the I/O, so a slow disk never stalls inference. The outbox writer is the sink; a
JSON-lines copy is fed from its committed batches."""

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

_BATCH = 256  # lines gathered before a write and flush (a committed batch stays whole)


OnDurable = Callable[[], None]


class ResultSink(Protocol):
    def put(self, payload: ResultPayload, on_durable: OnDurable | None = None) -> None:
        """Takes the result; `on_durable` is called once it survives a crash (a sink that
        keeps nothing durable never calls it)."""

    def close(self, timeout: float = 5.0) -> None: ...


class JsonlCopy:
    """A copy of committed results as JSON lines, to a file (appended) or to stdout ("-").
    The outbox writer hands it each batch after the batch's commit, so after a crash the
    copy holds nothing the outbox lacks (it may lack the last lines the outbox has)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.written = 0
        self._queue: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        if target == "-":
            self._file: IO[bytes] = sys.stdout.buffer
        else:
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("ab")
        self._thread = threading.Thread(target=self._run, name="copy-jsonl", daemon=True)
        self._thread.start()

    def put_committed(self, bodies: list[bytes]) -> None:
        if bodies:
            self._queue.put(bodies)

    def close(self, timeout: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._file is not sys.stdout.buffer:
            self._file.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            lines = [] if item is None else list(item)
            done = item is None
            # Take what else is waiting, so a burst costs one write and one flush.
            while not done and len(lines) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                else:
                    lines.extend(more)
            if lines:
                try:
                    self._file.write(b"\n".join(lines) + b"\n")
                    self._file.flush()
                    self.written += len(lines)
                except OSError as exc:
                    log.error("results file %s: %s", self.target, exc)
            if done:
                return
