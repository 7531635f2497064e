"""Which results are escalated: the top-1 score band, the class list, the audit sample, and
the budget (requests per minute, bytes per hour). Pure Python, no I/O: unit-tested alone."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_agent.config.settings import EscalateSettings


def top1(result: dict[str, Any]) -> tuple[str | None, float | None]:
    """The top label and score of a decoded result: a classifier's first class, a detector's
    best detection; (None, None) when the result has neither (an empty detection list)."""
    best: tuple[str | None, float | None] = (None, None)
    for key in ("top", "detections"):
        items = result.get(key)
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("score"), int | float):
                score = float(item["score"])
                if best[1] is None or score > best[1]:
                    label = item.get("label")
                    best = (str(label) if label is not None else None, score)
    return best


def top_box(result: dict[str, Any]) -> list[float] | None:
    """The box [x1, y1, x2, y2] (frame pixels) of a detector's best detection, else None."""
    best: tuple[float, list[float]] | None = None
    for item in result.get("detections") or []:
        if not isinstance(item, dict):
            continue
        box, score = item.get("box"), item.get("score")
        if not (isinstance(box, list) and len(box) == 4 and isinstance(score, int | float)):
            continue
        if best is None or score > best[0]:
            best = (float(score), [float(v) for v in box])
    return None if best is None else best[1]


def crop_region(
    box: list[float], margin: float, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """`box` grown by `margin` of its size on each side, in whole pixels inside the frame;
    None when nothing of it is inside."""
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(width, round(x2 + dx)), min(height, round(y2 + dy))
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom


def wanted(settings: EscalateSettings, result: dict[str, Any], draw: float) -> str | None:
    """Why `result` would be escalated ("band" or "audit"), or None. `draw` is a uniform
    random number in [0, 1), for the audit sample."""
    label, score = top1(result)
    in_band = score is not None and settings.min_score <= score <= settings.max_score
    if in_band and (not settings.classes or label in settings.classes):
        return "band"
    if settings.sample_rate and draw < settings.sample_rate:
        return "audit"
    return None


class Budget:
    """Two token buckets: requests per minute and bytes per hour, each refilled evenly and
    holding at most one period's worth. Thread-safe."""

    def __init__(
        self, per_minute: int, bytes_per_hour: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._requests = float(per_minute)
        self._bytes = float(bytes_per_hour)
        self._at = clock()
        self.per_minute = per_minute
        self.bytes_per_hour = bytes_per_hour

    def configure(self, per_minute: int, bytes_per_hour: int) -> None:
        with self._lock:
            self._refill_locked()
            self.per_minute, self.bytes_per_hour = per_minute, bytes_per_hour
            self._requests = min(self._requests, per_minute)
            self._bytes = min(self._bytes, bytes_per_hour)

    def _refill_locked(self) -> None:
        now = self.clock()
        elapsed, self._at = now - self._at, now
        self._requests = min(self.per_minute, self._requests + elapsed * self.per_minute / 60)
        self._bytes = min(self.bytes_per_hour, self._bytes + elapsed * self.bytes_per_hour / 3600)

    def take_request(self) -> bool:
        """One request's token, if there is one."""
        with self._lock:
            self._refill_locked()
            if self._requests < 1:
                return False
            self._requests -= 1
            return True

    def take_bytes(self, size: int) -> bool:
        """`size` bytes of the hourly budget, if that much is left."""
        with self._lock:
            self._refill_locked()
            if self._bytes < size:
                return False
            self._bytes -= size
            return True


class Policy:
    """One pipeline's decision: wanted, then within the request budget."""

    def __init__(
        self,
        settings: EscalateSettings,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.budget = Budget(settings.max_per_minute, settings.max_bytes_per_hour, clock)
        self._rng = rng or random.Random()

    def configure(self, settings: EscalateSettings) -> None:
        # The same object on every offer until a reload: compared by value only then.
        if settings is self.settings:
            return
        if settings != self.settings:
            self.budget.configure(settings.max_per_minute, settings.max_bytes_per_hour)
        self.settings = settings

    def decide(self, result: dict[str, Any]) -> str:
        """ "band" or "audit" (escalate), "over_budget", or "no"."""
        why = wanted(self.settings, result, self._rng.random())
        if why is None:
            return "no"
        return why if self.budget.take_request() else "over_budget"
