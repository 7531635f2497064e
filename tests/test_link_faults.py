"""The whole agent against real Mosquitto brokers that do not simply say yes: TLS and mutual
TLS, password auth (right and wrong), an ACL that refuses one topic, and a half-open
connection. Each test asserts what an operator would notice: results arriving or not, the
link's state and last error, the outbox's counters, the log."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config.load import load_settings
from edge_agent.link.mqtt import MqttLink
from tests.agent_helpers import config_text, wait_until
from tests.mqtt_fixtures import (
    OPERATOR,
    OPERATOR_PASSWORD,
    Broker,
    BrokerFactory,
    Subscriber,
    TcpProxy,
    TlsFiles,
    device_acl,
)

DEVICE = "test-device"  # the device id config_text() writes
DEVICE_PASSWORD = "test-device-secret"

SOURCE = """
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
width = 64
height = 64
count = {count}
fps = {fps}

[pipelines.boxes]
source = "pattern"
model = "detector"
queue_size = 1000

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.2
reconnect_max_s = 1
keepalive_s = {keepalive}
{mqtt}
"""


def make_agent(
    tmp_path: Path,
    port: int,
    count: int,
    *,
    fps: int = 1000,
    keepalive: int = 5,
    mqtt: str = "",
) -> Agent:
    """An agent whose synthetic source makes ``count`` results (0: endless) at ``fps``;
    ``mqtt`` is more of the [mqtt] table (keys, then sub-tables)."""
    body = SOURCE.format(count=count, fps=fps, port=port, keepalive=keepalive, mqtt=mqtt)
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", body))
    return Agent(load_settings(path))


def link_of(agent: Agent) -> MqttLink:
    assert agent.link is not None
    return agent.link


def result_ids(sub: Subscriber) -> set[str]:
    return {json.loads(m.payload)["id"] for m in sub.messages if "/results/" in m.topic}


def operator(broker: Broker, topics: str = "edge/#") -> Subscriber:
    return Subscriber(
        broker, topics, client_id=OPERATOR, username=OPERATOR, password=OPERATOR_PASSWORD
    )


def device_broker(broker_factory: BrokerFactory) -> Broker:
    """Passwords for this device and the operator; the device may write only its own topics."""
    return broker_factory(
        users={DEVICE: DEVICE_PASSWORD, OPERATOR: OPERATOR_PASSWORD},
        acl=device_acl(devices=(DEVICE,)),
    )


def connections_in(broker: Broker) -> int:
    """TCP connections the broker has accepted so far, by its log."""
    return broker.log_text().count("New connection from")


# --- TLS ---------------------------------------------------------------------------------------


def test_results_arrive_over_tls_checked_against_the_ca(
    tmp_path: Path, tls_broker: Broker, tls_files: TlsFiles
) -> None:
    tls = f'[mqtt.tls]\nca_file = "{tls_files.ca_cert}"\n'
    with Subscriber(tls_broker, "edge/+/results/#", tls=tls_files) as sub:
        agent = make_agent(tmp_path, tls_broker.port, count=20, mqtt=tls)
        agent.start()
        try:
            wait_until(lambda: len(result_ids(sub)) == 20, timeout=20, what="20 results")
            assert link_of(agent).snapshot()["state"] == "online"
        finally:
            agent.stop()
    assert "New client connected" in tls_broker.log_text()


def test_results_arrive_over_mutual_tls_with_the_client_certificate(
    tmp_path: Path, mtls_broker: Broker, tls_files: TlsFiles
) -> None:
    tls = (
        "[mqtt.tls]\n"
        f'ca_file = "{tls_files.ca_cert}"\n'
        f'cert_file = "{tls_files.client_cert}"\n'
        f'key_file = "{tls_files.client_key}"\n'
    )
    with Subscriber(mtls_broker, "edge/+/results/#", tls=tls_files, client_cert=True) as sub:
        agent = make_agent(tmp_path, mtls_broker.port, count=20, mqtt=tls)
        agent.start()
        try:
            wait_until(lambda: len(result_ids(sub)) == 20, timeout=20, what="20 results")
        finally:
            agent.stop()


def test_mutual_tls_without_a_client_certificate_says_why(
    tmp_path: Path, mtls_broker: Broker, tls_files: TlsFiles
) -> None:
    # With TLS 1.3 the handshake completes on the client first; the broker then drops the
    # connection before any CONNACK. The operator must still see that the link is failing.
    tls = f'[mqtt.tls]\nca_file = "{tls_files.ca_cert}"\n'
    agent = make_agent(tmp_path, mtls_broker.port, count=5, mqtt=tls)
    agent.start()
    try:
        wait_until(lambda: agent.outbox.stats()["pending"] == 5, timeout=20, what="5 stored")
        wait_until(lambda: connections_in(mtls_broker) >= 2, timeout=10, what="a retry")
        snapshot = link_of(agent).snapshot()
        assert snapshot["state"] != "online"
        assert f"127.0.0.1:{mtls_broker.port}" in snapshot["last_error"]
        assert "before the broker answered" in snapshot["last_error"]
        assert agent.outbox.stats()["pending"] == 5
    finally:
        agent.stop()


# --- passwords ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "credential"])
def test_the_right_password_from_a_file_delivers(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    broker = device_broker(broker_factory)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "mqtt-password").write_text(DEVICE_PASSWORD + "\n")  # as an editor saves it
    if where == "file":
        spec = str(secrets / "mqtt-password")
    else:
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secrets))
        spec = "credential:mqtt-password"
    auth = f'username = "{DEVICE}"\npassword_file = "{spec}"\n'
    with operator(broker) as sub:
        agent = make_agent(tmp_path, broker.port, count=20, mqtt=auth)
        agent.start()
        try:
            wait_until(lambda: len(result_ids(sub)) == 20, timeout=20, what="20 results")
            wait_until(lambda: agent.outbox.stats()["pending"] == 0, what="outbox drained")
        finally:
            agent.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_wrong_password_is_reported_once_and_retried_with_backoff(
    tmp_path: Path,
    broker_factory: BrokerFactory,
    caplog: pytest.LogCaptureFixture,
    protocol: str,
) -> None:
    broker = device_broker(broker_factory)
    caplog.set_level(logging.WARNING, logger="edge_agent.link")
    auth = f'protocol = "{protocol}"\nusername = "{DEVICE}"\npassword = "not-the-password"\n'
    with operator(broker) as sub:
        agent = make_agent(tmp_path, broker.port, count=10, mqtt=auth)
        agent.start()
        try:
            link = link_of(agent)
            wait_until(lambda: "refused" in link.snapshot()["last_error"], what="the refusal")
            wait_until(lambda: agent.outbox.stats()["pending"] == 10, what="10 stored")
            # Count attempts over 3 s: with waits of 0.2 s doubling up to 1 s that is a few,
            # never a tight loop, and more than one: it keeps trying.
            before = connections_in(broker)
            time.sleep(3)
            attempts = connections_in(broker) - before
            assert 2 <= attempts <= 10, attempts
            snapshot = link.snapshot()
            assert snapshot["state"] != "online"
            assert "Not authorized" in snapshot["last_error"]
            assert f"127.0.0.1:{broker.port}" in snapshot["last_error"]
            assert agent.outbox.stats()["pending"] == 10
            # The status line the agent logs every few seconds says why it is offline.
            status = agent.status_line()
            assert "mqtt" in status and "Not authorized" in status, status
            assert "outbox 10 pending" in status, status
        finally:
            agent.stop()
        assert not result_ids(sub)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    # One line for the first refusal, not one per attempt.
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    [line] = refusals
    assert line.levelno == logging.WARNING
    assert f"127.0.0.1:{broker.port}" in line.getMessage()
    assert "Not authorized" in line.getMessage()


# --- ACL ---------------------------------------------------------------------------------------


def test_a_topic_the_acl_refuses_is_set_aside_and_the_rest_still_arrive(
    tmp_path: Path, broker_factory: BrokerFactory
) -> None:
    broker = device_broker(broker_factory)
    forbidden = "edge/other-device/results/boxes"
    auth = f'protocol = "5"\nusername = "{DEVICE}"\npassword = "{DEVICE_PASSWORD}"\n'
    with operator(broker) as sub:
        agent = make_agent(tmp_path, broker.port, count=30, fps=100, mqtt=auth)
        # Queued before the start, so it is among the first rows the sender takes.
        agent.writer.put_message(forbidden, b'{"id": "forbidden-1"}', "result", "forbidden-1")
        agent.start()
        try:
            wait_until(lambda: len(result_ids(sub)) >= 10, timeout=20, what="first results")
            # And one while results are flowing.
            agent.writer.put_message(forbidden, b'{"id": "forbidden-2"}', "result", "forbidden-2")
            assert agent.writer.flush()  # committed before "drained" below can count
            wait_until(lambda: len(result_ids(sub)) == 30, timeout=20, what="30 results")
            wait_until(lambda: agent.outbox.stats()["pending"] == 0, what="outbox drained")
            wait_until(
                lambda: agent.outbox.stats()["drops"].get("result:not_authorized") == 2,
                what="two rows set aside as not_authorized",
            )
            assert agent.outbox.stats()["set_aside"] == 2
            time.sleep(1)  # a loop would publish the refused rows again meanwhile
            assert broker.log_text().count(f"'{forbidden}'") == 2
            assert link_of(agent).snapshot()["reconnects"] == 0
        finally:
            agent.stop()
    assert not [m for m in sub.messages if m.topic == forbidden]
    log = broker.log_text()
    assert log.count(f"Denied PUBLISH from {DEVICE}") == 2


# --- a half-open connection --------------------------------------------------------------------


def test_a_half_open_link_is_noticed_and_nothing_made_meanwhile_is_lost(
    tmp_path: Path, broker: Broker, proxy: TcpProxy
) -> None:
    keepalive = 5  # the shortest the settings allow
    with Subscriber(broker, "edge/+/results/#") as sub:
        agent = make_agent(tmp_path, proxy.port, count=0, fps=20, keepalive=keepalive)
        agent.start()
        try:
            link = link_of(agent)
            wait_until(lambda: len(result_ids(sub)) >= 10, timeout=20, what="first results")
            assert link.state == "online"
            proxy.blackhole()
            # paho pings after one keepalive without news and gives up after another.
            wait_until(lambda: link.state != "online", timeout=4 * keepalive, what="not online")
            assert f"127.0.0.1:{proxy.port} lost" in link.snapshot()["last_error"]
            # Made while the link was half open, and not acknowledged: still in the outbox.
            meanwhile = {row.id for row in agent.outbox.pending(100_000)}
            assert meanwhile
            proxy.restore()
            wait_until(lambda: meanwhile <= result_ids(sub), timeout=4 * keepalive, what="them all")
            wait_until(lambda: link.state == "online", what="online again")
            assert link.snapshot()["reconnects"] >= 1
        finally:
            agent.stop()
