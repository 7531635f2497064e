"""Per-stage timings and counters of a pipeline, kept in memory for telemetry."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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


@dataclass
class PipelineStats:
    """Written by the pipeline's threads, read by telemetry; one lock guards it all."""

    window: int = 1024
    frames: int = 0  # captured
    results: int = 0  # handed off
    dropped: int = 0  # oldest frame dropped because inference fell behind
    skipped: int = 0  # change gate: frame too like the last inferred one
    cache_hits: int = 0  # identical input: earlier result reused
    errors: int = 0
    stages: dict[str, Window] = field(default_factory=dict)
    _done: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.stages = {name: Window(self.window) for name in STAGES}

    def count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + n)

    def record(self, timings: dict[str, float]) -> None:
        """A finished result's stage durations, in seconds."""
        with self._lock:
            self.results += 1
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
        with self._lock:
            return {
                "fps": round(fps, 2),
                "frames": self.frames,
                "results": self.results,
                "dropped": self.dropped,
                "skipped": self.skipped,
                "cache_hits": self.cache_hits,
                "errors": self.errors,
                "latency_ms": {name: w.percentiles() for name, w in self.stages.items()},
            }
