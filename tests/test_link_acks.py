"""The link owns every publish: each PUBACK goes to the part that published that message and
to no other, incoming messages go by parsed topic to the handlers that subscribed, and a
publish that cannot go says so. Against a real Mosquitto, through a proxy that reads the
MQTT packets it forwards."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config.settings import MqttSettings, OutboxSettings
from edge_agent.link import topics
from edge_agent.link.mqtt import LinkOffline, Message, MqttLink
from edge_agent.link.sender import Sender
from edge_agent.outbox.store import Message as Row
from edge_agent.outbox.store import Outbox
from tests.mqtt_fixtures import (
    DEVICE,
    PREFIX,
    Broker,
    BrokerFactory,
    Probe,
    Subscriber,
    wait_until,
)
from tests.mqtt_wire import WireProxy

RESULTS = topics.Result(PREFIX, DEVICE, topics.ANY).topic
ROW_EVERY = 50  # status publishes between two outbox rows
WITHHELD = 20  # outbox rows kept from the broker after the packet ids wrapped
UNANSWERED = 64  # publishes the driver lets wait for their PUBACK, as a window would
MAX_PACKET_ID = 65_535


@pytest.fixture
def wire(broker_factory: BrokerFactory) -> Iterator[WireProxy]:
    # A broker that sets no Receive Maximum (Mosquitto's 20 by default): the withheld rows,
    # never acknowledged, would otherwise fill the whole window and stop every publish.
    broker = broker_factory(extra_config=["max_inflight_messages 0"])
    proxy = WireProxy(broker).start()
    yield proxy
    proxy.stop()


def settings(port: int) -> MqttSettings:
    return MqttSettings(
        enabled=True,
        port=port,
        client_id=DEVICE,
        inflight=4 * UNANSWERED,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )


def add_row(box: Outbox, number: int) -> str:
    row_id = f"row-{number:05d}"
    topic = topics.Result(PREFIX, DEVICE, "p").topic
    box.append([Row(row_id, topic, row_id.encode(), 1, "result", time.time())])
    return row_id


def delivered(db: Path) -> set[str]:
    """Ids of the rows the outbox holds as acknowledged, read as another process would."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row_id for (row_id,) in conn.execute("SELECT id FROM messages WHERE state=1")}
    finally:
        conn.close()


def test_no_row_is_marked_delivered_by_another_message_s_puback_once_ids_wrap(
    tmp_path: Path, wire: WireProxy
) -> None:
    """Status publishes (QoS 1, not from the outbox) interleaved with outbox rows drive
    paho's message id past 65,535. After the wrap the proxy keeps the rows from the broker,
    so no PUBACK can come for them: none may be marked delivered, and after the link is cut
    every one of them reaches the broker."""
    db = tmp_path / "outbox.db"
    box = Outbox(db, OutboxSettings(durability="normal"))
    link = MqttLink(settings(wire.port), DEVICE, lambda: {})
    sender = Sender(box, link, link.settings)
    wire.withhold(RESULTS)
    ids: list[str] = []
    with Subscriber(wire.target, RESULTS) as sub:
        sender.start()
        link.start()
        try:
            assert link.connected.wait(10)
            statuses = 0
            while len(wire.withheld) < WITHHELD:
                assert statuses < 2 * MAX_PACKET_ID, "paho's packet ids never wrapped"
                wire.wait_unanswered_below(UNANSWERED)
                link.publish_status()
                statuses += 1
                if statuses % ROW_EVERY == 0:
                    ids.append(add_row(box, len(ids)))
                    sender.wake()

            def withheld() -> set[str]:
                return {w.payload.decode() for w in wire.withheld}

            # Settled: every row went out, and the broker acknowledged all it was given.
            wait_until(
                lambda: set(ids) <= withheld() | delivered(db), 10, "every row sent and settled"
            )
            wrongly = sorted(withheld() & delivered(db))
            assert not wrongly, f"marked delivered without their own PUBACK: {wrongly}"

            wire.cut()
            wait_until(lambda: box.stats()["pending"] == 0, 20, "the outbox drained")
            wait_until(
                lambda: {m.payload.decode() for m in sub.messages} >= set(ids),
                10,
                "every row at the broker",
            )
        finally:
            sender.stop()
            link.stop()
            box.close()


def test_a_publish_while_offline_says_so() -> None:
    link = MqttLink(settings(1), DEVICE, lambda: {})  # never started
    acks: list[int] = []
    with pytest.raises(LinkOffline, match="not connected"):
        link.publish(topics.Status(PREFIX, DEVICE).topic, b"{}", on_ack=acks.append)
    assert not acks


def test_acks_and_messages_go_only_to_whoever_published_or_subscribed(broker: Broker) -> None:
    link = MqttLink(settings(broker.port), DEVICE, lambda: {})
    commands: list[Message] = []
    chunks: list[Message] = []
    link.subscribe(topics.command_filters(PREFIX, DEVICE, ["lobby"])[0], commands.append)
    link.subscribe(topics.transfer_data_filter(PREFIX, DEVICE), chunks.append)
    acked = threading.Event()
    acks: list[int] = []

    def on_ack(code: int) -> None:
        acks.append(code)
        acked.set()

    link.start()
    try:
        assert link.connected.wait(10)
        mid = link.publish(topics.Reply(PREFIX, DEVICE, "r-1").topic, b"{}", on_ack=on_ack)
        # 0x10: no subscriber had it, a success all the same (refusals are >= 0x80).
        assert acked.wait(5) and acks in ([0], [0x10]) and 1 <= mid <= MAX_PACKET_ID
        with Probe(broker, client_id="operator") as operator:
            operator.connect()
            chunk = topics.TransferData(PREFIX, DEVICE, "t-1", "model", 3)
            operator.publish(chunk.topic, b"data")
            operator.publish(topics.Command(PREFIX, "ping", device=DEVICE).topic, b"{}")
            wait_until(lambda: len(commands) == 1 and len(chunks) == 1, 5, "both messages")
    finally:
        link.stop()
    assert commands[0].topic == topics.Command(PREFIX, "ping", device=DEVICE)
    assert chunks[0].topic == chunk and chunks[0].payload == b"data"
    assert len(acks) == 1  # once, and nobody else's
