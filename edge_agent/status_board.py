"""The problems an operator should see in the retained status, each kept with when it began
until the part that raised it says it is resolved. One problem does not hide or clear
another: a model that failed to load stays on the board through a good config reload."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    key: str  # what it is about: "config", "model detector", "outbox"...
    text: str
    since: float  # Unix time it was first raised

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "problem": self.text, "since": self.since}


class StatusBoard:
    """Active problems by key. Listeners (the link's status publisher) hear of every
    change; they are called outside the board's lock."""

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def raise_problem(self, key: str, text: str, *, logged: bool = False) -> None:
        """Logs it (unless the caller has) and keeps it; raising the same key again updates
        the text and keeps the first `since`."""
        if not logged:
            log.error("%s", text)
        with self._lock:
            old = self._problems.get(key)
            if old is not None and old.text == text:
                return
            since = old.since if old is not None else time.time()
            self._problems[key] = Problem(key, text, since)
        self._changed()

    def resolve(self, key: str) -> bool:
        """True when the problem was there (and listeners heard it is gone)."""
        with self._lock:
            gone = self._problems.pop(key, None)
        if gone is None:
            return False
        log.info("resolved: %s", gone.text)
        self._changed()
        return True

    def touch(self) -> None:
        """Something else the status shows changed (the model that runs): listeners hear
        of it as of a problem."""
        self._changed()

    def problems(self) -> list[Problem]:
        with self._lock:
            return sorted(self._problems.values(), key=lambda p: p.since)

    def get(self, key: str) -> Problem | None:
        with self._lock:
            return self._problems.get(key)

    @property
    def last_error(self) -> str:
        """The newest active problem, or empty: the one line a short status shows."""
        active = self.problems()
        return active[-1].text if active else ""

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()
