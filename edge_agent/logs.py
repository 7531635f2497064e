"""Log lines for where they end up: journald (syslog level prefixes, no timestamps of our
own: the journal adds them), a terminal (human-readable), or a log shipper (JSON lines).
Repeats are rate-limited, so a broker that is down for a day writes a few lines, not a
million."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from typing import IO, Literal

LogFormat = Literal["auto", "text", "journal", "json"]

# Python level -> syslog priority, which journald reads from a "<N>" prefix.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_CRITICAL_PRIORITY = 2


def setup_logging(
    fmt: LogFormat,
    level: str,
    stream: IO[str] | None = None,
    *,
    burst: int = 5,
    window_s: float = 60.0,
) -> logging.Handler:
    """Replaces the root logger's handlers with one for `fmt`; returns it."""
    stream = stream or sys.stderr
    chosen = fmt if fmt != "auto" else ("journal" if under_journald(stream) else "text")
    handler = logging.StreamHandler(stream)
    formatter: logging.Formatter
    if chosen == "journal":
        formatter = JournalFormatter()
    elif chosen == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(RepeatLimiter(burst, window_s))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def under_journald(stream: IO[str]) -> bool:
    """systemd sets $JOURNAL_STREAM to the device:inode of the journal stream it connected;
    stderr is that stream only when those match (not when redirected elsewhere)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, _CRITICAL_PRIORITY)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # Each line of a multi-line message gets the prefix, or journald logs it as info.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


class RepeatLimiter(logging.Filter):
    """At most `burst` identical records (logger, level, text) per window; the first one
    of the next window says how many were held back."""

    def __init__(self, burst: int, window_s: float) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}  # [start, count, held]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                held = int(entry[2]) if entry else 0
                self._seen[key] = [now, 1, 0]
                if len(self._seen) > 10_000:  # bounded: forget the oldest kinds
                    for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:5_000]:
                        del self._seen[old]
                if held:
                    record.msg = f"{record.getMessage()} [{held} more like this in the last "
                    record.msg += f"{self.window_s:g} s were not logged]"
                    record.args = None
                return True
            entry[1] = int(entry[1]) + 1
            if entry[1] <= self.burst:
                return True
            entry[2] = int(entry[2]) + 1
            return False
