"""Serving an update's files to devices: MQTT chunks on request, or HTTP with Range.

`ChunkServer` answers the requests of `edge_agent.updates.transfer.ChunkPull`;
`RangeHTTPServer` serves a folder to `http_download` (and to tests, which can make it cut a
response short or ignore Range).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import re
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, cast

import paho.mqtt.client as mqtt

from edge_agent.json_body import parse_object
from edge_agent.link import topics
from edge_agent.updates.transfer import BLOCK

log = logging.getLogger(__name__)

# A chunk request is about 50 bytes: {"file": ..., "from": ..., "count": ...}.
MAX_REQUEST_BYTES = 1024


class ChunkServer:
    """Answers `{prefix}/+/transfer/{id}/get` requests with chunks of `files` (role -> path).

    paho's network thread only queues a request; the `chunk-server` thread reads the chunks
    with pread and publishes them (QoS 1), holding at most `max_pending` unacknowledged so a
    large fleet cannot pile the files up in paho's memory. Requests for unknown roles or
    indexes past the end are dropped (debug log): the device asks again or gives up.
    """

    def __init__(
        self,
        client: mqtt.Client,
        prefix: str,
        transfer_id: str,
        files: dict[str, Path],
        chunk_size: int,
        *,
        max_count: int = 64,
        max_pending: int = 32,
        publish_timeout_s: float = 10.0,
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be > 0")
        if transfer_id == topics.ANY:
            raise ValueError(f"transfer id {transfer_id!r} cannot be one MQTT topic level")
        # Checks both levels (ValueError, one line).
        self.subscription = topics.TransferGet(prefix, topics.ANY, transfer_id).topic
        self.client = client
        self.prefix = prefix
        self.transfer_id = transfer_id
        self.files = dict(files)
        self.chunk_size = chunk_size
        self.max_count = max_count
        self.max_pending = max_pending
        self.publish_timeout_s = publish_timeout_s
        self.sizes = {role: path.stat().st_size for role, path in self.files.items()}
        self._fds: dict[str, int] = {}
        # Bounded: a flood of requests is dropped rather than held; devices ask again.
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=10_000)
        self._lock = threading.Lock()
        self._asked: dict[str, dict[str, int]] = {}  # device -> role -> bytes up to the last ask
        self._sent: dict[str, int] = {}  # device -> bytes published, repeats included
        self._pending: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="chunk-server", daemon=True)

    def start(self) -> ChunkServer:
        for role, path in self.files.items():
            self._fds[role] = os.open(path, os.O_RDONLY)
        self.client.message_callback_add(self.subscription, self._on_get)
        self._thread.start()
        self.subscribe()
        return self

    def subscribe(self) -> None:
        """Subscribe to the requests; again after a reconnect that lost the session."""
        self.client.subscribe(self.subscription, qos=1)

    def stop(self, timeout: float = 5.0) -> None:
        self.client.message_callback_remove(self.subscription)
        with contextlib.suppress(Exception):
            self.client.unsubscribe(self.subscription)
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def progress(self) -> dict[str, tuple[int, int]]:
        """device -> (bytes asked for so far, total bytes), for a progress bar. A device that
        resumed starts part-way; one that is done asked for everything."""
        total = sum(self.sizes.values())
        with self._lock:
            return {device: (sum(roles.values()), total) for device, roles in self._asked.items()}

    def sent(self) -> dict[str, int]:
        """device -> bytes published to it, repeats included."""
        with self._lock:
            return dict(self._sent)

    # paho's network thread

    def _on_get(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = topics.parse(msg.topic)
        if not isinstance(topic, topics.TransferGet):
            return
        try:
            self._queue.put_nowait((topic.device, bytes(msg.payload)))
        except queue.Full:
            log.debug("chunk server: request queue full, dropped a request from %s", topic.device)

    # the chunk-server thread

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            device, payload = item
            try:
                self._answer(device, payload)
            except OSError:
                log.exception("chunk server: answering %s failed", device)

    def _answer(self, device: str, payload: bytes) -> None:
        try:
            # A device's request: a hostile one (deep nesting, huge) is refused, not raised.
            request = parse_object(payload, max_bytes=MAX_REQUEST_BYTES)
            role, first, count = request["file"], request["from"], request["count"]
        except (ValueError, TypeError, KeyError):
            log.debug("chunk server: %s sent a malformed request %r", device, payload[:100])
            return
        size = self.sizes.get(role) if isinstance(role, str) else None
        chunks = -(-size // self.chunk_size) if size is not None else 0
        if not (type(first) is int and type(count) is int and 0 <= first < chunks and count > 0):
            log.debug("chunk server: %s asked for %r; no such chunks", device, payload[:100])
            return
        assert size is not None
        end = min(first + min(count, self.max_count), chunks)
        with self._lock:
            asked = self._asked.setdefault(device, {})
            asked[role] = max(asked.get(role, 0), min(end * self.chunk_size, size))
        for index in range(first, end):
            if self._stopping.is_set():
                return
            data = os.pread(self._fds[role], self.chunk_size, index * self.chunk_size)
            self._throttle()
            topic = topics.TransferData(self.prefix, device, self.transfer_id, role, index)
            info = self.client.publish(topic.topic, data, qos=1)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                self._pending.append(info)
            with self._lock:
                self._sent[device] = self._sent.get(device, 0) + len(data)

    def _throttle(self) -> None:
        """Forget the acknowledged publishes; wait while `max_pending` are not."""
        pending = self._pending
        while pending:
            head = pending[0]
            # A message that never gets its PUBACK (the link is down) is given up on after
            # the timeout: the device asks for that chunk again.
            with contextlib.suppress(RuntimeError, ValueError):
                if not head.is_published() and len(pending) < self.max_pending:
                    return
                head.wait_for_publish(self.publish_timeout_s)
            pending.popleft()


class RangeNotSatisfiable(ValueError):
    """A range that starts past the end of the file: answered with 416."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, or None to send the whole file (no
    header, a malformed one, or several ranges, which RFC 9110 lets a server ignore)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or not any(match.groups()):
        return None
    first_text, last_text = match.groups()
    if not first_text:  # bytes=-N: the last N bytes
        if int(last_text) == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - int(last_text)), size - 1
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if last_text and int(last_text) < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable(header)
    return first, last


class RangeHTTPServer:
    """Serves the files of one folder over HTTP/1.1 with single-range requests.

    For tests: `cut_after` makes the next `cuts` responses close the connection after that
    many body bytes (after `stall_s` of silence, as a link that stops answering would),
    `ignore_range` answers every GET with the whole file (200), and `requests` records
    (path, Range header) of each GET.
    """

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cut_after: int | None = None,
        cuts: int = 1,
        stall_s: float = 0.0,
        ignore_range: bool = False,
    ) -> None:
        self.directory = directory.resolve()
        self.host = host
        self.port = port
        self.cut_after = cut_after
        self.cuts = cuts
        self.stall_s = stall_s
        self.ignore_range = ignore_range
        self.requests: list[tuple[str, str | None]] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> RangeHTTPServer:
        server = _Server((self.host, self.port), _RangeHandler)
        server.owner = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), name="range-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5.0)

    def __enter__(self) -> RangeHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, path: str, range_header: str | None) -> int | None:
        """Note a GET; returns where to cut its body, if this one is to be cut."""
        with self._lock:
            self.requests.append((path, range_header))
            if self.cut_after is None or self.cuts <= 0:
                return None
            self.cuts -= 1
            return self.cut_after


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: RangeHTTPServer

    def process_request(self, request: Any, client_address: Any) -> None:
        # As ThreadingMixIn does, but with a thread name that says whose thread it is.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"range-http-{client_address[1]}",
            daemon=True,
        )
        thread.start()


class _RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("range-http: %s", format % args)

    def _respond(self, body: bool) -> None:
        owner = cast(_Server, self.server).owner
        path = self._file(owner.directory)
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        range_header = self.headers.get("Range")
        cut = owner._record(self.path, range_header) if body else None
        try:
            span = None if owner.ignore_range else parse_range(range_header, size)
        except RangeNotSatisfiable:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = span or (0, size - 1)
        self.send_response(206 if span else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(last - first + 1))
        if span:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.end_headers()
        if body:
            try:
                self._send_body(path, first, last - first + 1, cut)
            except ConnectionError as exc:
                # The client went away (it refused what it got, or its link dropped).
                log.debug("range-http: %s: %s", self.path, exc)
                self.close_connection = True

    def _send_body(self, path: Path, offset: int, length: int, cut: int | None) -> None:
        stall_s = cast(_Server, self.server).owner.stall_s
        sent = 0
        with open(path, "rb") as f:
            f.seek(offset)
            while sent < length:
                block = f.read(min(BLOCK, length - sent))
                if not block:
                    break
                if cut is not None and sent + len(block) > cut:
                    self.wfile.write(block[: cut - sent])
                    self.wfile.flush()
                    if stall_s:
                        time.sleep(stall_s)
                    # Close mid-body, as a dropped link would.
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(block)
                sent += len(block)

    def _file(self, root: Path) -> Path | None:
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        parts = PurePosixPath(name).parts
        if not parts or any(part in ("..", ".") or part.startswith(".") for part in parts):
            return None
        path = (root / name).resolve()
        return path if path.is_relative_to(root) and path.is_file() else None
