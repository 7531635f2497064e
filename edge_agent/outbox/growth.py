"""How fast the outbox's backlog grows: a moving window of the bytes held undelivered, net
of what was delivered, expired or dropped, sampled at most once a second. The time until
the outbox is full is the room left over that rate.

The rate is the least-squares slope over the window, not the difference of its ends: while
online, the backlog swings by a sender's window of rows as pages go out and acknowledgements
come back, and a slope over many samples does not mistake that for growth."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

# Long enough to smooth a sender's swings and a pipeline's bursts, short enough that a
# link going down shows within a minute or two.
WINDOW_S = 300.0
# The window must span this much before a rate is given: a first sample is no rate.
MIN_SPAN_S = 5.0
# One sample per this many seconds at most: the window holds a bounded number of them.
SAMPLE_EVERY_S = 1.0


class GrowthWindow:
    """Samples of (time, bytes, rows) held; `rates()` gives the slope of each. Thread-safe;
    `note` is cheap (a clock read and a comparison) so it can be called at every write."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, int, int]] = deque()
        self._cached: tuple[float, tuple[float, float] | None] | None = None

    def note(self, held_bytes: int, rows: int) -> None:
        """The backlog now. One sample per second: a later note within the same second
        updates that second's values."""
        now = self._clock()
        with self._lock:
            if self._samples and now - self._samples[-1][0] < SAMPLE_EVERY_S:
                self._samples[-1] = (self._samples[-1][0], held_bytes, rows)
                return
            self._samples.append((now, held_bytes, rows))
            while now - self._samples[0][0] > WINDOW_S:
                self._samples.popleft()

    def rates(self) -> tuple[float, float] | None:
        """(bytes/s, rows/s) over the window, or None while it spans too little time.
        Computed at most once per sample period: stats() may ask ten times a second."""
        now = self._clock()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < SAMPLE_EVERY_S:
                return self._cached[1]
            samples = [s for s in self._samples if now - s[0] <= WINDOW_S]
        result = _slopes(samples) if samples and now - samples[0][0] >= MIN_SPAN_S else None
        with self._lock:
            self._cached = (now, result)
        return result


def _slopes(samples: list[tuple[float, int, int]]) -> tuple[float, float] | None:
    n = len(samples)
    if n < 2:
        return None
    t0 = samples[0][0]
    mean_t = sum(s[0] - t0 for s in samples) / n
    mean_b = sum(s[1] for s in samples) / n
    mean_r = sum(s[2] for s in samples) / n
    var_t = sum((s[0] - t0 - mean_t) ** 2 for s in samples)
    if var_t <= 0:
        return None
    cov_b = sum((s[0] - t0 - mean_t) * (s[1] - mean_b) for s in samples)
    cov_r = sum((s[0] - t0 - mean_t) * (s[2] - mean_r) for s in samples)
    return cov_b / var_t, cov_r / var_t


def seconds_to_full(
    room: tuple[int, int], rates: tuple[float, float] | None, overhead: int
) -> float | None:
    """Seconds until the room runs out at `rates`: `room` is (by the size bound, by the
    disk); the disk also pays `overhead` bytes a row. None when the backlog is not growing
    or the rate is not known yet."""
    if rates is None:
        return None
    per_s, rows_per_s = rates
    if per_s <= 0:
        return None
    by_size, by_disk = room
    disk_per_s = per_s + max(0.0, rows_per_s) * overhead
    return max(0.0, min(by_size / per_s, by_disk / disk_per_s))
