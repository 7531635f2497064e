"""Change gating: skip inference on a frame too like the last one inferred, judged on a
small gray copy so the check costs a fraction of a millisecond."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.config.settings import GateSettings


class ChangeGate:
    def __init__(self, settings: GateSettings) -> None:
        self.settings = settings
        self._last: npt.NDArray[np.int16] | None = None
        self._last_time = float("-inf")

    def should_infer(self, data: npt.NDArray[Any], now: float) -> bool:
        """True when the frame changed enough, or when max_skip_s has passed."""
        small = self._thumbnail(data)
        if (
            self._last is None
            or now - self._last_time >= self.settings.max_skip_s
            or self._difference(small, self._last) >= self.settings.threshold
        ):
            self._last, self._last_time = small, now
            return True
        return False

    def _thumbnail(self, data: npt.NDArray[Any]) -> npt.NDArray[np.int16]:
        size = self.settings.size
        if data.dtype != np.uint8:
            # A sensor window: compare values scaled to their own range.
            span = float(np.ptp(data)) or 1.0
            scaled: npt.NDArray[np.int16] = ((data - data.min()) / span * 255).astype(np.int16)
            return scaled
        import cv2  # here, not at the top: a sensor-only agent never loads OpenCV

        gray = data if data.ndim == 2 else cv2.cvtColor(data, cv2.COLOR_BGR2GRAY)
        return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.int16)

    @staticmethod
    def _difference(a: npt.NDArray[np.int16], b: npt.NDArray[np.int16]) -> float:
        if a.shape != b.shape:
            return 1.0
        return float(np.abs(a - b).mean()) / 255.0
