"""Numbers or JSON, one sample per line, from a file, a FIFO, a serial device or a TCP
server, into sliding windows. Lines that do not give a sample are skipped and counted."""

from __future__ import annotations

import logging
import math
import os
import re
import select
import socket
import stat
import termios
import time
import tty
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.json_body import parse_value
from edge_agent.sources.base import EndOfStream, Frame, Source, SourceError, SourceUnusable
from edge_agent.sources.windows import WindowedConfig, Windower
from edge_agent.watch import Waker

log = logging.getLogger(__name__)

_TCP = re.compile(r"^tcp://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d{1,5})/?$")
_FOLLOW_POLL_S = 0.2  # appends keep no inotify event we watch for: poll the size


class LinesConfig(WindowedConfig):
    kind: Literal["lines"] = Field("lines", description="Sample lines from a file or stream.")
    path: Annotated[str, LOCAL_ONLY] = Field(
        description="A file, a FIFO, a serial device (/dev/ttyUSB0) or tcp://host:port."
    )
    format: Literal["numbers", "json"] = Field(
        "numbers",
        description="numbers: values split by commas, spaces or tabs; json: an array of "
        "numbers, or an object whose `fields` are taken in order.",
    )
    fields: list[str] | None = Field(
        None, min_length=1, description="JSON objects: the keys that make a sample, in order."
    )
    channels: int = Field(
        1, ge=1, le=1024, description="Values per sample (default: the number of fields)."
    )
    max_line_bytes: int = Field(
        4096, ge=16, description="Longer lines are skipped (and counted) unread."
    )
    follow: bool = Field(
        False, description="Regular file: at the end, wait for appended lines (tail -F)."
    )
    baudrate: int | None = Field(
        None,
        description="Serial device: 8N1 at this speed; empty: the speed stays as set. A "
        "serial device is always read raw (no echo, no line editing).",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP: connect timeout.")

    @field_validator("path")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" in value and not _TCP.match(value):
            raise ValueError("a URL must be tcp://host:port")
        return value

    @field_validator("baudrate")
    @classmethod
    def _known_baudrate(cls, value: int | None) -> int | None:
        if value is not None and not hasattr(termios, f"B{value}"):
            raise ValueError(f"{value} is not a baud rate this system supports")
        return value

    @model_validator(mode="after")
    def _channels_from_fields(self) -> LinesConfig:
        if self.fields is not None:
            if "channels" not in self.model_fields_set:
                self.channels = len(self.fields)
            elif self.channels != len(self.fields):
                raise ValueError(f"channels is {self.channels} but {len(self.fields)} fields")
        return self


class LinesSource(Source):
    def __init__(self, name: str, config: LinesConfig, state_dir: Path) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        self._tcp = _TCP.match(config.path)
        # Updated at open, once the path's kind is known.
        self.live = self._tcp is not None or config.follow or not Path(config.path).is_file()
        self.recorded = not self.live
        self._waker = Waker()
        self._windower = Windower(config.window, config.step, config.channels)
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._kind = "file"
        self._buf = bytearray()
        self._discarding = False  # inside an over-long line: drop up to its newline
        self._eof = False
        self._index = 0

    def open(self) -> None:
        self._buf.clear()
        self._discarding = self._eof = False
        self._windower.reset()
        self._index = 0
        if self._tcp is not None:
            self._kind = "tcp"
            host, port = self._tcp["host"].strip("[]"), int(self._tcp["port"])
            try:
                sock = socket.create_connection((host, port), timeout=self.cfg.connect_timeout_s)
            except OSError as err:
                raise SourceError(f"{self.cfg.path}: {err}") from err
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._sock = sock
            return
        path = self.cfg.path
        try:
            mode = os.stat(path).st_mode
        except OSError as err:
            raise SourceError(f"{path}: {err.strerror}") from err
        if stat.S_ISFIFO(mode):
            self._kind = "fifo"
        elif stat.S_ISCHR(mode):
            self._kind = "device"
        elif stat.S_ISREG(mode):
            self._kind = "file"
        else:
            raise SourceUnusable(f"{path}: not a file, FIFO, serial device or tcp:// address")
        flags = os.O_RDONLY | os.O_CLOEXEC
        if self._kind != "file":
            # A FIFO opened this way does not wait for a writer; select() does.
            flags |= os.O_NONBLOCK | os.O_NOCTTY
        try:
            self._fd = os.open(path, flags)
        except OSError as err:
            raise SourceError(f"{path}: {err.strerror}") from err
        self.live = self._kind != "file" or self.cfg.follow
        self.recorded = not self.live
        if self._kind == "device" and os.isatty(self._fd):
            try:
                _set_serial(self._fd, self.cfg.baudrate)
            except termios.error as err:
                self.close()
                raise SourceError(f"{path}: cannot set up the serial line: {err}") from err

    def read(self) -> Frame | None:
        while True:
            if self._waker.is_set():
                raise SourceError("interrupted")
            newline = self._buf.find(b"\n")
            if newline < 0:
                if self._eof:
                    if self._buf and not self._discarding:
                        self._buf.append(ord("\n"))  # a last line without its newline
                        continue
                    raise EndOfStream(f"{self.cfg.path}: end of file")
                if len(self._buf) > self.cfg.max_line_bytes:
                    if not self._discarding:
                        self.count("bad_lines")
                    self._discarding = True
                    self._buf.clear()
                self._fill()
                continue
            line = bytes(self._buf[:newline])
            del self._buf[: newline + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > self.cfg.max_line_bytes:
                self.count("bad_lines")
                continue
            line = line.strip()
            if not line:
                continue  # blank lines (keep-alives, CRLF) are not samples
            sample = self._parse(line)
            if sample is None:
                self.count("bad_lines")
                continue
            window = self._windower.push(sample)
            if window is not None:
                frame = Frame(window, time.monotonic(), time.time(), self._index)
                self._index += 1
                return frame

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._waker.clear()

    def interrupt(self) -> None:
        self._waker.set()

    def _parse(self, line: bytes) -> list[float] | None:
        channels = self.cfg.channels
        try:
            if self.cfg.format == "numbers":
                values: list[Any] = [float(v) for v in line.replace(b",", b" ").split()]
            else:
                # Strictly: a line nested thousands deep would raise RecursionError (and
                # end the read) in json.loads; NaN and Infinity are not numbers.
                doc = parse_value(line, max_bytes=self.cfg.max_line_bytes, what="line")
                if isinstance(doc, dict):
                    keys = self.cfg.fields or list(doc)
                    values = [doc[key] for key in keys]
                elif isinstance(doc, list):
                    values = doc
                else:
                    return None
        except (ValueError, KeyError):  # BodyError is a ValueError too
            return None
        if len(values) < channels:
            return None
        sample = values[:channels]
        for value in sample:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            try:
                if not math.isfinite(value):
                    return None
            except OverflowError:  # an integer of hundreds of digits
                return None
        return sample

    def _fill(self) -> None:
        """Read what there is into the buffer, waiting for it unless at the end of a file."""
        if self._kind == "file":
            assert self._fd is not None
            data = self._read_fd(self._fd)
            if data:
                self._buf += data
            elif not self.cfg.follow:
                self._eof = True
            else:
                self._follow_wait()
            return
        fd = self._sock.fileno() if self._sock is not None else self._fd
        assert fd is not None
        select.select([fd, self._waker.fileno()], [], [])
        if self._waker.is_set():
            raise SourceError("interrupted")
        try:
            data = self._sock.recv(65536) if self._sock is not None else os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as err:
            raise SourceError(f"{self.cfg.path}: {err.strerror or err}") from err
        if not data:
            what = {"tcp": "server closed the connection", "fifo": "writer closed the FIFO"}
            raise SourceError(f"{self.cfg.path}: {what.get(self._kind, 'device closed')}")
        self._buf += data

    def _read_fd(self, fd: int) -> bytes:
        try:
            return os.read(fd, 65536)
        except OSError as err:
            raise SourceError(f"{self.cfg.path}: {err.strerror}") from err

    def _follow_wait(self) -> None:
        """At the end of a followed file: reopen it if it was replaced (log rotation) or
        start over if it was truncated, then wait a little for more."""
        assert self._fd is not None
        try:
            now = os.stat(self.cfg.path)
        except FileNotFoundError:
            now = None  # between a rotation's rename and the new file
        if now is not None:
            mine = os.fstat(self._fd)
            if (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
                log.info(
                    "source %s: %s was replaced; reading the new file", self.name, self.cfg.path
                )
                os.close(self._fd)
                self._fd = None
                try:
                    self._fd = os.open(self.cfg.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as err:
                    raise SourceError(f"{self.cfg.path}: {err.strerror}") from err
                return
            if now.st_size < os.lseek(self._fd, 0, os.SEEK_CUR):
                log.info(
                    "source %s: %s was truncated; reading from its start", self.name, self.cfg.path
                )
                os.lseek(self._fd, 0, os.SEEK_SET)
                return
        if self._waker.wait(_FOLLOW_POLL_S):
            raise SourceError("interrupted")


def _set_serial(fd: int, baudrate: int | None) -> None:
    """Raw: bytes as they come, no echo back to the device, no line editing. With a baud
    rate, also 8N1 at that speed; without, the speed stays as set (stty)."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[2] |= termios.CLOCAL | termios.CREAD
    if baudrate is not None:
        attrs[2] &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB)
        attrs[2] |= termios.CS8
        attrs[4] = attrs[5] = getattr(termios, f"B{baudrate}")
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
