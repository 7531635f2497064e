"""A test pattern, so the agent runs on a machine with no camera or sensor: colour bars, a
moving box or noise as BGR images, or sine waves as sensor windows. Deterministic for a
given seed; what does not move is rendered once at open."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.sources.base import EndOfStream, Frame, Source, SourceError
from edge_agent.sources.windows import WindowedConfig

# BGR: white, yellow, cyan, green, magenta, red, blue, black.
_BARS = [
    (255, 255, 255),
    (0, 255, 255),
    (255, 255, 0),
    (0, 255, 0),
    (255, 0, 255),
    (0, 0, 255),
    (255, 0, 0),
    (0, 0, 0),
]


class SyntheticConfig(WindowedConfig):
    kind: Literal["synthetic"] = Field("synthetic", description="A generated test pattern.")
    pattern: Literal["bars", "moving_box", "noise", "sine"] = Field(
        "moving_box",
        description="bars, moving_box or noise: BGR images; sine: sensor windows.",
    )
    width: int = Field(640, ge=8, le=8192, description="Image width in pixels.")
    height: int = Field(480, ge=8, le=8192, description="Image height in pixels.")
    channels: int = Field(3, ge=1, le=1024, description="Sine: channels per sample.")
    rate_hz: float = Field(100.0, gt=0, description="Sine: samples per second of signal time.")
    anomaly_every: int = Field(
        0, ge=0, description="Sine: inject an anomaly into every Nth window; 0: never."
    )
    box_size: float = Field(
        0.67, gt=0, le=1, description="moving_box: side as a share of the shorter image side."
    )
    seed: int = Field(0, description="Random seed: the same seed gives the same frames.")
    count: int = Field(0, ge=0, description="Frames before the stream ends; 0: endless.")


class SyntheticSource(Source):
    def __init__(self, name: str, config: SyntheticConfig, state_dir: Path) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        self._interrupted = threading.Event()
        self._index = 0
        self._rng = np.random.default_rng(config.seed)
        self._background: npt.NDArray[np.uint8] | None = None
        self._box = (0.0, 0.0, 0.0, 0.0)  # x, y, dx, dy
        self._signal: npt.NDArray[np.float32] | None = None
        self._blocks = 0
        self._freq = np.zeros(0, np.float32)
        self._phase = np.zeros(0, np.float32)

    def open(self) -> None:
        cfg = self.cfg
        self._index = 0
        self._blocks = 0
        self._signal = None
        self._rng = np.random.default_rng(cfg.seed)
        if cfg.pattern == "bars":
            self._background = _bars(cfg.width, cfg.height)
        elif cfg.pattern == "moving_box":
            ramp = np.linspace(40, 120, cfg.width, dtype=np.float32).astype(np.uint8)
            self._background = np.broadcast_to(
                ramp[None, :, None], (cfg.height, cfg.width, 3)
            ).copy()
            side = self._side()
            x, y = self._rng.uniform(0, [cfg.width - side, cfg.height - side])
            speed = max(2.0, min(cfg.width, cfg.height) / 60)
            angle = self._rng.uniform(0, 2 * np.pi)
            self._box = (x, y, speed * np.cos(angle), speed * np.sin(angle))
        elif cfg.pattern == "sine":
            self._freq = self._rng.uniform(0.5, 5.0, cfg.channels).astype(np.float32)
            self._phase = self._rng.uniform(0, 2 * np.pi, cfg.channels).astype(np.float32)

    def read(self) -> Frame | None:
        if self._interrupted.is_set():
            raise SourceError("interrupted")
        if self.cfg.count and self._index >= self.cfg.count:
            raise EndOfStream(f"{self.cfg.count} frames generated")
        meta: dict[str, Any] = {}
        data: npt.NDArray[Any]
        if self.cfg.pattern == "sine":
            data, anomaly = self._sine_window()
            meta["anomaly"] = anomaly
        elif self.cfg.pattern == "noise":
            shape = (self.cfg.height, self.cfg.width, 3)
            data = np.frombuffer(self._rng.bytes(int(np.prod(shape))), np.uint8).reshape(shape)
            data = data.copy()  # frombuffer over bytes is read-only
        elif self.cfg.pattern == "moving_box":
            data = self._moving_box()
        else:
            assert self._background is not None
            data = self._background.copy()
        frame = Frame(data, time.monotonic(), time.time(), self._index, dict(meta))
        self._index += 1
        return frame

    def close(self) -> None:
        self._interrupted.clear()

    def interrupt(self) -> None:
        self._interrupted.set()

    def _side(self) -> int:
        return max(4, int(min(self.cfg.width, self.cfg.height) * self.cfg.box_size))

    def _moving_box(self) -> npt.NDArray[np.uint8]:
        assert self._background is not None
        w, h = self.cfg.width, self.cfg.height
        side = self._side()
        x, y, dx, dy = self._box
        x, y = x + dx, y + dy
        if not 0 <= x <= w - side:
            dx = -dx
            x = min(max(x, 0), w - side)
        if not 0 <= y <= h - side:
            dy = -dy
            y = min(max(y, 0), h - side)
        self._box = (x, y, dx, dy)
        image: npt.NDArray[np.uint8] = self._background.copy()
        image[int(y) : int(y) + side, int(x) : int(x) + side] = (0, 200, 255)
        return image

    def _sine_window(self) -> tuple[npt.NDArray[np.float32], bool]:
        """The next window: hop new samples after the kept ones (a whole window at first)."""
        cfg = self.cfg
        hop = cfg.step
        new = cfg.window if self._signal is None else min(hop, cfg.window)
        skip = 0 if self._signal is None else max(0, hop - cfg.window)
        start = self._blocks + skip
        t = (start + np.arange(new, dtype=np.float64))[:, None] / cfg.rate_hz
        block = np.sin(2 * np.pi * self._freq * t + self._phase).astype(np.float32)
        block += self._rng.normal(0, 0.05, block.shape).astype(np.float32)
        self._blocks = start + new
        windows = self._index + 1
        anomaly = bool(cfg.anomaly_every) and windows % cfg.anomaly_every == 0
        if anomaly:
            # A burst in one channel, in the newest samples only.
            channel = int(self._rng.integers(cfg.channels))
            length = max(1, min(new, cfg.window // 8))
            block[-length:, channel] += self._rng.normal(0, 3.0, length).astype(np.float32) + 4
        if self._signal is None:
            self._signal = block
        else:
            self._signal = np.concatenate([self._signal[new:], block])
        return self._signal.copy(), anomaly


def _bars(width: int, height: int) -> npt.NDArray[np.uint8]:
    image = np.zeros((height, width, 3), np.uint8)
    edges = np.linspace(0, width, len(_BARS) + 1).astype(int)
    for colour, x0, x1 in zip(_BARS, edges[:-1], edges[1:], strict=True):
        image[: height * 3 // 4, x0:x1] = colour
    # A grey ramp below, so scaling and colour order show.
    image[height * 3 // 4 :] = np.linspace(0, 255, width, dtype=np.float32).astype(np.uint8)[
        None, :, None
    ]
    return image
