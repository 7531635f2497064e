"""Waiting in tests for something another thread or process does: one loop for every test,
in a module light enough for the broker fixtures (no edge_agent import)."""

from __future__ import annotations

import time
from collections.abc import Callable


class WaitTimedOut(AssertionError, TimeoutError):
    """A wait_until that ran out of time: a failed assertion to pytest, and a TimeoutError to
    code that catches that."""


def wait_until(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Returns once `check()` is true, polling every 20 ms; raises WaitTimedOut after
    `timeout` seconds, naming `what` (or the check itself)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.02)
