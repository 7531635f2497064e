"""Drives one source in its own thread: open, read, hand each frame on, reconnect with
backoff when it fails, keep to the frame-rate cap, and report every change of state."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.backoff import Backoff
from edge_agent.counters import Counters
from edge_agent.sources.base import (
    EndOfStream,
    Frame,
    Source,
    SourceError,
    SourceState,
    SourceUnusable,
)

log = logging.getLogger(__name__)

_FINAL = (SourceState.STOPPED, SourceState.ENDED, SourceState.FAILED)

OnFrame = Callable[[Frame], None]
OnState = Callable[[str, SourceState, str], None]

_REPEAT_LOG_S = 60.0  # the same failure is logged at most this often


class SourceRunner:
    def __init__(
        self,
        source: Source,
        on_frame: OnFrame,
        on_state: OnState | None = None,
        *,
        on_stop: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`on_stop` runs once stop() has been asked, before it waits for the thread: it
        wakes whatever on_frame may be blocked in (a full queue waiting for room)."""
        self.source = source
        self.name = source.name
        self._on_frame = on_frame
        self._on_state = on_state
        self._on_stop = on_stop
        # Exponential with full jitter, never below the minimum: no tight loop.
        config = source.config
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s, rng=rng)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state = SourceState.STARTING
        self._last_error = ""
        # Added to on the source's thread, read by telemetry's; "fps_cap" (live frames
        # dropped by the cap) and "callback_errors" appear once they happen.
        self.counts = Counters("reconnects", "frames")
        self._crashed = False  # the thread ended by a bug: a restart of the agent may help
        self._logged_error = ("", 0.0)  # message, when
        # So a flapping source logs at most a failure and a recovery a minute.
        self._said_running = False
        self._said_failure = False

    @property
    def state(self) -> SourceState:
        return self._state

    @property
    def last_error(self) -> str:
        return self._last_error

    @property
    def recorded(self) -> bool:
        return self.source.recorded

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def reconnects(self) -> int:
        return self.counts["reconnects"]

    @property
    def frames(self) -> int:
        return self.counts["frames"]

    @property
    def dead(self) -> bool:
        """The thread ended while the source should still be read: a bug, not a state."""
        if self._crashed:
            return True
        thread = self._thread
        finished = (SourceState.ENDED, SourceState.STOPPED, SourceState.FAILED)
        return (
            thread is not None
            and not thread.is_alive()
            and not self._stop.is_set()
            and self._state not in finished
        )

    def snapshot(self) -> dict[str, Any]:
        counts = self.counts.snapshot()
        return {
            "state": self._state.value,
            "last_error": self._last_error,
            "reconnects": counts.pop("reconnects"),
            "frames": counts.pop("frames"),
            "counters": {**self.source.counters, **counts},  # the source's, and the runner's
        }

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"source {self.name}: already started")
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop and wait up to `timeout`; False if the source is still stuck in a read (its
        thread is a daemon and ends when the read does)."""
        self._stop.set()
        try:
            self.source.interrupt()
        except Exception:
            log.exception("source %s: interrupt failed", self.name)
        if self._on_stop is not None:
            try:
                self._on_stop()
            except Exception:
                log.exception("source %s: stop handler failed", self.name)
        thread = self._thread
        if thread is None:
            self._set_state(SourceState.STOPPED, "")
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "source %s: still blocked %.1f s after stop; leaving it", self.name, timeout
            )
            self._set_state(SourceState.STOPPED, "blocked in read")
            return False
        return True

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # a bug: say so loudly rather than go quiet
            self._crashed = True
            log.exception("source %s: runner crashed", self.name)
            self._set_state(SourceState.FAILED, "runner crashed; see the log")
        finally:
            try:
                self.source.close()
            except Exception:
                log.exception("source %s: close failed", self.name)
            if self._stop.is_set():
                self._set_state(SourceState.STOPPED, "")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.source.open()
                if self._stop.is_set():
                    return
                self._set_state(SourceState.RUNNING, "")
                self._read_all()
            except SourceError as err:
                if self._stop.is_set():
                    return
                self._failed(str(err) or type(err).__name__)
            except EndOfStream as err:
                self._set_state(SourceState.ENDED, str(err))
                return
            except SourceUnusable as err:
                self._last_error = str(err)
                self._set_state(SourceState.FAILED, str(err))
                return
            except Exception as err:  # OpenCV and the OS raise their own: retry those too
                if self._stop.is_set():
                    return
                log.debug("source %s: unexpected error", self.name, exc_info=True)
                self._failed(f"{type(err).__name__}: {err}")

    def _failed(self, message: str) -> None:
        """Close, report, wait out the backoff."""
        try:
            self.source.close()
        except Exception:
            log.exception("source %s: close failed", self.name)
        self._last_error = message
        self._log_failure(message)
        self._set_state(SourceState.RECONNECTING, message)
        if not self._stop.wait(self._backoff.next()):
            self.counts.add("reconnects")

    def _read_all(self) -> None:
        fps = self.source.config.fps
        period = 1.0 / fps if fps else 0.0
        due = time.monotonic()
        got_frame = False
        while not self._stop.is_set():
            if period and not self.source.live:
                # Finite or generated input: wait, lose nothing.
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            read_started = time.perf_counter()
            frame = self.source.read()
            if frame is None:
                continue
            frame.read_s = time.perf_counter() - read_started
            now = time.monotonic()
            if period and self.source.live:
                if now < due - period / 4:
                    self.counts.add("fps_cap")  # early: waiting would have left it stale
                    continue
                due = due + period if due + period > now else now + period
            elif period:
                due = max(due + period, now)
            if not got_frame:
                got_frame = True
                self._backoff.reset()  # it works again: the next failure starts over
            self.counts.add("frames")
            try:
                self._on_frame(frame)
            except Exception:
                self.counts.add("callback_errors")
                n = self.counts["callback_errors"]
                if n <= 3 or n & (n - 1) == 0:  # the first few, then at powers of two
                    log.exception("source %s: frame handler failed (%d so far)", self.name, n)

    # -- state -----------------------------------------------------------------------------

    def _set_state(self, state: SourceState, detail: str) -> None:
        with self._lock:
            if state == self._state or self._state in _FINAL:
                return
            if self._stop.is_set() and state != SourceState.STOPPED:
                return
            self._state = state
        level = logging.WARNING if state == SourceState.FAILED else logging.INFO
        if state == SourceState.RECONNECTING:
            level = logging.DEBUG  # _log_failure has said why, or chose not to repeat it
        elif state == SourceState.RUNNING and self._said_running and not self._said_failure:
            level = logging.DEBUG  # recovered from a failure that was not logged either
        if state == SourceState.RUNNING:
            self._said_running = level > logging.DEBUG or self._said_running
            self._said_failure = False
        log.log(level, "source %s: %s%s", self.name, state.value, f" ({detail})" if detail else "")
        if self._on_state is not None:
            try:
                self._on_state(self.name, state, detail)
            except Exception:
                log.exception("source %s: state handler failed", self.name)

    def _log_failure(self, message: str) -> None:
        last, when = self._logged_error
        now = time.monotonic()
        if message != last or now - when >= _REPEAT_LOG_S:
            retrying = " (still)" if message == last else ""
            log.warning("source %s: %s%s; reconnecting", self.name, message, retrying)
            self._logged_error = (message, now)
            self._said_failure = True
