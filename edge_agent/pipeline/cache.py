"""Result cache: an input identical to an earlier one reuses its result."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy.typing as npt


def digest(sample: npt.NDArray[Any]) -> bytes:
    return hashlib.blake2b(sample.tobytes(), digest_size=16).digest()


class ResultCache:
    """Least-recently-used, keyed by the digest of the model input (so two frames that
    preprocess to the same tensor hit). Read by the source thread, filled by the
    inference thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._results: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: bytes) -> dict[str, Any] | None:
        with self._lock:
            result = self._results.get(key)
            if result is not None:
                self._results.move_to_end(key)
            return result

    def put(self, key: bytes, result: dict[str, Any]) -> None:
        with self._lock:
            self._results[key] = result
            self._results.move_to_end(key)
            while len(self._results) > self.size:
                self._results.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._results.clear()
