"""Counts by name (frames skipped, messages stored, errors), added to from any thread and
read from another (telemetry, summaries) without tearing."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import overload


class Counters(Mapping[str, int]):
    """Like collections.Counter: a name never added reads 0 and is not `in` it. Iterating
    goes over a copy, so adding a new name meanwhile cannot break a reader."""

    def __init__(self, *names: str) -> None:
        # `names` start at 0 and are always shown; others appear when first added.
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def add_each(self, names: Iterable[str]) -> None:
        """One for each name (a name given twice counts twice)."""
        with self._lock:
            for name in names:
                self._counts[name] = self._counts.get(name, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts.get(name, 0)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._counts

    @overload  # type: ignore[override]
    def get(self, name: str, default: None = None) -> int | None: ...

    @overload
    def get(self, name: str, default: int) -> int: ...

    def get(self, name: str, default: int | None = None) -> int | None:
        with self._lock:
            return self._counts.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def __repr__(self) -> str:
        return f"Counters({self.snapshot()})"
