"""sd_notify without a compiled dependency: one datagram to $NOTIFY_SOCKET per message.
Outside systemd (no socket) every call does nothing.

Also the reload outcome the agent leaves in its state directory, so that `edge-agent reload`
(the unit's ExecReload=) can wait for the reload it asked for and report how it ended."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_agent.durable import write_synced

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # An abstract socket is written with a leading "@" and means a leading NUL.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_s = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """READY=1, STATUS=..., and so on: `send(READY=1, STATUS="running")`."""
        if self._sock is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def reloading(self) -> None:
        # systemd 253+ wants the monotonic time with RELOADING=1 (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING=1, MONOTONIC_USEC=usec)

    def status(self, text: str) -> None:
        self.send(STATUS=text)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def stopping(self) -> None:
        self.send(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float | None:
    """How often to ping: half of WatchdogSec=, when the watchdog is meant for us."""
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


RELOAD_FILE = "reload.json"


@dataclass(frozen=True)
class ReloadOutcome:
    """How the agent's last reload ended. `started` is CLOCK_MONOTONIC (one clock for every
    process on the machine) taken before the config file was read: a reload that started
    after a signal was sent has read the file as it was then, or newer."""

    pid: int
    started: float
    ok: bool
    message: str

    def write(self, state_dir: Path) -> None:
        """Atomically, so a reader sees the old outcome or the new one, never half."""
        path = state_dir / RELOAD_FILE
        temporary = path.with_name(f".{RELOAD_FILE}.new")
        write_synced(temporary, json.dumps(asdict(self)).encode())
        os.replace(temporary, path)

    @classmethod
    def read(cls, state_dir: Path) -> ReloadOutcome | None:
        """The outcome in `state_dir`, or None when there is none (or not a readable one)."""
        try:
            data = json.loads((state_dir / RELOAD_FILE).read_bytes())
            return cls(
                pid=int(data["pid"]),
                started=float(data["started"]),
                ok=bool(data["ok"]),
                message=str(data["message"]),
            )
        except (OSError, ValueError, TypeError, KeyError):
            return None
