"""SourceRunner: states, backoff, frame-rate cap, failing handlers, and stop() while a
source is blocked on a real FIFO or socket."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.sources.base import (
    EndOfStream,
    Frame,
    Source,
    SourceConfig,
    SourceError,
    SourceState,
    SourceUnusable,
)
from edge_agent.sources.lines import LinesConfig, LinesSource
from edge_agent.sources.runner import SourceRunner
from edge_agent.sources.synthetic import SyntheticConfig, SyntheticSource
from tests.sources_helpers import Collector, start_runner


class Scripted(Source):
    """A source that does what a test says: fail to open n times, give frames at a pace,
    end, or block without heeding interrupt()."""

    def __init__(
        self,
        *,
        open_failures: int = 0,
        open_error: Exception | None = None,
        frames: int | None = None,
        every: float = 0.0,
        live: bool = False,
        fps: float | None = None,
        read_error: Exception | None = None,
        block: threading.Event | None = None,
        fail_after: int | None = None,
    ) -> None:
        config = SourceConfig(kind="scripted", fps=fps, reconnect_min_s=0.02, reconnect_max_s=0.05)
        super().__init__("scripted", config, Path("."))
        self.live = live
        self.open_failures = open_failures
        self.open_error = open_error or SourceError("camera unplugged")
        self.frames = frames
        self.every = every
        self.read_error = read_error
        self.block = block
        self.fail_after = fail_after
        self.opens = 0
        self.closes = 0
        self.given = 0

    def open(self) -> None:
        self.opens += 1
        if self.opens <= self.open_failures:
            raise self.open_error

    def read(self) -> Frame | None:
        if self.block is not None:
            self.block.wait()  # deaf to interrupt(), like a stuck driver
            raise SourceError("released")
        if self.read_error is not None:
            raise self.read_error
        if self.fail_after is not None and self.given >= self.fail_after * self.opens:
            raise SourceError("stream dropped")
        if self.frames is not None and self.given >= self.frames:
            raise EndOfStream("done")
        if self.every:
            time.sleep(self.every)
        self.given += 1
        return Frame(np.zeros((2, 2), np.uint8), time.monotonic(), time.time(), self.given - 1)

    def close(self) -> None:
        self.closes += 1


def test_reconnects_with_backoff_then_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge_agent.sources.runner")
    source = Scripted(open_failures=6, frames=3)
    collector = Collector()
    runner = start_runner(source, collector)
    assert collector.wait_state(SourceState.ENDED)
    runner.stop()
    assert collector.state_names() == [
        SourceState.RECONNECTING,
        SourceState.RUNNING,
        SourceState.ENDED,
    ]
    assert runner.reconnects == 6
    assert runner.last_error == "camera unplugged"
    assert len(collector.frames) == 3
    assert source.closes >= 6
    # Six identical failures: one warning, not six.
    warnings = [r for r in caplog.records if "camera unplugged" in r.getMessage()]
    assert len([r for r in warnings if r.levelno == logging.WARNING]) == 1


def test_a_flapping_source_logs_little(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "edge_agent.sources.runner")
    source = Scripted(fail_after=1)  # a frame, then the stream drops; again and again
    collector = Collector()
    runner = start_runner(source, collector)
    assert collector.wait(lambda: source.opens >= 5)
    runner.stop()
    assert len(collector.frames) >= 4
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert loud == [
        "source scripted: running",
        "source scripted: stream dropped; reconnecting",
        "source scripted: running",
        "source scripted: stopped",
    ]


def test_backoff_is_never_a_tight_loop() -> None:
    source = Scripted(open_failures=10**9)
    runner = SourceRunner(source, lambda frame: None)
    runner.start()
    time.sleep(0.3)
    runner.stop()
    # 0.02 s at least between tries, growing to 0.05: a handful, not thousands.
    assert 2 <= source.opens <= 16
    assert runner.state == SourceState.STOPPED


def test_unusable_fails_without_retrying() -> None:
    source = Scripted(open_failures=1, open_error=SourceUnusable("no GStreamer here"))
    collector = Collector()
    runner = start_runner(source, collector)
    assert collector.wait_state(SourceState.FAILED)
    runner.stop()
    assert runner.state == SourceState.FAILED
    assert runner.last_error == "no GStreamer here"
    assert source.opens == 1
    assert collector.states == [(SourceState.FAILED, "no GStreamer here")]


def test_unexpected_errors_reconnect() -> None:
    source = Scripted(read_error=RuntimeError("cv2.error: boom"))
    collector = Collector()
    runner = start_runner(source, collector)
    assert collector.wait(lambda: source.opens >= 2)
    runner.stop()
    assert "RuntimeError: cv2.error: boom" in runner.last_error
    assert SourceState.RECONNECTING in collector.state_names()


def test_failing_frame_handler_does_not_stop_the_source() -> None:
    def handler(frame: Frame) -> None:
        if frame.index % 2:
            raise ValueError("bad frame handler")

    collector = Collector(on_frame=handler)
    runner = start_runner(Scripted(frames=10), collector)
    assert collector.wait_state(SourceState.ENDED)
    runner.stop()
    assert len(collector.frames) == 10
    snap = runner.snapshot()
    assert snap["frames"] == 10
    assert snap["counters"] == {"callback_errors": 5}
    assert snap["state"] == "ended"


def test_fps_cap_waits_for_files_and_drops_for_live() -> None:
    paced = Collector()
    runner = start_runner(Scripted(frames=5, fps=50.0), paced)
    assert paced.wait_state(SourceState.ENDED)
    runner.stop()
    assert len(paced.frames) == 5  # nothing dropped
    gaps = np.diff([f.captured for f in paced.frames])
    assert gaps.min() > 0.005  # 20 ms apart, give or take

    live = Collector()
    source = Scripted(every=0.002, live=True, fps=50.0)
    runner = start_runner(source, live)
    assert live.wait_frames(5)
    runner.stop()
    assert runner.snapshot()["counters"]["fps_cap"] > 0
    gaps = np.diff([f.captured for f in live.frames])
    assert gaps.min() > 0.005
    assert source.given > len(live.frames)


def test_stop_returns_when_the_source_will_not_unblock() -> None:
    release = threading.Event()
    source = Scripted(block=release)
    collector = Collector()
    runner = start_runner(source, collector)
    assert collector.wait_state(SourceState.RUNNING)
    assert runner.stop(timeout=0.1) is False
    assert runner.state == SourceState.STOPPED
    release.set()


def test_stop_while_blocked_on_a_fifo_without_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "empty.fifo"
    os.mkfifo(fifo)
    source = LinesSource("fifo", LinesConfig(path=str(fifo)), tmp_path)
    collector = Collector()
    runner = start_runner(source, collector)
    assert collector.wait_state(SourceState.RUNNING)
    time.sleep(0.05)  # into the read
    assert runner.stop() is True
    assert runner.state == SourceState.STOPPED
    assert collector.state_names() == [SourceState.RUNNING, SourceState.STOPPED]


def test_stop_while_blocked_on_a_silent_socket(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    source = LinesSource("tcp", LinesConfig(path=f"tcp://127.0.0.1:{port}"), tmp_path)
    collector = Collector()
    runner = start_runner(source, collector)
    try:
        conn, _ = server.accept()
        assert collector.wait_state(SourceState.RUNNING)
        time.sleep(0.05)
        assert runner.stop() is True
        assert runner.state == SourceState.STOPPED
        conn.close()
    finally:
        server.close()


def test_stop_before_start_and_twice() -> None:
    source = SyntheticSource("s", SyntheticConfig(width=32, height=32, fps=100.0), Path("."))
    runner = SourceRunner(source, lambda frame: None)
    assert runner.snapshot()["state"] == "starting"
    runner.start()
    with pytest.raises(RuntimeError):
        runner.start()
    assert runner.stop() is True
    assert runner.stop() is True
    assert runner.state == SourceState.STOPPED


def test_every_frame_read_is_accounted_for_while_telemetry_reads_the_counts() -> None:
    """Counted on the source's thread, read on another: each read whole, none going back,
    and at the end every frame read is either handed on or dropped by the cap."""

    def handler(frame: Frame) -> None:
        if frame.index % 3 == 0:
            raise ValueError("bad frame handler")

    collector = Collector(on_frame=handler)
    source = Scripted(frames=300, every=0.001, live=True, fps=200.0)
    runner = start_runner(source, collector)
    seen: list[dict[str, Any]] = []
    while not collector.wait_state(SourceState.ENDED, timeout=0.002):
        seen.append(runner.snapshot())
    runner.stop()
    frames = [snap["frames"] for snap in seen]
    assert frames == sorted(frames)
    final = runner.snapshot()
    counters = final["counters"]
    assert final["frames"] == len(collector.frames) == runner.frames
    assert counters["fps_cap"] > 0
    assert final["frames"] + counters["fps_cap"] == source.given == 300
    assert counters["callback_errors"] == sum(f.index % 3 == 0 for f in collector.frames)
    assert final["reconnects"] == runner.reconnects == 0
