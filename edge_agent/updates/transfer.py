"""Fetching an update's files onto the device: HTTP with Range resume, or chunks pulled over MQTT.

Both write to a `.part` file and resume from its length, so a cut link or a restart costs the
bytes in flight, not the whole file. Neither checks the sha256: the caller does, once the part
is complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from edge_agent.backoff import Backoff
from edge_agent.counters import Counters
from edge_agent.errors import UserError

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called with (bytes done, total) as a download advances."""

BLOCK = 64 * 1024
_RETRY_MAX_S = 10.0  # the longest wait between two HTTP tries


class TransferError(UserError):
    """A download that cannot complete: one line naming the file or URL and the problem."""


class TransferStopped(TransferError):
    """The stop event was set before the download completed; the part file is kept."""


def _no_progress(done: int, total: int) -> None:
    pass


# --- HTTP -------------------------------------------------------------------------------------


def http_download(
    url: str,
    part: Path,
    size: int,
    *,
    timeout_s: float,
    progress: Progress | None = None,
    stop: threading.Event,
    attempts: int = 5,
    backoff_s: float = 0.5,
) -> Path:
    """Download `url` into `part` until it holds `size` bytes, resuming from its length with
    `Range: bytes=N-`. Connection errors, timeouts and 5xx are retried with backoff; after
    `attempts` tries in a row that added no byte, TransferError."""
    # urllib and ssl (about 8 MB resident) load with the first download, not with the agent.
    import http.client
    import urllib.error

    report = progress or _no_progress
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "a+b") as f:
        have = os.fstat(f.fileno()).st_size
        if have > size:
            # Not a prefix of this file (an older version, say): start over.
            f.truncate(0)
            have = 0
        failures = 0
        backoff = Backoff(backoff_s, _RETRY_MAX_S, jitter=False)
        while have < size:
            if stop.is_set():
                raise TransferStopped(f"{url}: stopped after {have} of {size} bytes")
            before = have
            problem = "the connection ended early"
            try:
                _http_attempt(url, f, have, size, timeout_s, report, stop)
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code < 500 and exc.code not in (408, 429):
                    raise TransferError(f"{url}: HTTP {exc.code} {exc.reason}") from None
                problem = f"HTTP {exc.code} {exc.reason}"
            except (OSError, http.client.HTTPException) as exc:
                # URLError, refused, reset and socket timeouts are all OSError.
                problem = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            # What was written counts, even when the read that followed failed.
            f.flush()
            have = os.fstat(f.fileno()).st_size
            if have >= size or stop.is_set():
                continue
            # A changed length is progress: more bytes, or a start over (a 200 to a Range).
            failures = 0 if have != before else failures + 1
            if failures >= attempts:
                raise TransferError(
                    f"{url}: {problem} at {have} of {size} bytes ({attempts} tries, no progress)"
                )
            log.info("%s: %s; retrying", url, problem)
            if stop.wait(backoff.delay(failures - 1)):
                raise TransferStopped(f"{url}: stopped after {have} of {size} bytes")
        f.flush()
        os.fsync(f.fileno())
    report(size, size)
    return part


def _http_attempt(
    url: str,
    f: BinaryIO,
    have: int,
    size: int,
    timeout_s: float,
    report: Progress,
    stop: threading.Event,
) -> None:
    """One request from `have` on, appending to `f`."""
    import urllib.error
    import urllib.request

    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout_s
        )
    except urllib.error.HTTPError as exc:
        if exc.code != 416:
            raise
        exc.close()
        # What we hold is longer than the server's file: a different file, so start over.
        _check_total(url, f, _range_total(exc.headers.get("Content-Range", "")), size)
        f.truncate(0)
        return
    with response:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            start = re.match(r"^\s*bytes\s+(\d+)-", content_range)
            if start is None or int(start.group(1)) != have:
                raise TransferError(f"{url}: asked for bytes from {have}, got {content_range!r}")
            _check_total(url, f, _range_total(content_range), size)
        elif response.status == 200:
            if have:
                log.info("%s: the server ignored the Range request; starting over", url)
            f.truncate(0)
            have = 0
            length = response.headers.get("Content-Length", "")
            _check_total(url, f, int(length) if length.isdigit() else None, size)
        else:
            raise TransferError(f"{url}: unexpected HTTP {response.status} {response.reason}")
        while not stop.is_set():
            # read1: what arrived so far, so a read that times out later loses nothing.
            block = response.read1(BLOCK)
            if not block:
                break
            if have + len(block) > size:
                raise _too_long(url, f, size)
            f.write(block)
            have += len(block)
            report(have, size)


def _range_total(content_range: str) -> int | None:
    """N of `bytes A-B/N` or `bytes */N`; None when absent or `*`."""
    match = re.match(r"^\s*bytes\s+(?:\d+-\d+|\*)/(\d+)\s*$", content_range)
    return int(match.group(1)) if match else None


def _check_total(url: str, f: BinaryIO, total: int | None, size: int) -> None:
    if total is None or total == size:
        return
    if total > size:
        raise _too_long(url, f, size)
    # Retrying cannot help: the server has a different (shorter) file.
    raise TransferError(f"{url}: the server has {total} bytes, the manifest says {size}")


def _too_long(url: str, f: BinaryIO, size: int) -> TransferError:
    # What came is not the manifest's file; resuming from it later would only repeat this.
    f.truncate(0)
    return TransferError(f"{url}: more than the {size} bytes the manifest says")


# --- MQTT chunks ------------------------------------------------------------------------------


class ChunkPull:
    """Pulls one file as numbered chunks over a connection it does not own.

    `publish(topic, payload)` sends a request (QoS 1) and returns False when offline; it should
    not queue the message then, since a request is asked again anyway. The connection's
    message handler passes each chunk to `feed()`, and its on-connect handler calls `resend()`:
    chunks published while the device was away are lost with its session.
    """

    def __init__(
        self,
        publish: Callable[[str, bytes], bool],
        request_topic: str,
        role: str,
        part: Path,
        size: int,
        chunk_size: int,
        window: int,
        timeout_s: float,
        progress: Progress | None = None,
        *,
        idle_limit_s: float | None = None,
    ) -> None:
        if size < 0 or chunk_size <= 0 or window <= 0 or timeout_s <= 0:
            raise ValueError("size >= 0, chunk_size, window and timeout_s > 0 are required")
        self.publish = publish
        self.request_topic = request_topic
        self.role = role
        self.part = part
        self.size = size
        self.chunk_size = chunk_size
        self.window = window
        self.timeout_s = timeout_s
        self.progress = progress or _no_progress
        self.idle_limit_s = idle_limit_s
        self.chunks = -(-size // chunk_size)
        self.counts = Counters("requests")  # published; read from other threads
        self._cond = threading.Condition()
        self._next = 0  # the first chunk not yet in the part file
        self._held: dict[int, bytes] = {}  # arrived ahead of `_next`: at most `window`
        self._deadline: dict[int, float] = {}  # asked for, not arrived: when to ask again
        self._kick = False
        self._error: TransferError | None = None

    @property
    def requests(self) -> int:
        return self.counts["requests"]

    def _length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def feed(self, index: int, data: bytes) -> None:
        """One chunk as it arrived; from the network thread, so this only files it away."""
        with self._cond:
            if not self._next <= index < min(self._next + self.window, self.chunks):
                return  # a duplicate of one already written, or far ahead: ask for it later
            if index in self._held:
                return
            if len(data) != self._length(index):
                self._error = TransferError(
                    f"{self.role}: chunk {index} has {len(data)} bytes, expected "
                    f"{self._length(index)} (the sender has another file or chunk size)"
                )
            else:
                self._held[index] = data
                self._deadline.pop(index, None)
            if index == self._next or self._error:
                self._cond.notify_all()

    def resend(self) -> None:
        """Ask again now for everything outstanding: call it once the link is (back) up."""
        with self._cond:
            self._deadline.clear()
            self._kick = True
            self._cond.notify_all()

    def run(self, stop: threading.Event) -> Path:
        """Pull until the part file holds `size` bytes (then fsynced) and return its path."""
        self.part.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, "a+b") as f:
            done = self._resume(f)
            self.progress(done, self.size)
            last_change = time.monotonic()
            while done < self.size:
                with self._cond:
                    if self._error is not None:
                        raise self._error
                    ready = self._take_ready()
                for data in ready:
                    f.write(data)  # the file is in append mode: chunks land in order
                    done += len(data)
                if ready:
                    f.flush()
                    self.progress(done, self.size)
                    last_change = time.monotonic()
                    continue
                if stop.is_set():
                    raise TransferStopped(f"{self.role}: stopped after {done} of {self.size} bytes")
                if self.idle_limit_s is not None and (
                    time.monotonic() - last_change > self.idle_limit_s
                ):
                    raise TransferError(f"{self.role}: no chunk came for {self.idle_limit_s:g} s")
                online = self._ask()
                self._wait(online)
            f.flush()
            os.fsync(f.fileno())
        return self.part

    def _resume(self, f: BinaryIO) -> int:
        have = os.fstat(f.fileno()).st_size
        if have != self.size:
            # A chunk cut short by a crash is fetched again whole; a longer file is not ours.
            have = have - have % self.chunk_size if have < self.size else 0
            f.truncate(have)
        with self._cond:
            self._next = have // self.chunk_size if have < self.size else self.chunks
            self._held.clear()
            self._deadline.clear()
        if have:
            log.info("%s: resuming at %d of %d bytes", self.role, have, self.size)
        return have

    def _take_ready(self) -> list[bytes]:
        ready = []
        while self._next in self._held:
            ready.append(self._held.pop(self._next))
            self._next += 1
        return ready

    def _ask(self) -> bool:
        """Publish a request for each run of chunks in the window that is neither here nor
        asked for recently; False when the link is down."""
        now = time.monotonic()
        with self._cond:
            self._kick = False
            due = [
                i
                for i in range(self._next, min(self._next + self.window, self.chunks))
                if i not in self._held and self._deadline.get(i, 0.0) <= now
            ]
        runs: list[tuple[int, int]] = []
        for i in due:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
        for first, count in runs:
            payload = json.dumps({"file": self.role, "from": first, "count": count})
            if not self.publish(self.request_topic, payload.encode()):
                return False
            self.counts.add("requests")
            with self._cond:
                for i in range(first, first + count):
                    if i >= self._next and i not in self._held:
                        self._deadline[i] = now + self.timeout_s
        return True

    def _wait(self, online: bool) -> None:
        """Until the next chunk to write is here, a request falls due, `resend()`, or a short
        while passes so that `stop` is seen (an Event cannot wake a Condition)."""
        with self._cond:
            if self._next in self._held or self._error is not None or self._kick:
                return
            if online and self._deadline:
                wait = min(self._deadline.values()) - time.monotonic()
            else:
                # Offline (or nothing left to ask): `resend()` wakes us when the link is back.
                wait = min(1.0, self.timeout_s)
            self._cond.wait(max(0.0, min(wait, 0.25)))
