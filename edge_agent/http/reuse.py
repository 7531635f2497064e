"""One render shared by every request that comes within a short period: a scraper at 10/s
and a few open pages cost one status and one metrics render per period, not one each."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Reused(Generic[T]):
    def __init__(self, make: Callable[[], T], max_age_s: float) -> None:
        self._make = make
        self._max_age_s = max_age_s
        self._lock = threading.Lock()  # held while making: concurrent requests wait for one
        self._value: T | None = None
        self._made = float("-inf")

    def __call__(self) -> T:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._made >= self._max_age_s:
                self._value = self._make()
                self._made = now
            return self._value
