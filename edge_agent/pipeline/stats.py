"""Per-stage timings and counters of a pipeline, kept in memory for telemetry."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
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
        values = np.fromiter(self._values, dtype=np.float64, count=len(self._values))
        p50, p95, p99 = np.percentile(values, (50, 95, 99))
        return {
            "p50": round(p50 * 1000, 3),
            "p95": round(p95 * 1000, 3),
            "p99": round(p99 * 1000, 3),
        }


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
    _done: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    _lock: threading.Lock = field(default_factory=threading.Lock)  # stages and _done

    def __post_init__(self) -> None:
        self.stages = {name: Window(self.window) for name in STAGES}

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
