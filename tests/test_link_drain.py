"""The sender publishes a page at a time holding paho's lock (MqttLink.holding_acks): other
publishers and the PUBACKs wait for the page, never longer, and nothing is lost or marked
wrongly. Against a real Mosquitto."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from edge_agent.config.settings import MqttSettings, OutboxSettings
from edge_agent.link import topics
from edge_agent.link.mqtt import MqttLink, PublishError
from edge_agent.link.sender import Sender
from edge_agent.outbox.store import Message as Row
from edge_agent.outbox.store import Outbox
from tests.mqtt_fixtures import DEVICE, PREFIX, Broker, wait_until

BACKLOG = 20_000
STATUSES = 200  # QoS 1 publishes by another thread while the backlog drains
STATUS_ACK_S = 5.0  # the PUBACKs of all, at most (a page of publishes takes milliseconds)


def test_another_thread_s_publishes_are_acknowledged_while_a_backlog_drains(
    tmp_path: Path, broker: Broker
) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxSettings(durability="normal"))
    topic = topics.Result(PREFIX, DEVICE, "p").topic
    now = time.time()
    for start in range(0, BACKLOG, 5000):
        box.append(
            [
                Row(f"row-{n}", topic, b"x" * 200, 1, "result", now)
                for n in range(start, start + 5000)
            ]
        )
    settings = MqttSettings(enabled=True, port=broker.port, client_id=DEVICE)
    link = MqttLink(settings, DEVICE, lambda: {})
    sender = Sender(box, link, settings)
    acked = threading.Semaphore(0)
    refused: list[str] = []
    sender.start()
    link.start()
    try:
        assert link.connected.wait(10)
        wait_until(lambda: sender.sent > 0, 10, "the drain under way")
        for _ in range(STATUSES):
            try:
                link.publish(link.status_topic, b"{}", on_ack=lambda reason: acked.release())
            except PublishError as exc:
                refused.append(str(exc))
        assert sender.acked < BACKLOG, "the drain ended before the other publishes: too small"
        for _ in range(STATUSES - len(refused)):
            assert acked.acquire(timeout=STATUS_ACK_S), "a status publish went unacknowledged"
        assert not refused
        wait_until(lambda: box.stats()["pending"] == 0, 60, "the backlog drained")
        assert box.stats()["delivered_kept"] == BACKLOG
        assert link.reconnects == 0
    finally:
        sender.stop()
        link.stop()
        box.close()
