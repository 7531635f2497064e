"""Shared by the source tests: a real video file, an MJPEG-over-HTTP server, and a runner
whose frames and states are collected."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge_agent.sources.base import Frame, Source, SourceState
from edge_agent.sources.runner import SourceRunner


def numbered_image(i: int, width: int = 640, height: int = 480) -> npt.NDArray[np.uint8]:
    image = np.full((height, width, 3), (i * 7) % 256, np.uint8)
    cv2.putText(image, str(i), (width // 4, height // 2), 0, 3, (255, 255, 255), 5)
    return image


def write_video(path: Path, frames: int = 30, fps: float = 30.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(numbered_image(i))
    writer.release()
    return path


def corrupt_jpeg_frame(path: Path, which: int) -> None:
    """Zero the start of the `which`th JPEG in an MJPG file: that frame fails to decode."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    start = starts[which]
    data[start + 2 : start + 1500] = bytes(1498)
    path.write_bytes(bytes(data))


class Collector:
    """on_frame and on_state for a runner, with waits on what they saw."""

    def __init__(self, on_frame: Callable[[Frame], None] | None = None) -> None:
        self.frames: list[Frame] = []
        self.states: list[tuple[SourceState, str]] = []
        self._extra = on_frame
        self._cond = threading.Condition()

    def on_frame(self, frame: Frame) -> None:
        with self._cond:
            self.frames.append(frame)
            self._cond.notify_all()
        if self._extra is not None:
            self._extra(frame)

    def on_state(self, name: str, state: SourceState, detail: str) -> None:
        with self._cond:
            self.states.append((state, detail))
            self._cond.notify_all()

    def wait(self, check: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Until check() holds; it is also polled, for conditions no callback signals."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not check():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.02))
            return True

    def wait_state(self, state: SourceState, timeout: float = 5.0) -> bool:
        return self.wait(lambda: any(s == state for s, _ in self.states), timeout)

    def wait_frames(self, n: int, timeout: float = 5.0) -> bool:
        return self.wait(lambda: len(self.frames) >= n, timeout)

    def state_names(self) -> list[SourceState]:
        with self._cond:
            return [s for s, _ in self.states]


def start_runner(source: Source, collector: Collector) -> SourceRunner:
    runner = SourceRunner(source, collector.on_frame, collector.on_state)
    runner.start()
    return runner


def read_all(source: Source, limit: int = 10_000) -> list[Frame]:
    """open, read until the end (or `limit` frames), close: what a runner does, inline."""
    from edge_agent.sources.base import EndOfStream

    frames: list[Frame] = []
    source.open()
    try:
        while len(frames) < limit:
            try:
                frame = source.read()
            except EndOfStream:
                break
            if frame is not None:
                frames.append(frame)
    finally:
        source.close()
    return frames


class MjpegServer:
    """multipart/x-mixed-replace JPEGs over HTTP on 127.0.0.1, like an IP camera. stop()
    cuts every open stream; start() again serves on the same port."""

    def __init__(self, port: int = 0, interval: float = 0.02) -> None:
        self.port = port
        self.interval = interval
        self.jpegs = [
            cv2.imencode(".jpg", numbered_image(i, 320, 240))[1].tobytes() for i in range(8)
        ]
        self._server: http.server.HTTPServer | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        outer = self
        stopped = self._stopped = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not stopped.is_set():
                        jpeg = outer.jpegs[i % len(outer.jpegs)]
                        i += 1
                        head = b"--frame\r\nContent-Type: image/jpeg\r\n"
                        head += b"Content-Length: %d\r\n\r\n" % len(jpeg)
                        self.wfile.write(head + jpeg + b"\r\n")
                        time.sleep(outer.interval)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        server = Server(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
