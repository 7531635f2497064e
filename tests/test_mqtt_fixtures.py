"""The MQTT test fixtures against real Mosquitto processes: they work, and they show what
Mosquitto 2.0 and paho-mqtt 2.2 really do on auth, ACL, TLS, oversize and link faults."""

from __future__ import annotations

import os
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from tests.mqtt_fixtures import (
    DEVICE,
    DEVICE_PASSWORD,
    OPERATOR,
    OPERATOR_PASSWORD,
    STARTED_CONFIGS,
    Address,
    Broker,
    BrokerFactory,
    ConnectRefused,
    Probe,
    ProxyFactory,
    Subscriber,
    TcpProxy,
    TlsFiles,
    make_password_file,
    mosquitto_processes,
    property_value,
    publish_properties,
    wait_until,
)

pytest_plugins = ("tests.mqtt_fixtures",)

# MQTT 5 reason codes as paho reports them.
SUCCESS = 0x00
GRANTED_QOS_1 = 0x01
NO_MATCHING_SUBSCRIBERS = 0x10
UNSPECIFIED_ERROR = 0x80  # paho's code for a connection lost without a DISCONNECT packet
NOT_AUTHORIZED = 0x87
KEEP_ALIVE_TIMEOUT = 0x8D
PACKET_TOO_LARGE = 0x95

# A bare MQTT 3.1.1 CONNECT (empty client id, clean session, keepalive 60) and its CONNACK.
RAW_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
RAW_CONNACK = b"\x20\x02\x00\x00"


@pytest.fixture(scope="module", autouse=True)
def first_broker_of_module() -> int:
    """Where this module's brokers start in STARTED_CONFIGS (other modules may run brokers too)."""
    return len(STARTED_CONFIGS)


def device(target: Broker | TcpProxy, **options: Any) -> Subscriber:
    return Subscriber(
        target,
        "#",
        client_id=DEVICE,
        username=DEVICE,
        password=DEVICE_PASSWORD,
        **options,
    ).start()


def operator(target: Broker, topics: str = "#") -> Subscriber:
    return Subscriber(
        target, topics, client_id=OPERATOR, username=OPERATOR, password=OPERATOR_PASSWORD
    ).start()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


# --- plain -------------------------------------------------------------------------------------


def test_plain_broker_publish_subscribe_and_retain(broker: Broker) -> None:
    assert broker.host == "127.0.0.1"
    assert f"listener {broker.port} 127.0.0.1" in broker.config_path.read_text()
    with Subscriber(broker, "edge/#") as sub, Probe(broker) as pub:
        pub.connect()
        props = publish_properties({"k": "v"})
        assert pub.publish("edge/cam-17/results/p", b"\x00\x01", properties=props).value == SUCCESS
        [msg] = sub.wait_for(1)
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
            "edge/cam-17/results/p",
            b"\x00\x01",
            1,
            False,
        )
        assert property_value(msg.properties, "UserProperty") == [("k", "v")]
        pub.publish("edge/cam-17/status", b"online", retain=True)
        sub.wait_for(lambda m: m.topic == "edge/cam-17/status")
    # A new subscriber gets the retained message with the retain flag set.
    with Subscriber(broker, "edge/+/status") as late:
        [status] = late.wait_for(1)
        assert (status.payload, status.retain) == (b"online", True)
    assert "Sending CONNACK" in broker.log_text()


def test_mqtt5_puback_says_no_matching_subscribers(broker: Broker) -> None:
    with Probe(broker) as pub:
        pub.connect()
        assert pub.publish("edge/nobody/listens").value == NO_MATCHING_SUBSCRIBERS


# --- password and ACL --------------------------------------------------------------------------


def test_acl_lets_the_device_publish_only_to_its_own_topics(auth_broker: Broker) -> None:
    with operator(auth_broker) as op, device(auth_broker) as dev:
        denied = ["edge/cam-18/results/p", "edge/all/cmd/reboot", "edge/group/g1/cmd/reboot"]
        for topic in denied:
            # Mosquitto 2.0 answers a denied QoS 1 publish with PUBACK 0x87, connection kept.
            assert dev.publish(topic, b"x").value == NOT_AUTHORIZED
        assert dev.is_connected
        assert dev.publish("edge/cam-17/results/p", b"ok").value == SUCCESS
        # QoS 0 has no acknowledgement: a denied one vanishes.
        dev.publish("edge/cam-18/results/q0", b"x", qos=0)
        dev.publish("edge/cam-17/results/last", b"ok")
        op.wait_for(lambda m: m.topic == "edge/cam-17/results/last")
        assert [m.topic for m in op.messages] == [
            "edge/cam-17/results/p",
            "edge/cam-17/results/last",
        ]
    log = auth_broker.log_text()
    assert "Denied PUBLISH from cam-17" in log
    assert re.search(r"Sending PUBACK to cam-17 \(m\d+, rc135\)", log)


def test_acl_filters_what_the_device_receives(auth_broker: Broker) -> None:
    with operator(auth_broker, "edge/nothing") as op, device(auth_broker) as dev:
        # Subscribing to "#" is granted; the ACL is applied to each message delivered instead.
        assert [rc.value for rc in dev.granted] == [GRANTED_QOS_1]
        sent = [
            "edge/cam-18/cmd/reboot",
            "edge/cam-17/cmd/reboot",
            "edge/group/g1/cmd/reboot",
            "edge/group/g2/cmd/reboot",  # a group the device is not in
            "edge/all/cmd/reboot",
            "edge/cam-18/results/p",
            "edge/cam-17/cmd/last",
        ]
        for topic in sent:
            op.publish(topic, b"cmd")
        dev.wait_for(lambda m: m.topic == "edge/cam-17/cmd/last")
        assert [m.topic for m in dev.messages] == [
            "edge/cam-17/cmd/reboot",
            "edge/group/g1/cmd/reboot",
            "edge/all/cmd/reboot",
            "edge/cam-17/cmd/last",
        ]


def test_acl_denial_is_silent_with_mqtt_311(auth_broker: Broker) -> None:
    with operator(auth_broker) as op:
        dev = Probe(
            auth_broker,
            client_id=DEVICE,
            username=DEVICE,
            password=DEVICE_PASSWORD,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        with dev:
            dev.connect()
            # MQTT 3.1.1 has no reason code in PUBACK: the denied message is acknowledged.
            assert dev.publish("edge/cam-18/results/p", b"x").value == SUCCESS
            dev.publish("edge/cam-17/results/p", b"ok")
        op.wait_for(1)
        assert [m.topic for m in op.messages] == ["edge/cam-17/results/p"]


@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311])
@pytest.mark.parametrize(
    ("username", "password"),
    [(DEVICE, "wrong"), ("nobody", DEVICE_PASSWORD), (None, None)],
    ids=["wrong-password", "unknown-user", "anonymous"],
)
def test_bad_credentials_are_refused_not_authorized(
    auth_broker: Broker,
    protocol: MQTTProtocolVersion,
    username: str | None,
    password: str | None,
) -> None:
    probe = Probe(auth_broker, username=username, password=password, protocol=protocol)
    with pytest.raises(ConnectRefused) as refused:
        probe.connect()
    # Mosquitto 2.0 says "Not authorized" (0x87; 3.1.1 code 5) for all three, never 0x86.
    assert refused.value.reason.value == NOT_AUTHORIZED
    assert not probe.is_connected


def test_password_file_hashed_without_mosquitto_passwd_is_accepted(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    path = make_password_file(tmp_path / "passwd", {DEVICE: DEVICE_PASSWORD}, "python")
    assert path.read_text().startswith(f"{DEVICE}:$7$101$")
    broker = broker_factory(allow_anonymous=False, extra_config=[f"password_file {path}"])
    with Probe(broker, username=DEVICE, password=DEVICE_PASSWORD) as ok:
        assert ok.connect().value == SUCCESS
    with pytest.raises(ConnectRefused):
        Probe(broker, username=DEVICE, password="wrong").connect()


# --- TLS ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_with_generated_certificates(
    tls_broker: Broker, tls_files: TlsFiles, host: str
) -> None:
    assert f"certfile {tls_files.server_cert}" in tls_broker.config_path.read_text()
    target = Address(host, tls_broker.port)
    with Subscriber(target, "edge/#", tls=tls_files) as sub, Probe(target, tls=tls_files) as pub:
        pub.connect()
        pub.publish("edge/cam-17/results/p", b"tls")
        assert sub.wait_for(1)[0].payload == b"tls"
        assert isinstance(pub.client.socket(), ssl.SSLSocket)


def test_tls_client_without_the_ca_fails(tls_broker: Broker, tls_files: TlsFiles) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        Probe(tls_broker, tls=tls_files, trust_ca=False).connect()
    # Plain MQTT on the TLS port: the broker drops it before any CONNACK.
    with pytest.raises(ConnectionError):
        Probe(tls_broker).connect(timeout=5)


def test_tls_client_certificate_required(mtls_broker: Broker, tls_files: TlsFiles) -> None:
    assert "require_certificate true" in mtls_broker.config_path.read_text()
    with Probe(mtls_broker, tls=tls_files, client_cert=True) as ok:
        assert ok.connect().value == SUCCESS
    # With TLS 1.3 the client's handshake completes first; the broker then closes the link.
    no_cert = Probe(mtls_broker, tls=tls_files)
    with pytest.raises(ConnectionError):
        no_cert.connect(timeout=5)
    assert no_cert.disconnects[0].value == UNSPECIFIED_ERROR
    mtls_broker.wait_for_log("peer did not return a certificate")


# --- oversized messages ------------------------------------------------------------------------


def test_max_packet_size_disconnects_an_oversized_publish(broker_factory: BrokerFactory) -> None:
    broker = broker_factory(max_packet_size=1024)
    assert "max_packet_size 1024" in broker.config_path.read_text()
    with Probe(broker, reconnect_delay=(5, 5)) as pub:
        pub.connect()
        # The limit is announced in CONNACK; paho does not enforce it.
        assert property_value(pub.connack_properties[0], "MaximumPacketSize") == 1024
        assert pub.publish("edge/cam-17/results/p", b"x" * 900).value == NO_MATCHING_SUBSCRIBERS
        pub.client.publish("edge/cam-17/results/p", b"x" * 1100, qos=1)
        assert pub.wait_disconnected().value == PACKET_TOO_LARGE
    broker.wait_for_log("disconnected due to oversize packet")


# --- TCP proxy ---------------------------------------------------------------------------------


def test_proxy_forwards_bytes_intact_with_backpressure(proxy_factory: ProxyFactory) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    echo_thread = threading.Thread(target=echo, daemon=True)
    echo_thread.start()
    proxy = proxy_factory(Address(*server.getsockname()), buffer_limit=4096)
    payload = os.urandom(1 << 20)
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(10)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the EOF went through and came back
    echo_thread.join(10)
    server.close()
    wait_until(lambda: proxy.connections == 0, 5, "the proxied connection to close")
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=2)


def test_proxy_cut_refuse_accept(proxy: TcpProxy, broker: Broker) -> None:
    with Subscriber(proxy, "edge/#") as sub, Probe(broker) as pub:
        pub.connect()
        assert proxy.connections == 1
        proxy.cut()
        assert sub.wait_disconnected(1).value == UNSPECIFIED_ERROR
        sub.wait_subscribed(2)  # new connections are still accepted
        assert proxy.accepted == 2

        proxy.refuse()
        proxy.cut()
        sub.wait_disconnected(2)
        sub.wait_connect_failures(1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=2)
        port = proxy.port
        proxy.accept()
        assert proxy.port == port
        sub.wait_subscribed(3)
        pub.publish("edge/cam-17/results/p", b"after")
        assert sub.wait_for(1)[0].payload == b"after"


def test_proxy_blackhole_times_out_keepalive(proxy: TcpProxy, broker: Broker) -> None:
    with Subscriber(proxy, "edge/#", keepalive=2) as sub, Probe(broker) as pub:
        pub.connect()
        proxy.blackhole()
        assert sub.wait_disconnected(1, timeout=15).value == KEEP_ALIVE_TIMEOUT
        assert proxy.connections >= 1  # the proxy itself closed nothing

        # A new connection is accepted, but what it sends waits in the buffers...
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
            raw.sendall(RAW_CONNECT)
            raw.settimeout(0.5)
            with pytest.raises(TimeoutError):
                raw.recv(1)
            # ...and goes through once the link is restored.
            proxy.restore()
            raw.settimeout(5)
            assert recv_exactly(raw, len(RAW_CONNACK)) == RAW_CONNACK

        subscribed = len(sub.subacks)
        sub.wait_subscribed(subscribed + 1, timeout=15)
        pub.publish("edge/cam-17/results/p", b"after")
        assert sub.wait_for(1)[0].payload == b"after"


# --- broker lifecycle --------------------------------------------------------------------------


def test_broker_restart_keeps_the_port(broker: Broker) -> None:
    port, pid = broker.port, broker.pid
    with Subscriber(broker, "edge/#") as sub, Probe(broker) as pub:
        pub.connect()
        broker.restart()
        assert (broker.port, broker.running) == (port, True)
        assert broker.pid != pid
        sub.wait_disconnected(1)
        sub.wait_subscribed(2)
        pub.wait_connected(2)
        pub.publish("edge/cam-17/results/p", b"after")
        assert sub.wait_for(1)[0].payload == b"after"
    assert pid is not None
    assert pid not in mosquitto_processes(broker.config_path)


def test_broker_stop_start_kill_leave_no_process(mosquitto_path: Path, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "lifecycle", binary=mosquitto_path)
    with broker:
        assert mosquitto_processes(broker.config_path) == [broker.pid]
        port = broker.port
        broker.stop()
        assert not broker.running
        assert mosquitto_processes(broker.config_path) == []
        broker.start()
        assert broker.port == port
        broker.kill()
        assert mosquitto_processes(broker.config_path) == []
    assert "mosquitto version 2.0" in broker.log_text()


def test_no_stray_mosquitto_processes(first_broker_of_module: int) -> None:
    # Runs last in this file: every broker started above has been stopped by its fixture.
    configs = dict.fromkeys(STARTED_CONFIGS[first_broker_of_module:])
    stray = {str(c): mosquitto_processes(c) for c in configs}
    assert {c: pids for c, pids in stray.items() if pids} == {}
