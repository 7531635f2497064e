"""The broker connection (paho-mqtt 2.x). Reconnects on its own with exponential backoff
and full jitter, so a fleet that loses its broker does not come back in one wave. The Will
marks the device offline; every connect publishes a retained online status."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config.secrets import secret_path

if TYPE_CHECKING:  # settings import the runtime (numpy, OpenCV); edge-fleet uses no_nagle
    from edge_agent.config.settings import MqttSettings

log = logging.getLogger(__name__)


class MqttLink:
    """Owns the paho client and one thread, `mqtt-link`, that connects, runs the network
    loop, and reconnects after a random wait when the connection is gone."""

    def __init__(
        self,
        settings: MqttSettings,
        device: str,
        online_status: Callable[[], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.device = device
        self.prefix = f"{settings.topic_prefix}/{device}"
        self.online_status = online_status
        self.connected = threading.Event()
        self.state = "offline"
        self.last_error = ""
        self.reconnects = 0
        self.offline_since: float | None = time.monotonic()
        self.offline_total_s = 0.0
        self.max_packet_size = settings.max_packet_size or 0
        # Called from paho's network thread: (mid, reason code) and connection changes.
        self.on_publish: Callable[[int, int], None] = lambda mid, rc: None
        # Told of every connect (True) and loss (False): the sender, chunk transfers.
        self.connection_listeners: list[Callable[[bool], None]] = []
        # Topics taken (commands, transfers), subscribed on every connect, and where their
        # messages go (paho's network thread).
        self.subscriptions: list[str] = []
        self.on_message: Callable[[mqtt.MQTTMessage], None] = lambda message: None
        self._stop = threading.Event()
        self._attempt = 0
        # Whether the broker answered the current attempt's CONNECT: a connection closed
        # before any CONNACK (a TLS client certificate refused, a half-open link) has no
        # refusal of its own to report.
        self._answered = False
        self.client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)

    @property
    def status_topic(self) -> str:
        return f"{self.prefix}/status"

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        protocol = mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id or self.device,
            protocol=protocol,
            transport=s.transport,
            reconnect_on_failure=False,  # our thread reconnects, with jitter
            # 3.1.1: a persistent session, so commands sent while offline are kept for us.
            clean_session=None if s.protocol == "5" else s.session_expiry_s == 0,
        )
        if s.transport == "websockets":
            client.ws_set_options(path=s.websocket_path)
        if s.username is not None:
            password = s.password.get_secret_value() if s.password is not None else None
            client.username_pw_set(s.username, password)
        if s.tls is not None:
            keyfile = str(secret_path(s.tls.key_file)) if s.tls.key_file else None
            client.tls_set(
                ca_certs=str(s.tls.ca_file) if s.tls.ca_file else None,
                certfile=str(s.tls.cert_file) if s.tls.cert_file else None,
                keyfile=keyfile,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        offline = json.dumps({"state": "offline", "device": self.device}).encode()
        client.will_set(self.status_topic, offline, qos=1, retain=True)
        # Our sender bounds what is in flight; paho must never hold a queue of its own.
        client.max_inflight_messages_set(s.inflight)
        client.max_queued_messages_set(s.inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = lambda client, userdata, message: self.on_message(message)
        return client

    # Lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def dead(self) -> bool:
        """The thread ended without being asked to: an exception escaped the network loop
        (paho raises what a callback raised)."""
        ended = self._thread.ident is not None and not self._thread.is_alive()
        return ended and not self._stop.is_set()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self.connected.is_set():
            offline = json.dumps({"state": "offline", "device": self.device, "reason": "stopped"})
            info = self.client.publish(self.status_topic, offline.encode(), qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout / 2)
        self.client.disconnect()
        self._thread.join(timeout)

    def _run(self) -> None:
        s = self.settings
        while not self._stop.is_set():
            try:
                self.state = "connecting"
                self._answered = False
                # The broker keeps the session (our subscriptions, and the commands sent
                # while we were away) for session_expiry_s. What we published and was not
                # acknowledged is resent from the outbox, not from paho's memory.
                if s.protocol == "5":
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = s.session_expiry_s
                    self.client.connect(
                        s.host,
                        s.port,
                        keepalive=s.keepalive_s,
                        clean_start=s.session_expiry_s == 0,
                        properties=props,
                    )
                else:
                    self.client.connect(s.host, s.port, keepalive=s.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._failed(f"cannot connect to {s.host}:{s.port}: {exc}")
            else:
                # This thread runs the network loop; it returns once the connection is
                # gone (paho's own reconnect is off).
                self.client.loop_forever()
            if self._stop.is_set():
                return
            delay = self._backoff()
            self.state = "waiting"
            if self._stop.wait(delay):
                return
            self.reconnects += 1

    def _backoff(self) -> float:
        s = self.settings
        cap = min(s.reconnect_max_s, s.reconnect_min_s * 2 ** min(self._attempt, 30))
        self._attempt += 1
        return random.uniform(s.reconnect_min_s, max(s.reconnect_min_s, cap))

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            log.warning("mqtt: %s; retrying with backoff", message)
        self.last_error = message
        self.state = "offline"

    # paho's network thread -------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._answered = True
        if reason.is_failure:
            s = self.settings
            self._failed(f"broker {s.host}:{s.port} refused the connection: {reason}")
            client.disconnect()
            return
        if not self.settings.max_packet_size and properties is not None:
            self.max_packet_size = getattr(properties, "MaximumPacketSize", 0) or 0
        # paho would resend what was unacknowledged at the drop right after this callback;
        # the sender resends those rows from the outbox, so each would go twice.
        client.drop_out_messages()
        self._attempt = 0
        if self.offline_since is not None:
            self.offline_total_s += time.monotonic() - self.offline_since
            self.offline_since = None
        self.state = "online"
        self.last_error = ""
        log.info("mqtt: connected to %s:%s", self.settings.host, self.settings.port)
        no_nagle(client)
        if self.subscriptions:
            client.subscribe([(topic, 1) for topic in self.subscriptions])
        self.publish_status()
        self.connected.set()
        for listener in self.connection_listeners:
            listener(True)

    def publish_status(self) -> None:
        """The retained online status, again: on connect, and when something changed that
        an operator should see (a rejected config edit, a model that failed to load)."""
        status = {"state": "online", "device": self.device, **self.online_status()}
        self.client.publish(self.status_topic, json.dumps(status).encode(), qos=1, retain=True)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_up = self.connected.is_set()
        self.connected.clear()
        if self.offline_since is None:
            self.offline_since = time.monotonic()
        s = self.settings
        if was_up:
            self._failed(f"connection to {s.host}:{s.port} lost: {reason}")
            for listener in self.connection_listeners:
                listener(False)
        elif not self._answered and not self._stop.is_set():
            self._failed(
                f"connection to {s.host}:{s.port} closed before the broker answered: {reason}"
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        self.on_publish(mid, int(getattr(reason, "value", 0) or 0))

    def snapshot(self) -> dict[str, Any]:
        offline = self.offline_total_s
        if self.offline_since is not None:
            offline += time.monotonic() - self.offline_since
        return {
            "state": self.state,
            "reconnects": self.reconnects,
            "seconds_offline": round(offline, 1),
            "last_error": self.last_error,
        }


def no_nagle(client: mqtt.Client) -> None:
    """TCP_NODELAY on the client's socket: small messages (PUBACKs, commands, chunk
    requests) otherwise wait out Nagle's delay against the peer's delayed ACK, about 40 ms
    a round trip."""
    sock = client.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
