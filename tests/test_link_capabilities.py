"""What an MQTT 5 broker says in its CONNACK and SUBACK, met by the link: a Receive Maximum
bounds what is in flight, a lowered Session Expiry Interval is said once, and a refused
subscription is one line and a status problem. Real Mosquitto brokers; a proxy that reads
the MQTT packets sees what the broker got."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from edge_agent.config.settings import MqttSettings, OutboxSettings
from edge_agent.link import topics
from edge_agent.link.mqtt import Message, MqttLink
from edge_agent.link.sender import Sender
from edge_agent.link.subscriptions import PROBLEM_KEY
from edge_agent.outbox.store import Message as Row
from edge_agent.outbox.store import Outbox
from edge_agent.status_board import StatusBoard
from tests.mqtt_fixtures import (
    DEVICE,
    PREFIX,
    BrokerFactory,
    Endpoint,
    Probe,
    Subscriber,
    TcpProxy,
    dynamic_security,
    find_dynamic_security,
    wait_until,
)
from tests.mqtt_wire import WireProxy, _remaining_length

CONNACK = 2
SESSION_EXPIRY_INTERVAL = 0x11  # the MQTT 5 property id


class WindowProxy(WireProxy):
    """Also records the most QoS 1 PUBLISHes the broker had unacknowledged at once."""

    def __init__(self, target: Endpoint) -> None:
        super().__init__(target)
        self.peak = 0

    def cut(self) -> None:
        """What was unanswered on the connections cut is never answered: count afresh."""
        super().cut()
        with self._cond:
            self._published = self._acked = 0

    def _forward(self, packet: bytes, upstream: bool) -> bool:
        forwarded = super()._forward(packet, upstream)
        with self._cond:
            self.peak = max(self.peak, self._published - self._acked)
        return forwarded


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class ExpiryProxy(WireProxy):
    """Adds a Session Expiry Interval of `granted` seconds to every CONNACK: what a broker
    that caps sessions (AWS IoT Core: 1 h by default) answers. Mosquitto 2.0 never lowers
    the interval asked for, so this is the one thing here not from the broker itself."""

    def __init__(self, target: Endpoint, granted: int) -> None:
        super().__init__(target)
        self.granted = granted

    def _rewrite(self, packet: bytes) -> bytes:
        if packet[0] >> 4 != CONNACK:
            return packet
        _, used = _remaining_length(packet, 1) or (0, 1)
        body = packet[1 + used :]
        length, width = _remaining_length(body, 2) or (0, 1)
        props = body[2 + width : 2 + width + length]
        props += bytes([SESSION_EXPIRY_INTERVAL]) + self.granted.to_bytes(4, "big")
        new_body = body[:2] + _varint(len(props)) + props
        return bytes([packet[0]]) + _varint(len(new_body)) + new_body


def link_settings(port: int, **options: Any) -> MqttSettings:
    values: dict[str, Any] = {
        "enabled": True,
        "port": port,
        "client_id": DEVICE,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
        **options,
    }
    return MqttSettings(**values)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- Receive Maximum ------------------------------------------------------------------------


@pytest.fixture
def window_proxy(broker_factory: BrokerFactory) -> Iterator[WindowProxy]:
    # Mosquitto sends its max_inflight_messages to MQTT 5 clients as Receive Maximum.
    broker = broker_factory(extra_config=["max_inflight_messages 10"])
    proxy = WindowProxy(broker).start()
    yield proxy
    proxy.stop()


def test_a_broker_s_receive_maximum_bounds_what_is_in_flight(
    tmp_path: Path, window_proxy: WindowProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    box = Outbox(tmp_path / "outbox.db", OutboxSettings(durability="normal"))
    settings = link_settings(window_proxy.port)  # mqtt.inflight 500, the default
    link = MqttLink(settings, DEVICE, lambda: {})
    sender = Sender(box, link, settings)
    topic = topics.Result(PREFIX, DEVICE, "p").topic
    ids = [f"row-{n:04d}" for n in range(1500)]
    box.append([Row(i, topic, i.encode(), 1, "result", time.time()) for i in ids])
    results = topics.Result(PREFIX, DEVICE, topics.ANY).topic
    with Subscriber(window_proxy.target, results) as sub:
        sender.start()
        link.start()
        try:
            # The status goes beside the rows. The first connection learns the limit and the
            # sender keeps below it; after the cut paho's own window is the limit, for all.
            while box.stats()["pending"]:
                link.publish_status()
                if sender.acked >= 500 and not link.reconnects:
                    window_proxy.cut()
                time.sleep(0.01)
            wait_until(
                lambda: {m.payload.decode() for m in sub.messages} >= set(ids),
                10,
                "every row at the broker",
            )
        finally:
            sender.stop()
            link.stop()
            box.close()
    assert link.reconnects == 1
    assert 5 <= window_proxy.peak <= 10, window_proxy.peak
    said = lines(caplog, "Receive Maximum")
    assert said == [
        f"mqtt: broker 127.0.0.1:{window_proxy.port} takes 10 unacknowledged QoS 1 messages at "
        "a time (Receive Maximum): at most that many are in flight, not mqtt.inflight 500"
    ], said


# --- Session Expiry Interval ------------------------------------------------------------------


def test_a_session_expiry_the_broker_lowers_is_said_once(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    proxy = ExpiryProxy(broker_factory(), granted=3600).start()
    link = MqttLink(link_settings(proxy.port), DEVICE, lambda: {})
    link.start()
    try:
        assert link.connected.wait(10)
        proxy.cut()
        wait_until(lambda: link.reconnects >= 1 and link.connected.is_set(), 10, "a reconnect")
    finally:
        link.stop()
        proxy.stop()
    said = lines(caplog, "keeps our session")
    assert said == [
        f"mqtt: broker 127.0.0.1:{proxy.port} keeps our session 3600 s after a disconnect, not "
        "the 86400 s asked (mqtt.session_expiry_s): commands sent to the device while it is "
        "away longer are lost"
    ], said


def test_a_session_expiry_as_asked_is_not_mentioned(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    proxy = ExpiryProxy(broker_factory(), granted=86400).start()
    link = MqttLink(link_settings(proxy.port), DEVICE, lambda: {})
    link.start()
    try:
        assert link.connected.wait(10)
    finally:
        link.stop()
        proxy.stop()
    assert not lines(caplog, "keeps our session")


# --- SUBACK ------------------------------------------------------------------------------------

OPS, OPS_PASSWORD = "ops", "ops-secret"
DEVICE_PASSWORD = "device-secret"
OWN_COMMANDS, BROADCAST = topics.command_filters(PREFIX, DEVICE, [])


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_refused_subscription_is_one_line_and_a_status_problem_until_granted(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    if find_dynamic_security() is None:
        pytest.skip("mosquitto_dynamic_security.so is not installed")
    caplog.set_level(logging.INFO, logger="edge_agent")
    # The device may publish under its own topics and read the broadcast commands, not its
    # own: an operator's mistake in the ACL.
    control = "$CONTROL/dynamic-security/#"
    security = dynamic_security(
        tmp_path,
        {
            DEVICE: (
                DEVICE_PASSWORD,
                [("publishClientSend", f"{PREFIX}/{DEVICE}/#"), ("subscribePattern", BROADCAST)],
            ),
            OPS: (
                OPS_PASSWORD,
                [
                    ("publishClientSend", "#"),
                    ("subscribePattern", "#"),
                    ("publishClientSend", control),
                    ("subscribePattern", control),
                ],
            ),
        },
    )
    broker = broker_factory(allow_anonymous=False, extra_config=security)
    board = StatusBoard()
    with TcpProxy(broker) as proxy:
        settings = link_settings(
            proxy.port, username=DEVICE, password=DEVICE_PASSWORD, protocol=protocol
        )

        def online() -> dict[str, Any]:
            return {"problems": [p.as_dict() for p in board.problems()]}

        link = MqttLink(settings, DEVICE, online, status=board)

        def publish_status() -> None:  # as the agent does when a problem comes or goes
            if link.connected.is_set():
                link.publish_status()

        board.add_listener(publish_status)
        commands: list[Message] = []
        link.subscribe(OWN_COMMANDS, commands.append)
        link.subscribe(BROADCAST, commands.append)
        status_topic = topics.Status(PREFIX, DEVICE).topic
        operator = Subscriber(
            broker,
            status_topic,
            username=OPS,
            password=OPS_PASSWORD,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        link.start()
        with operator:
            try:
                wait_until(lambda: board.get(PROBLEM_KEY) is not None, 10, "the problem")
                # The operator sees it in the retained status.
                operator.wait_for(
                    lambda m: any(
                        OWN_COMMANDS in p["problem"] for p in json.loads(m.payload)["problems"]
                    ),
                    10,
                )
                # The granted filter works: a broadcast command arrives.
                operator.publish(topics.Command(PREFIX, "ping").topic, b"{}")
                wait_until(lambda: len(commands) >= 1, 5, "the broadcast command")

                proxy.cut()  # refused again at the reconnect: not said again
                wait_until(lambda: link.reconnects >= 1 and link.connected.is_set(), 10, "back")
                time.sleep(0.3)  # its SUBACK
                assert link.snapshot()["refused_subscriptions"] == [OWN_COMMANDS]

                # The operator mends the ACL; the next connect has everything granted.
                grant = {
                    "commands": [
                        {
                            "command": "addRoleACL",
                            "rolename": f"role-{DEVICE}",
                            "acltype": "subscribePattern",
                            "topic": OWN_COMMANDS,
                            "allow": True,
                        }
                    ]
                }
                operator.publish("$CONTROL/dynamic-security/v1", json.dumps(grant))
                proxy.cut()
                wait_until(lambda: board.get(PROBLEM_KEY) is None, 10, "the problem resolved")
                operator.publish(topics.Command(PREFIX, "ping", device=DEVICE).topic, b"{}")
                # (The broadcast may come twice: a cut can beat its acknowledgement.)
                own = topics.Command(PREFIX, "ping", device=DEVICE)
                wait_until(lambda: own in [c.topic for c in commands], 5, "its own command")
            finally:
                link.stop()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "refused the" in r.getMessage()]
    reason = "Not authorized" if protocol == "5" else "Unspecified error"
    line = (
        f"mqtt: broker 127.0.0.1:{proxy.port} refused the subscription to {OWN_COMMANDS} "
        f"({reason}): its messages never arrive"
    )
    # Once, however many connects it was refused at; and its end, once.
    assert said == [(logging.ERROR, line), (logging.INFO, f"resolved: {line}")], said
    assert link.snapshot()["refused_subscriptions"] == []


def test_a_lower_qos_granted_is_said_once(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent")
    broker = broker_factory(listener_config=["max_qos 0"])
    board = StatusBoard()
    link = MqttLink(link_settings(broker.port), DEVICE, lambda: {}, status=board)
    link.subscribe(BROADCAST, lambda message: None)
    got = threading.Event()
    link.subscribe(OWN_COMMANDS, lambda message: got.set())
    link.start()
    try:
        assert link.connected.wait(10)
        with Probe(broker, client_id="operator") as operator:
            operator.connect()
            operator.publish(topics.Command(PREFIX, "ping", device=DEVICE).topic, b"{}", qos=0)
            assert got.wait(5)  # granted at QoS 0, it still works
    finally:
        link.stop()
    said = lines(caplog, "granted QoS 0")
    assert len(said) == 2 and all("not 1: a message on it is lost" in s for s in said), said
    assert board.get(PROBLEM_KEY) is None
