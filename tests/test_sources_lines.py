"""The line source on a real file, FIFO, TCP socket and pseudo-terminal."""

from __future__ import annotations

import os
import socket
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.sources import create_source
from edge_agent.sources.base import SourceError, SourceState
from edge_agent.sources.lines import LinesConfig, LinesSource
from tests.sources_helpers import Collector, read_all, start_runner


def lines(path: str | Path, state: Path, **fields: object) -> LinesSource:
    config = LinesConfig.model_validate(
        {
            "kind": "lines",
            "path": str(path),
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            **fields,
        }
    )
    source = create_source("serial", config, state)
    assert isinstance(source, LinesSource)
    return source


def test_file_with_garbage_lines(tmp_path: Path) -> None:
    data = tmp_path / "samples.csv"
    data.write_bytes(
        b"x,y\n"  # a header: not numbers
        b"1,2\n"
        b"3\t4\n"
        b"\n"  # blank: not counted
        b"5 6 99\n"  # extra values: the first two
        b"7\n"  # short
        b"8,nan\n"  # not finite
        b"9;10\n"  # not a separator
        b"11, 12\r\n"
        + b"1," * 40  # too long
        + b"\n13,14"  # the last line needs no newline
    )
    source = lines(data, tmp_path, channels=2, window=2, hop=1, max_line_bytes=64)
    frames = read_all(source)
    assert [f.data.tolist() for f in frames] == [
        [[1, 2], [3, 4]],
        [[3, 4], [5, 6]],
        [[5, 6], [11, 12]],
        [[11, 12], [13, 14]],
    ]
    assert frames[0].data.dtype == np.float32
    assert source.counters == {"bad_lines": 5}


def test_json_lines(tmp_path: Path) -> None:
    data = tmp_path / "samples.jsonl"
    data.write_text(
        '{"t": 1, "ax": 0.5, "ay": -1, "az": 9.8}\n'
        "[1, 2, 3]\n"  # an array is taken in order too
        '{"ax": 1}\n'  # a field missing
        '{"ax": "1", "ay": 2, "az": 3}\n'  # a string is not a number
        "{not json\n"
        "42\n"
        '{"ax": 4, "ay": 5, "az": 6, "extra": true}\n'
    )
    source = lines(data, tmp_path, format="json", fields=["ax", "ay", "az"], window=3, hop=3)
    frames = read_all(source)
    assert len(frames) == 1
    np.testing.assert_allclose(frames[0].data, [[0.5, -1.0, 9.8], [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert source.counters == {"bad_lines": 4}


def test_config_checks() -> None:
    assert LinesConfig(path="x", fields=["a", "b"]).channels == 2
    with pytest.raises(ValidationError, match="channels is 3 but 2 fields"):
        LinesConfig(path="x", fields=["a", "b"], channels=3)
    with pytest.raises(ValidationError, match="tcp://host:port"):
        LinesConfig(path="udp://1.2.3.4:5")
    with pytest.raises(ValidationError, match="baud rate"):
        LinesConfig(path="/dev/ttyS0", baudrate=12345)


def test_fifo_writer_comes_and_goes(tmp_path: Path) -> None:
    fifo = tmp_path / "sensor.fifo"
    os.mkfifo(fifo)

    def writer(first: int) -> None:
        with open(fifo, "w") as out:  # waits for the reader
            for i in range(first, first + 6):
                out.write(f"{i},{-i}\n")
                out.flush()

    collector = Collector()
    runner = start_runner(lines(fifo, tmp_path, channels=2, window=3, hop=3), collector)
    try:
        threading.Thread(target=writer, args=(0,), daemon=True).start()
        assert collector.wait_frames(2)
        assert collector.wait_state(SourceState.RECONNECTING)  # the writer closed
        assert "writer closed" in runner.last_error
        threading.Thread(target=writer, args=(100,), daemon=True).start()
        assert collector.wait_frames(4)
    finally:
        runner.stop()
    assert collector.frames[2].data[:, 0].tolist() == [100, 101, 102]
    assert collector.frames[2].index == 0  # counted from each open


def test_tcp_client_reconnects(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    collector = Collector()
    runner = start_runner(lines(f"tcp://127.0.0.1:{port}", tmp_path, window=2, hop=2), collector)
    try:
        for round_ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"1\n2\n3\n4\n" if round_ == 0 else b"5\nbad\n6\n")
                assert collector.wait_frames(2 + round_)
        assert collector.wait_state(SourceState.RECONNECTING)
    finally:
        runner.stop()
        server.close()
    assert [f.data[:, 0].tolist() for f in collector.frames] == [[1, 2], [3, 4], [5, 6]]
    assert "closed the connection" in runner.last_error
    assert runner.snapshot()["counters"] == {"bad_lines": 1}


def test_tcp_nobody_listening(tmp_path: Path) -> None:
    spare = socket.create_server(("127.0.0.1", 0))
    port = spare.getsockname()[1]
    spare.close()
    source = lines(f"tcp://127.0.0.1:{port}", tmp_path)
    with pytest.raises(SourceError, match="refused"):
        source.open()


def test_follow_a_growing_file(tmp_path: Path) -> None:
    log = tmp_path / "sensor.log"
    log.write_text("1\n2\n")
    collector = Collector()
    runner = start_runner(lines(log, tmp_path, window=2, hop=2, follow=True), collector)
    try:
        assert collector.wait_frames(1)
        with log.open("a") as out:
            out.write("3\n")
            out.flush()
            time.sleep(0.05)
            out.write("4\n")
        assert collector.wait_frames(2)
        # Rotated: a new file under the name.
        os.replace(log, tmp_path / "sensor.log.1")
        log.write_text("10\n11\n")
        assert collector.wait_frames(3)
    finally:
        runner.stop()
    assert [f.data[:, 0].tolist() for f in collector.frames] == [[1, 2], [3, 4], [10, 11]]
    assert runner.state == SourceState.STOPPED
    assert collector.state_names() == [SourceState.RUNNING, SourceState.STOPPED]


def test_serial_device_gets_its_baud_rate(tmp_path: Path) -> None:
    controller, device = os.openpty()
    device_path = os.ttyname(device)
    source = lines(device_path, tmp_path, baudrate=115200, window=2, hop=2)
    try:
        source.open()
        attrs = termios.tcgetattr(device)
        assert attrs[4] == attrs[5] == termios.B115200
        assert not attrs[3] & termios.ECHO  # raw
        os.write(controller, b"1.5\r\n2.5\r\n")
        frame = source.read()
        assert frame is not None
        assert frame.data[:, 0].tolist() == [1.5, 2.5]
    finally:
        source.close()
        os.close(controller)
        os.close(device)


def test_hostile_json_lines_on_a_serial_port_are_counted_and_reading_goes_on(
    tmp_path: Path,
) -> None:
    """Each line built to break a JSON parser is one bad line; the source is not reopened."""
    controller, device = os.openpty()
    source = lines(os.ttyname(device), tmp_path, format="json", channels=2, window=2, hop=2)
    collector = Collector()
    runner = start_runner(source, collector)
    hostile = [
        b"[" * 2000 + b"]" * 2000,  # json.loads: RecursionError, not a ValueError
        b"[NaN, 1]",
        b"[1e999999, 1]",
        b"[" + b"9" * 400 + b", 1]",  # an int no float holds
        b"[" + b"1, " * 2000 + b"1]",  # over max_line_bytes
    ]
    try:
        assert collector.wait_state(SourceState.RUNNING)
        with os.fdopen(os.dup(controller), "wb") as port:
            port.write(b"[1, 2]\r\n" + b"\r\n".join(hostile) + b"\r\n")
            port.write(b"[3, 4]\r\n[5, 6]\r\n[7, 8]\r\n")
        assert collector.wait_frames(2)
    finally:
        runner.stop()
        os.close(controller)
        os.close(device)
    assert [f.data.tolist() for f in collector.frames] == [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    assert source.counters == {"bad_lines": len(hostile)}
    assert runner.reconnects == 0
    assert collector.state_names() == [SourceState.RUNNING, SourceState.STOPPED]
