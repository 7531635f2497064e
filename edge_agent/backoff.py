"""Exponential backoff, written once: the link's reconnects, a source's reopens and an
HTTP download's retries all wait this way."""

from __future__ import annotations

import random

_MAX_DOUBLINGS = 30  # past this the cap is long since reached; keeps 2**n a small number


class Backoff:
    """Without jitter the n-th wait (n from 0) is `first_s * 2**n`, never above `max_s`.

    With `jitter` (full jitter) each wait is random between `first_s` and the next one's
    cap, `first_s * 2**(n+1)` (never above `max_s`), so a fleet that lost its broker does
    not come back in one wave, the first retry included. `next()` counts the attempts;
    `reset()` starts over once things work."""

    def __init__(
        self,
        first_s: float,
        max_s: float,
        *,
        jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if first_s <= 0 or max_s <= 0:
            raise ValueError(f"backoff: first_s ({first_s}) and max_s ({max_s}) must be > 0")
        self.first_s = first_s
        self.max_s = max_s
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        """The wait before retry number `attempt` (0: the first), without counting it."""
        doublings = min(max(attempt, 0), _MAX_DOUBLINGS)
        if not self.jitter:
            return min(self.max_s, self.first_s * 2.0**doublings)
        cap = min(self.max_s, self.first_s * 2.0 ** (doublings + 1))
        return self._rng.uniform(self.first_s, max(self.first_s, cap))

    def next(self) -> float:
        """The wait before the next retry; counts it."""
        wait = self.delay(self.attempt)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        self.attempt = 0
