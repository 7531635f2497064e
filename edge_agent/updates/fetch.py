"""An update's files onto the device: over HTTP from the manifest's URL, or as chunks pulled
over MQTT from the operator (and asked for again after a reconnect). Each goes to a `.part`
file that survives a restart; a part already complete is not fetched again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config.settings import UpdatesSettings
from edge_agent.link import topics
from edge_agent.updates.manifest import HttpSource, MqttSource, UpdateManifest, UpdateRefused
from edge_agent.updates.transfer import ChunkPull, http_download

if TYPE_CHECKING:
    from edge_agent.link.mqtt import Message, MqttLink

_CHUNK_HEADERS = 512  # room for the topic and MQTT headers around one chunk

Progress = Callable[[int, int], None]
"""Called with (bytes of the whole update done, its total) as the files arrive."""


class Fetcher:
    def __init__(
        self,
        link: MqttLink | None,
        publish: Callable[[str, bytes], bool],
        settings: Callable[[], UpdatesSettings],
        stopping: threading.Event,
    ) -> None:
        self.link = link
        self.publish = publish  # a chunk request, straight to the broker (False: offline)
        self.settings = settings  # read at each use: [updates] applies live
        self.stopping = stopping
        self._pulls: dict[tuple[str, str], ChunkPull] = {}
        self._lock = threading.Lock()

    def fetch(self, m: UpdateManifest, folder: Path, progress: Progress) -> dict[str, Path]:
        """Every file of `m` complete in `folder`, by role. Raises TransferStopped when the
        agent stops (the parts stay for the next start), UserError when a transfer gives up."""
        total = sum(ref.size for ref in m.files.values())
        done_before = 0
        files: dict[str, Path] = {}
        for role, ref in m.files.items():
            part = folder / f"{role}.part"

            def report(done: int, size: int, base: int = done_before) -> None:
                progress(base + done, total)

            if part.exists() and part.stat().st_size == ref.size:
                files[role] = part  # fetched before a restart
            elif isinstance(m.source, HttpSource):
                files[role] = http_download(
                    m.source.file_url(ref),
                    part,
                    ref.size,
                    timeout_s=self.settings().download_timeout_s,
                    progress=report,
                    stop=self.stopping,
                )
            elif isinstance(m.source, MqttSource):
                files[role] = self._pull(m.source, role, part, ref.size, report)
            else:
                raise UpdateRefused("manifest has no source to fetch the files from")
            done_before += ref.size
        return files

    def on_connection(self, up: bool) -> None:
        """Chunks published while the device was away are lost: ask for them again."""
        if up:
            with self._lock:
                pulls = list(self._pulls.values())
            for pull in pulls:
                pull.resend()

    def on_transfer_message(self, message: Message) -> None:
        """A chunk from the operator (paho's network thread)."""
        chunk = message.topic
        if not isinstance(chunk, topics.TransferData):
            return
        with self._lock:
            pull = self._pulls.get((chunk.transfer, chunk.role))
        if pull is not None:
            pull.feed(chunk.index, message.payload)

    def _pull(
        self, source: MqttSource, role: str, part: Path, size: int, progress: Progress
    ) -> Path:
        link = self.link
        if link is None:
            raise UpdateRefused("an MQTT transfer needs [mqtt] enabled")
        limit = link.max_packet_size
        if limit and source.chunk_size + _CHUNK_HEADERS > limit:
            raise UpdateRefused(
                f"source.chunk_size {source.chunk_size} does not fit the broker's maximum "
                f"packet size of {limit} bytes: push with --chunk-size "
                f"{limit - _CHUNK_HEADERS} or less"
            )
        settings = self.settings()
        pull = ChunkPull(
            self.publish,
            topics.TransferGet(link.settings.topic_prefix, link.device, source.transfer).topic,
            role,
            part,
            size,
            source.chunk_size,
            settings.chunk_window,
            settings.download_timeout_s / 4,
            progress,
            idle_limit_s=settings.download_timeout_s * 10,
        )
        with self._lock:
            self._pulls[(source.transfer, role)] = pull
        try:
            return pull.run(self.stopping)
        finally:
            with self._lock:
                self._pulls.pop((source.transfer, role), None)
