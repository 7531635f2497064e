"""Sliding windows over a stream of samples, shared by the sensor and line sources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.sources.base import SourceConfig


class WindowedConfig(SourceConfig):
    """Fields of every source that turns samples into windows."""

    window: int = Field(128, ge=1, le=1_000_000, description="Samples per window.")
    hop: int | None = Field(
        None,
        ge=1,
        description="Samples between the starts of two windows; empty: half a window.",
    )

    @property
    def step(self) -> int:
        """The hop in effect."""
        return self.hop or max(1, self.window // 2)


class Windower:
    """push() one sample (a value per channel) at a time; every `hop` samples, once `window`
    samples have come, it returns a fresh (window, channels) float32 array. A hop larger
    than the window leaves the samples between windows out."""

    def __init__(self, window: int, hop: int, channels: int) -> None:
        if window < 1 or hop < 1 or channels < 1:
            raise ValueError("window, hop and channels must be at least 1")
        self.window = window
        self.hop = hop
        self.channels = channels
        # Twice the window, so a window is always one contiguous slice; the newest
        # window-1 rows move to the front only when the end is reached.
        self._buf = np.zeros((2 * window, channels), dtype=np.float32)
        self._end = 0  # rows filled
        self._seen = 0  # samples since reset
        self._due = window  # sample count at which the next window is complete

    def reset(self) -> None:
        self._end = 0
        self._seen = 0
        self._due = self.window

    def push(self, sample: Sequence[float] | npt.NDArray[Any]) -> npt.NDArray[np.float32] | None:
        if self._end == len(self._buf):
            keep = self.window - 1
            self._buf[:keep] = self._buf[self._end - keep : self._end]
            self._end = keep
        self._buf[self._end] = sample
        self._end += 1
        self._seen += 1
        if self._seen < self._due:
            return None
        self._due += self.hop
        window: npt.NDArray[np.float32] = self._buf[self._end - self.window : self._end].copy()
        return window
