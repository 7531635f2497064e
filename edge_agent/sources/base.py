"""What every source is: a config model, and a blocking reader that a runner thread drives."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.counters import Counters


@dataclass
class Frame:
    """One unit of input: an image (H x W x 3 BGR or H x W gray, uint8) or a sensor window
    (window x channels, float32)."""

    data: npt.NDArray[Any]
    captured: float  # time.monotonic() when it was read
    wall_time: float  # time.time() at the same moment
    index: int  # per-source count, from 0 at each start
    meta: dict[str, Any] = field(default_factory=dict)
    read_s: float = 0.0  # time spent reading it: the capture stage (set by the runner)
    # Called once a result of it is durable in every pipeline that read it; a source that
    # must not lose inputs (an image folder) forgets the input only then.
    on_durable: Callable[[], None] | None = None
    # A JPEG decoded at reduced scale: the frame's own (width, height), which results are
    # given in, and the compressed frame, which a snapshot decodes whole. None: `data` is
    # the whole frame.
    full_size: tuple[int, int] | None = None
    jpeg: npt.NDArray[np.uint8] | None = None

    @property
    def is_image(self) -> bool:
        return self.data.dtype == np.uint8

    def full_image(self) -> npt.NDArray[Any]:
        """The image at the frame's own size, decoded again when `data` is reduced."""
        if self.full_size is None or self.jpeg is None:
            return self.data
        from edge_agent.sources.jpeg import decode_full

        image = decode_full(self.jpeg)
        # It decoded once already; should it not now, the reduced image is still the frame.
        return self.data if image is None else image


class SourceState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"  # open or read failed; retrying with backoff
    ENDED = "ended"  # a finite input (file without loop) is done
    STOPPED = "stopped"
    FAILED = "failed"  # cannot work as configured (e.g. GStreamer missing); not retried


class SourceError(Exception):
    """Opening or reading failed; the runner closes the source and reconnects."""


class SourceUnusable(Exception):
    """The source cannot work as configured; retrying would not help."""


class EndOfStream(Exception):
    """A finite input has no more frames."""


class SourceConfig(BaseModel):
    """Fields every source kind has."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    fps: float | None = Field(
        None, gt=0, description="Most frames (or windows) per second; empty: as they come."
    )
    reconnect_min_s: float = Field(0.5, gt=0, description="First reconnect delay.")
    reconnect_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay.")


class Source(ABC):
    """A blocking reader. The runner calls open(), read() until it raises, close(), and
    open() again after a backoff. interrupt() may be called from another thread to make a
    blocked read() return soon (by raising SourceError or EndOfStream)."""

    # True when the input runs on its own clock (a camera, a socket, a sensor): under an fps
    # cap the runner keeps reading and drops what comes early, since waiting would leave
    # stale data queued in the device or the connection. Files and generated input wait.
    live: bool = False
    # True when the input is a recording (kept in files) whose every item is wanted: under
    # a pipeline's on_full "auto" a full queue makes the runner wait instead of dropping.
    recorded: bool = False

    def __init__(self, name: str, config: SourceConfig, state_dir: Path) -> None:
        self.name = name
        self.config = config
        self.state_dir = state_dir
        # Things skipped or set aside, by reason ("corrupt_frames", "bad_lines", ...):
        # counted on the source's thread, read by telemetry's.
        self.counters = Counters()
        # The smallest image (width, height) that serves every model reading this source,
        # kept current by whoever fans its frames out; a source that can decode smaller
        # for less work (JPEG) may. None: whole frames are wanted.
        self.wanted_size: tuple[int, int] | None = None

    def count(self, reason: str, n: int = 1) -> None:
        self.counters.add(reason, n)

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame | None:
        """The next frame; None when there was nothing usable this time (keep reading)."""

    def close(self) -> None:  # noqa: B027 - most sources have something to close, not all
        pass

    def interrupt(self) -> None:  # noqa: B027
        pass
