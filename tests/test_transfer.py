"""Update file transfer: MQTT chunks through a real Mosquitto (and a proxy that cuts the link),
and HTTP Range downloads from a real local server."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.fleet.serve import ChunkServer, RangeHTTPServer, RangeNotSatisfiable, parse_range
from edge_agent.link import topics
from edge_agent.updates.transfer import ChunkPull, TransferError, TransferStopped, http_download
from tests.mqtt_fixtures import DEVICE, PREFIX, Broker, Endpoint, Probe, Subscriber, wait_until

TRANSFER = "t-0001"
CHUNK = 64 * 1024
WINDOW = 8
SIZE = 4 * 1024 * 1024


class Device(Probe):
    """The device's connection: subscribes to its chunks on every connect, feeds them to the
    current pull, and asks again for what is outstanding once subscribed."""

    def __init__(self, target: Endpoint, client_id: str = "cam-17-updates") -> None:
        super().__init__(target, client_id=client_id)
        self.pull: ChunkPull | None = None
        self.asked: list[tuple[int, dict[str, Any]]] = []  # (connection number, request)
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            client.subscribe(topics.transfer_data_filter(PREFIX, DEVICE, TRANSFER), qos=1)
        super()._on_connect(client, userdata, flags, reason, properties)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        super()._on_subscribe(client, userdata, mid, reasons, properties)
        if self.pull is not None:
            self.pull.resend()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        chunk = topics.parse(msg.topic)
        if not isinstance(chunk, topics.TransferData) or self.pull is None:
            return
        if (chunk.transfer, chunk.role) == (TRANSFER, self.pull.role):
            self.pull.feed(chunk.index, bytes(msg.payload))

    def send(self, topic: str, payload: bytes) -> bool:
        if not self.client.is_connected():
            return False
        self.asked.append((self.connected_count, json.loads(payload)))
        return self.client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    def make_pull(self, part: Path, size: int, **options: Any) -> ChunkPull:
        defaults: dict[str, Any] = {"window": WINDOW, "timeout_s": 3.0, "idle_limit_s": 8.0}
        self.pull = ChunkPull(
            self.send,
            topics.TransferGet(PREFIX, DEVICE, TRANSFER).topic,
            "model",
            part,
            size,
            CHUNK,
            **{**defaults, **options},
        )
        return self.pull


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "served" / "model.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(SIZE))
    return path


@pytest.fixture
def server(broker: Broker, source: Path) -> Iterator[ChunkServer]:
    operator = Probe(broker, client_id="operator")
    operator.connect()
    chunks = ChunkServer(operator.client, PREFIX, TRANSFER, {"model": source}, CHUNK).start()
    wait_until(lambda: len(operator.subacks) >= 1, 5.0, "the chunk server's SUBACK")
    yield chunks
    chunks.stop()
    operator.close()


def connected_device(target: Endpoint, client_id: str = "cam-17-updates") -> Device:
    device = Device(target, client_id)
    device.connect()
    wait_until(lambda: len(device.subacks) >= 1, 5.0, "the device's SUBACK")
    return device


def test_mqtt_pull_arrives_byte_identical(
    server: ChunkServer, proxy: Endpoint, source: Path, tmp_path: Path
) -> None:
    device = connected_device(proxy)
    seen: list[tuple[int, int]] = []
    pull = device.make_pull(
        tmp_path / "dl" / "model.part", SIZE, progress=lambda d, t: seen.append((d, t))
    )
    started = time.monotonic()
    part = pull.run(threading.Event())
    elapsed = time.monotonic() - started
    device.close()
    assert part.read_bytes() == source.read_bytes()
    assert seen[0] == (0, SIZE) and seen[-1] == (SIZE, SIZE)
    assert server.progress()[DEVICE] == (SIZE, SIZE)
    # Each chunk once, give or take a re-ask on a slow machine.
    assert SIZE <= server.sent()[DEVICE] <= SIZE + WINDOW * CHUNK
    assert pull.requests == len(device.asked) > 0  # the pull's count is what went out
    print(f"4 MiB over MQTT chunks: {elapsed:.2f} s, {SIZE / elapsed / 1e6:.1f} MB/s")


def test_mqtt_pull_continues_after_the_connection_is_cut(
    server: ChunkServer, proxy: Any, source: Path, tmp_path: Path
) -> None:
    device = connected_device(proxy)
    cut_at: list[int] = []

    def cut_halfway(done: int, total: int) -> None:
        if not cut_at and done >= total // 2:
            cut_at.append(done // CHUNK)
            proxy.cut()

    pull = device.make_pull(tmp_path / "model.part", SIZE, progress=cut_halfway)
    part = pull.run(threading.Event())
    device.close()
    assert part.read_bytes() == source.read_bytes()
    assert device.connected_count >= 2, "the cut should have forced a reconnect"
    after = [request for connection, request in device.asked if connection >= 2]
    assert after, "nothing was asked for after the reconnect"
    assert min(request["from"] for request in after) >= cut_at[0]
    assert all(request["from"] > 0 for _, request in device.asked[1:])
    # What was in flight at the cut is asked for again; nothing more.
    assert SIZE <= server.sent()[DEVICE] <= SIZE + 2 * WINDOW * CHUNK


def test_mqtt_pull_restarted_asks_only_for_the_missing_chunks(
    server: ChunkServer, broker: Broker, source: Path, tmp_path: Path
) -> None:
    part = tmp_path / "model.part"
    first = connected_device(broker)
    stop = threading.Event()

    def stop_halfway(done: int, total: int) -> None:
        if done >= total // 2:
            stop.set()

    with pytest.raises(TransferStopped, match="model: stopped after"):
        first.make_pull(part, SIZE, progress=stop_halfway).run(stop)
    first.close()
    # A crash in the middle of a write leaves part of a chunk behind.
    whole = part.stat().st_size // CHUNK
    assert whole * CHUNK == part.stat().st_size >= SIZE // 2
    with part.open("ab") as f:
        f.write(b"\x00" * (CHUNK // 3))
    sent_before = server.sent()[DEVICE]

    second = connected_device(broker, "cam-17-updates-2")
    second.make_pull(part, SIZE).run(threading.Event())
    second.close()
    assert part.read_bytes() == source.read_bytes()
    assert min(request["from"] for _, request in second.asked) == whole
    assert server.sent()[DEVICE] - sent_before <= SIZE - whole * CHUNK + WINDOW * CHUNK


def test_chunk_server_ignores_bad_requests(server: ChunkServer, broker: Broker) -> None:
    data = topics.transfer_data_filter(PREFIX, DEVICE, TRANSFER)
    with Subscriber(broker, data) as chunks, Probe(broker) as asker:
        asker.connect()
        topic = topics.TransferGet(PREFIX, DEVICE, TRANSFER).topic
        for bad in (
            b"not json",
            b'{"file": "labels", "from": 0, "count": 1}',
            b'{"file": "model", "from": 64, "count": 1}',
            b'{"file": "model", "from": -1, "count": 2}',
            b'{"file": "model", "from": 0, "count": 0}',
            b'["model", 0, 1]',
        ):
            asker.publish(topic, bad)
        asker.publish(topic, b'{"file": "model", "from": 63, "count": 5}')
        received = chunks.wait_for(1)
        time.sleep(0.3)  # room for a wrong answer to show up
    assert [m.topic for m in chunks.messages] == [received[0].topic]
    assert topics.parse(received[0].topic) == topics.TransferData(
        PREFIX, DEVICE, TRANSFER, "model", 63
    )
    assert len(received[0].payload) == CHUNK


def test_wrong_chunk_length_is_refused(tmp_path: Path) -> None:
    pull = ChunkPull(lambda t, p: True, "x/get", "model", tmp_path / "p", 100, 40, 4, 1.0)
    pull.feed(2, b"x" * 20)  # the last chunk is 20 bytes: accepted
    pull.feed(0, b"x" * 39)
    with pytest.raises(TransferError, match="model: chunk 0 has 39 bytes, expected 40"):
        pull.run(threading.Event())


def test_range_headers_are_parsed() -> None:
    assert parse_range("bytes=10-", 100) == (10, 99)
    assert parse_range("bytes=10-19", 100) == (10, 19)
    assert parse_range("bytes=-30", 100) == (70, 99)
    assert parse_range("bytes=0-5,10-20", 100) is None
    assert parse_range("items=1-2", 100) is None
    assert parse_range("bytes=20-10", 100) is None
    assert parse_range("bytes=90-200", 100) == (90, 99)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=100-", 100)


# --- HTTP --------------------------------------------------------------------------------------

HTTP_SIZE = 1024 * 1024


@pytest.fixture
def served(tmp_path: Path) -> Path:
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "model.bin").write_bytes(os.urandom(HTTP_SIZE))
    return folder


def download(http: RangeHTTPServer, part: Path, size: int = HTTP_SIZE, **options: Any) -> Path:
    return http_download(
        http.url + "model.bin", part, size, timeout_s=5.0, stop=threading.Event(), **options
    )


def test_http_download_complete(served: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    with RangeHTTPServer(served) as http:
        part = download(
            http, tmp_path / "dl" / "model.part", progress=lambda d, t: seen.append((d, t))
        )
    assert part.read_bytes() == (served / "model.bin").read_bytes()
    assert http.requests == [("/model.bin", None)]
    assert seen[-1] == (HTTP_SIZE, HTTP_SIZE)


def test_http_download_resumes_with_range_after_a_cut(served: Path, tmp_path: Path) -> None:
    with RangeHTTPServer(served, cut_after=400_000) as http:
        part = download(http, tmp_path / "model.part", backoff_s=0.05)
    assert part.read_bytes() == (served / "model.bin").read_bytes()
    assert http.requests == [("/model.bin", None), ("/model.bin", "bytes=400000-")]


def test_http_download_resumes_after_a_read_timeout(served: Path, tmp_path: Path) -> None:
    # The server goes silent mid-body: the read times out and what came before is kept.
    with RangeHTTPServer(served, cut_after=300_000, stall_s=1.5) as http:
        part = http_download(
            http.url + "model.bin",
            tmp_path / "model.part",
            HTTP_SIZE,
            timeout_s=0.5,
            stop=threading.Event(),
            backoff_s=0.05,
        )
    assert part.read_bytes() == (served / "model.bin").read_bytes()
    assert http.requests == [("/model.bin", None), ("/model.bin", "bytes=300000-")]


def test_http_download_starts_over_when_range_is_ignored(served: Path, tmp_path: Path) -> None:
    part = tmp_path / "model.part"
    part.write_bytes(b"\xff" * 300_000)  # not the file's first bytes: must not survive
    with RangeHTTPServer(served, ignore_range=True) as http:
        download(http, part)
    assert part.read_bytes() == (served / "model.bin").read_bytes()
    assert http.requests == [("/model.bin", "bytes=300000-")]


def test_http_download_refuses_more_than_the_manifest_size(served: Path, tmp_path: Path) -> None:
    part = tmp_path / "model.part"
    with RangeHTTPServer(served) as http, pytest.raises(TransferError) as error:
        download(http, part, size=500_000)
    assert str(error.value) == f"{http.url}model.bin: more than the 500000 bytes the manifest says"
    assert part.stat().st_size == 0


def test_http_download_names_a_file_shorter_than_the_manifest(served: Path, tmp_path: Path) -> None:
    with RangeHTTPServer(served) as http, pytest.raises(TransferError) as error:
        download(http, tmp_path / "model.part", size=HTTP_SIZE + 1)
    assert str(error.value).endswith(
        f"the server has {HTTP_SIZE} bytes, the manifest says {HTTP_SIZE + 1}"
    )


def test_http_download_gives_up_after_tries_without_progress(tmp_path: Path) -> None:
    with RangeHTTPServer(tmp_path) as http:
        url = http.url + "model.bin"
    # The server is gone: every try is refused.
    with pytest.raises(TransferError, match=r"\(3 tries, no progress\)"):
        http_download(
            url,
            tmp_path / "m.part",
            10,
            timeout_s=1.0,
            stop=threading.Event(),
            attempts=3,
            backoff_s=0.01,
        )
