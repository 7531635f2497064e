"""JSON from outside parsed strictly: an edge-fleet chunk server through a real Mosquitto
outlives requests built to break its parser, and an update manifest with numbers JSON has
not, or nested past the limit, is refused with one line."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.errors import UserError
from edge_agent.fleet.serve import MAX_REQUEST_BYTES, ChunkServer
from edge_agent.json_body import MAX_DEPTH, BodyError, parse_object
from edge_agent.link import topics
from edge_agent.updates.manifest import parse_manifest
from tests.mqtt_fixtures import DEVICE, PREFIX, Broker, Probe, Subscriber, wait_until

TRANSFER = "t-0002"
CHUNK = 1024


@pytest.fixture
def server(broker: Broker, tmp_path: Path) -> Iterator[ChunkServer]:
    model = tmp_path / "model.bin"
    model.write_bytes(os.urandom(4 * CHUNK))
    operator = Probe(broker, client_id="operator")
    operator.connect()
    chunks = ChunkServer(operator.client, PREFIX, TRANSFER, {"model": model}, CHUNK).start()
    wait_until(lambda: len(operator.subacks) >= 1, 5.0, "the chunk server's SUBACK")
    yield chunks
    chunks.stop()
    operator.close()


def test_the_chunk_server_outlives_hostile_requests(server: ChunkServer, broker: Broker) -> None:
    data = topics.transfer_data_filter(PREFIX, DEVICE, TRANSFER)
    ask = topics.TransferGet(PREFIX, DEVICE, TRANSFER).topic
    with Subscriber(broker, data) as chunks, Probe(broker) as asker:
        asker.connect()
        for hostile in (
            b"[" * 200_000,  # the plain parser's recursion limit, not a ValueError
            b'{"file": "model", "from": 0, "count": 1, "pad": "' + b"x" * 4096 + b'"}',
            b'{"file": "model", "from": 0, "count": NaN}',
        ):
            asker.publish(ask, hostile)
        asker.publish(ask, b'{"file": "model", "from": 3, "count": 1}')
        received = chunks.wait_for(1)
        time.sleep(0.3)  # room for a wrong answer to show up
    assert [topics.parse(m.topic) for m in chunks.messages] == [
        topics.TransferData(PREFIX, DEVICE, TRANSFER, "model", 3)
    ]
    assert len(received[0].payload) == CHUNK


def test_a_body_over_its_size_limit_is_refused_before_parsing() -> None:
    at_limit = b'{"a": "' + b"x" * (MAX_REQUEST_BYTES - 9) + b'"}'
    assert len(at_limit) == MAX_REQUEST_BYTES
    assert parse_object(at_limit, max_bytes=MAX_REQUEST_BYTES)["a"].startswith("x")
    with pytest.raises(BodyError, match=f"body is 1025 bytes, more than {MAX_REQUEST_BYTES}"):
        parse_object(at_limit + b" ", max_bytes=MAX_REQUEST_BYTES)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"schema": "edge-agent/update/1", "x": NaN}', "NaN is not a JSON number"),
        ('{"schema": "edge-agent/update/1", "x": 1e999}', "number 1e999 is out of range"),
        ('{"x": ' + "[" * 40 + "]" * 40 + "}", f"nests 41 levels deep, more than {MAX_DEPTH}"),
    ],
)
def test_an_update_manifest_is_parsed_strictly(text: str, reason: str) -> None:
    json.loads(text)  # what the plain parser would have let through
    with pytest.raises(UserError) as err:
        parse_manifest(text.encode(), 2**30)
    assert str(err.value) == f"update manifest: not valid JSON: {reason}"
    with pytest.raises(UserError, match="not valid JSON: 'utf-8' codec can't decode"):
        parse_manifest(text.encode("utf-16"), 2**30)
