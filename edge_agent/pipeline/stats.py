"""Per-stage timings and counters of a pipeline, kept in memory for telemetry."""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from edge_agent.counters import Counters

STAGES = ("capture", "preprocess", "queue", "infer", "decode", "handoff", "total")


class Window:
    """The last `size` values of one measurement, for percentiles."""

    def __init__(self, size: int) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    @property
    def count(self) -> int:
        return len(self._values)

    def percentiles(self) -> dict[str, float]:
        if not self._values:
            return {}
        values = np.sort(np.fromiter(self._values, dtype=np.float64, count=len(self._values)))
        # np.percentile's linear interpolation on one sorted copy: the same figures at about
        # a fifth of its cost, which the status and every /metrics scrape pay per stage.
        p50, p95, p99 = (_linear(values, q) for q in (0.50, 0.95, 0.99))
        return {
            "p50": round(p50 * 1000, 3),
            "p95": round(p95 * 1000, 3),
            "p99": round(p99 * 1000, 3),
        }


def _linear(ordered: np.ndarray[Any, np.dtype[np.float64]], q: float) -> float:
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (at - low))


# Upper bounds (seconds) of the latency histograms: 0.5 ms on a fast accelerator to seconds
# on a stalled CPU model, roughly 1-2.5-5 per decade.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class HistogramCounts:
    """Cumulative counts by upper bound (the last one +Inf) and the sum of every value,
    since the pipeline started: what a Prometheus histogram exposes."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # len(bounds) + 1: the last is every value
    sum: float


class Histogram:
    """Counts of one measurement by bucket, kept for the whole run (Window keeps only the
    last values, which percentiles need but a scraper summing over time cannot use)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def add(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1  # value <= bound, as `le` says
        self._sum += value

    def counts(self) -> HistogramCounts:
        return HistogramCounts(self.bounds, tuple(accumulate(self._counts)), self._sum)


# frames: captured; results: handed off; dropped: the oldest frame, as inference fell
# behind; skipped: by the change gate, too like the last inferred one; cache_hits: an
# identical input's earlier result reused; errors: not inferred or not decoded.
COUNTS = ("frames", "results", "dropped", "skipped", "cache_hits", "errors")


@dataclass
class PipelineStats:
    """Written by the pipeline's threads, read by telemetry."""

    window: int = 1024
    counts: Counters = field(default_factory=lambda: Counters(*COUNTS))
    stages: dict[str, Window] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    _done: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    _lock: threading.Lock = field(default_factory=threading.Lock)  # stages, histograms, _done

    def __post_init__(self) -> None:
        self.stages = {name: Window(self.window) for name in STAGES}
        self.histograms = {name: Histogram() for name in STAGES}

    def count(self, what: str, n: int = 1) -> None:
        if what not in COUNTS:  # a typo would be a count nobody reads
            raise ValueError(f"no pipeline count {what!r}")
        self.counts.add(what, n)

    @property
    def frames(self) -> int:
        return self.counts["frames"]

    @property
    def results(self) -> int:
        return self.counts["results"]

    @property
    def dropped(self) -> int:
        return self.counts["dropped"]

    @property
    def skipped(self) -> int:
        return self.counts["skipped"]

    @property
    def cache_hits(self) -> int:
        return self.counts["cache_hits"]

    @property
    def errors(self) -> int:
        return self.counts["errors"]

    def record(self, timings: dict[str, float]) -> None:
        """A finished result's stage durations, in seconds."""
        self.counts.add("results")
        with self._lock:
            self._done.append(time.monotonic())
            for stage, seconds in timings.items():
                self.stages[stage].add(seconds)
                self.histograms[stage].add(seconds)

    def latency_histograms(self) -> dict[str, HistogramCounts]:
        """Each stage's latency histogram, in seconds, since the pipeline started."""
        with self._lock:
            return {name: h.counts() for name, h in self.histograms.items()}

    def fps(self) -> float:
        with self._lock:
            if len(self._done) < 2:
                return 0.0
            span = self._done[-1] - self._done[0]
            return (len(self._done) - 1) / span if span > 0 else 0.0

    def snapshot(self) -> dict[str, Any]:
        fps = self.fps()
        counts = self.counts.snapshot()
        with self._lock:
            latency = {name: w.percentiles() for name, w in self.stages.items()}
        return {"fps": round(fps, 2), **counts, "latency_ms": latency}
