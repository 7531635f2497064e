"""The latest frame of a source as JPEG, with what its pipelines last found drawn on it:
the picture the `snapshot` command sends, drawn by the same function."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from edge_agent.commands.drawing import picture
from edge_agent.graph import SourceHub


class Hubs(Protocol):
    """The part of the pipeline graph a snapshot reads."""

    def hub(self, source: str) -> SourceHub | None: ...

    def hubs(self) -> dict[str, SourceHub]: ...


@dataclass(frozen=True)
class Snapshot:
    source: str
    ts: float  # Unix time the frame was captured
    jpeg: bytes


class Snapshots:
    """Each request's picture is drawn on one long-lived thread, not on the request's own:
    its megabyte-sized copies then come from one malloc arena, reused from one snapshot to
    the next, instead of being left behind in the arena of every request thread that ever
    drew one (glibc keeps freed memory in the arena it came from)."""

    def __init__(self, graph: Hubs, quality: int) -> None:
        self._graph = graph
        self._quality = quality
        self._drawer = ThreadPoolExecutor(1, thread_name_prefix="http-snapshot")

    def latest(self, source: str | None = None) -> Snapshot | None:
        """The named source's latest image frame, or the first source's that has one;
        None when there is no such frame yet."""
        return self._drawer.submit(self._latest, source).result()

    def close(self) -> None:
        self._drawer.shutdown(wait=False, cancel_futures=True)

    def _latest(self, source: str | None) -> Snapshot | None:
        names = [source] if source is not None else sorted(self._graph.hubs())
        for name in names:
            hub = self._graph.hub(name)
            frame = hub.last_frame if hub is not None else None
            if hub is None or frame is None or not frame.is_image:
                continue
            drawn = picture(frame, hub.pipelines, self._quality)
            if drawn is not None:
                return Snapshot(name, frame.wall_time, drawn.jpeg)
        return None
