"""Losses told once per episode, not once per message: the first drop of a kind ("result:
dropped_oldest", "telemetry:expired") logs a line saying it has begun; housekeeping that
finds no more of that kind since its last pass logs one line with the episode's total and
its span. Every message is counted in the outbox's drops either way."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Episode:
    started: float
    last: float
    count: int
    fresh: bool  # counted since housekeeping last looked


class LossEpisodes:
    """Open episodes by "class:reason". `begin_text` says in words what a reason means."""

    def __init__(self, begin_text: Callable[[str, str], str]) -> None:
        self._begin_text = begin_text
        self._lock = threading.Lock()
        self._open: dict[str, _Episode] = {}

    def note(self, reason: str, n: int) -> None:
        now = time.time()
        with self._lock:
            episode = self._open.get(reason)
            if episode is None:
                self._open[reason] = _Episode(now, now, n, True)
            else:
                episode.count += n
                episode.last = now
                episode.fresh = True
                return
        cls, _, why = reason.partition(":")
        log.warning("outbox: %s; counted in its drops as %s", self._begin_text(cls, why), reason)

    def close_quiet(self) -> None:
        """Ends the episodes that had no loss since the last call, one line each."""
        ended = []
        with self._lock:
            for reason, episode in list(self._open.items()):
                if episode.fresh:
                    episode.fresh = False
                else:
                    ended.append((reason, self._open.pop(reason)))
        for reason, episode in ended:
            cls, _, why = reason.partition(":")
            log.warning(
                "outbox: %d %s message(s) %s from %s to %s",
                episode.count,
                cls,
                why.replace("_", " "),
                _clock(episode.started),
                _clock(episode.last),
            )

    def open(self) -> dict[str, int]:
        """The episodes still open, with their counts so far."""
        with self._lock:
            return {reason: e.count for reason, e in self._open.items()}


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
