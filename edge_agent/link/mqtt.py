"""The broker connection (paho-mqtt 2.x). Reconnects on its own with exponential backoff
and full jitter, so a fleet that loses its broker does not come back in one wave. The Will
marks the device offline; every connect publishes a retained online status.

The link is the only user of its paho client: every publish goes through `publish()`, which
hands each PUBACK to whoever published that message and to no one else, and incoming
messages go, with their parsed topic, to the handlers subscribed to a matching filter.

It adapts to what the broker lacks, saying so in one log line each (docs/brokers.md): a
broker that refuses MQTT 5 is spoken to in MQTT 3.1.1 (`mqtt.protocol = "auto"`), and what
the CONNACK says bounds what is published (capabilities.py). Subscriptions and what the
broker granted of them are subscriptions.py's."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.backoff import Backoff
from edge_agent.config.secrets import secret_path
from edge_agent.errors import SettingError
from edge_agent.link import topics
from edge_agent.link.capabilities import BrokerCapabilities
from edge_agent.link.subscriptions import Handler, Message, Subscriptions

if TYPE_CHECKING:  # settings import the runtime (numpy, OpenCV); edge-fleet uses no_nagle
    from edge_agent.config.settings import MqttSettings, TlsSettings
    from edge_agent.status_board import StatusBoard

__all__ = ["Handler", "LinkOffline", "Message", "MqttLink", "OnAck", "PublishError"]

log = logging.getLogger(__name__)

# CONNACK reason codes that mean "not this protocol version": 0x84 in MQTT 5, and 1 from a
# broker that answers an MQTT 5 CONNECT in 3.1.1 (NATS), which paho reads as 0x84 too.
_UNSUPPORTED_PROTOCOL = 0x84

# QoS 1 messages of the parts other than the sender (status, replies, transfer requests)
# that may wait for their PUBACK beside the sender's full window.
_OTHERS_IN_FLIGHT = 1000

OnAck = Callable[[int], None]
"""Told the PUBACK's reason code (0 delivered, >= 0x80 refused) of one message."""


class PublishError(Exception):
    """The message was not sent (paho refused it): no acknowledgement will come for it."""


class LinkOffline(PublishError):
    """Not connected, or the connection changed while the message was being handed over."""


def _unclaimed(reason: int) -> None:
    """Marks a message id no publisher has claimed yet (see _on_publish)."""


class MqttLink:
    """Owns the paho client and one thread, `mqtt-link`, that connects, runs the network
    loop, and reconnects after a random wait when the connection is gone. `status`, when
    given, is told of what the broker refused that an operator must see (a subscription)."""

    def __init__(
        self,
        settings: MqttSettings,
        device: str,
        online_status: Callable[[], dict[str, Any]],
        status: StatusBoard | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.online_status = online_status
        self.connected = threading.Event()
        self.state = "offline"
        self.last_error = ""
        self.reconnects = 0
        self.offline_since: float | None = time.monotonic()
        self.offline_total_s = 0.0
        # The protocol spoken now: "5" or "3.1.1". With protocol "auto" it starts at "5" and
        # becomes "3.1.1" for good once the broker has shown it does not take MQTT 5.
        self.protocol = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._settled = settings.protocol != "auto"  # no more trying the other version
        self._fell_back = ""  # why MQTT 5 was given up, for the line logged at the connect
        # What the broker's CONNACK allows (MQTT 5; a 3.1.1 broker says nothing).
        self.capabilities = BrokerCapabilities(settings)
        self.subscriptions = Subscriptions(self.capabilities.where, status)
        self._up_since = 0.0  # when the current connection got its CONNACK
        # The client is made again before the next try (its protocol or Will changed), and
        # that try is made at once when the broker refused the Will itself.
        self._remake = False
        self._refused_will = False
        # Told of every connect (True) and loss (False), on paho's network thread.
        self._listeners: tuple[Callable[[bool], None], ...] = ()
        # Who published each message still waiting for its PUBACK (None: nobody listens),
        # and the PUBACKs that came before publish() could say whose they are. Both are
        # emptied at every connection change, with _epoch counting the changes.
        self._acks_lock = threading.Lock()
        self._awaiting: dict[int, OnAck | None] = {}
        self._early: dict[int, int] = {}
        self._epoch = 0
        self._up = False  # CONNACK taken, not lost since: publish() may hand messages over
        self._stop = threading.Event()
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        # Whether the broker answered the current attempt's CONNECT: a connection closed
        # before any CONNACK (a TLS client certificate refused, a half-open link) has no
        # refusal of its own to report.
        self._answered = False
        self._client_window = 0  # paho's own in-flight bound in the current client (0: none)
        self._client = self._make_client()
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)

    @property
    def max_packet_size(self) -> int:
        """The largest message the broker takes, in bytes; 0: no limit known."""
        return self.capabilities.max_packet_size

    def window(self, inflight: int) -> int:
        """QoS 1 messages a publisher may keep unacknowledged: `inflight`, or the broker's
        Receive Maximum when that is lower."""
        return self.capabilities.window(inflight)

    def limit_packet_size(self, size: int, why: str) -> None:
        """See BrokerCapabilities.limit_packet_size."""
        self.capabilities.limit_packet_size(size, why)

    @property
    def status_topic(self) -> str:
        return topics.Status(self.settings.topic_prefix, self.device).topic

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        v5 = self.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=s.client_id or self.device,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            transport=s.transport,
            reconnect_on_failure=False,  # our thread reconnects, with jitter
            # 3.1.1: a persistent session, so commands sent while offline are kept for us.
            clean_session=None if v5 else s.session_expiry_s == 0,
        )
        if s.transport == "websockets":
            client.ws_set_options(path=s.websocket_path)
        if s.username is not None:
            password = s.password.get_secret_value() if s.password is not None else None
            client.username_pw_set(s.username, password)
        if s.tls is not None:
            _use_tls(client, s.tls)
        offline = json.dumps({"state": "offline", "device": self.device}).encode()
        caps = self.capabilities
        client.will_set(
            self.status_topic, offline, qos=min(1, caps.max_qos), retain=caps.retain_available
        )
        # Our sender bounds what is in flight, so paho's own window is off (0): with one
        # set, paho walks every unacknowledged message at each PUBACK, which at a window
        # of 500 cost a fifth of a drain's throughput. A broker's Receive Maximum, once
        # known, bounds it (small windows, little to walk), the other parts' publishes with
        # the sender's. Its queue bound stays, as a guard, with room beside a full window
        # for the other parts' publishes (the status).
        self._client_window = caps.receive_maximum
        client.max_inflight_messages_set(self._client_window)
        client.max_queued_messages_set(s.inflight + _OTHERS_IN_FLIGHT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    # Publishing, subscribing, listening ------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        on_ack: OnAck | None = None,
        properties: Properties | None = None,
    ) -> int:
        """Hands the message to the broker connection and returns its message id.

        `on_ack` is called once with the PUBACK's reason code, on paho's network thread (or
        on this one, when the PUBACK came before this call returned), and never when the
        connection is lost first. Raises LinkOffline when not connected, PublishError when
        paho refuses the message (its queue is full, a topic it cannot publish on).

        A broker whose CONNACK set a Maximum QoS gets the message at that QoS at most (at
        QoS 0, `on_ack` is told 0 once the message is written to the socket), and one without
        retained messages gets it not retained."""
        epoch = self._epoch
        if not self._up:
            raise LinkOffline(f"{topic}: not connected")
        qos = min(qos, self.capabilities.max_qos)
        retain = retain and self.capabilities.retain_available
        if self.protocol != "5":
            properties = None  # MQTT 3.1.1 has no properties
        # Not under our lock: paho calls on_publish holding its own lock, and publish()
        # takes that one.
        try:
            info = self._client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties
            )
        except ValueError as exc:
            raise PublishError(f"{topic}: {exc}") from None
        if info.rc:  # not MQTT_ERR_SUCCESS
            if info.rc == mqtt.MQTT_ERR_NO_CONN:
                raise LinkOffline(f"{topic}: not connected")
            raise PublishError(f"{topic}: {mqtt.error_string(info.rc)}")
        with self._acks_lock:
            # Every message id is claimed, so no PUBACK is left over for a later message
            # that gets the same id once paho's ids wrap around.
            reason = self._early.pop(info.mid, None)
            changed = epoch != self._epoch
            if reason is None:
                # After a change it may have gone out on the new connection: its PUBACK is
                # taken by nobody rather than left for another message.
                self._awaiting[info.mid] = None if changed else on_ack
        if changed:
            raise LinkOffline(f"{topic}: the connection changed while publishing")
        if reason is not None and on_ack is not None:
            on_ack(reason)
        return info.mid

    def holding_acks(self) -> AbstractContextManager[Any]:
        """Held by a thread around a run of publishes: paho's network thread takes this
        lock (paho's own) for every PUBACK and a publish holds it through its socket write,
        so without it the two threads hand the lock over at nearly every message. The
        PUBACKs that come meanwhile wait in the socket and are taken together after the
        run. Hold it briefly (a page of publishes, no sleeping): other publishers and the
        acknowledgements wait on it."""
        lock: AbstractContextManager[Any] = self._client._out_message_mutex
        return lock

    def subscribe(self, topic_filter: str, handler: Handler) -> None:
        """Messages on topics matching `topic_filter` go to `handler` (paho's network
        thread: it must return quickly). Subscribed now when connected, and on every
        connect."""
        self.subscriptions.add(topic_filter, handler)
        if self._up:
            self.subscriptions.subscribe(self._client, [topic_filter])

    def add_connection_listener(self, listener: Callable[[bool], None]) -> None:
        """`listener(True)` after every connect, `listener(False)` when it is lost."""
        self._listeners = (*self._listeners, listener)

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
            acked = threading.Event()
            with contextlib.suppress(PublishError):
                self.publish(
                    self.status_topic,
                    offline.encode(),
                    retain=True,
                    on_ack=lambda reason: acked.set(),
                )
                acked.wait(timeout / 2)
        self._client.disconnect()
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
                if self.protocol == "5":
                    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                    props.SessionExpiryInterval = s.session_expiry_s
                    self._client.connect(
                        s.host,
                        s.port,
                        keepalive=s.keepalive_s,
                        clean_start=s.session_expiry_s == 0,
                        properties=props,
                    )
                else:
                    self._client.connect(s.host, s.port, keepalive=s.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._failed(f"cannot connect to {s.host}:{s.port}: {exc}")
                reached = False
            else:
                # This thread runs the network loop; it returns once the connection is
                # gone (paho's own reconnect is off).
                self._client.loop_forever()
                reached = True
            if self._stop.is_set():
                return
            if self._up_since and time.monotonic() - self._up_since >= s.keepalive_s:
                # The last connection worked for a while: start the waits over. One that a
                # broker drops at once (a publish it refuses by disconnecting) keeps backing off.
                self._backoff.reset()
            self._up_since = 0.0
            # At once: a broker that refused MQTT 5, or our Will, is not an outage.
            retry_now = reached and (self._refused_will or self._switch_protocol())
            self._refused_will = False
            if self._remake:
                self._remake = False
                self._client = self._make_client()
            if retry_now:
                continue
            delay = self._backoff.next()
            self.state = "waiting"
            if self._stop.wait(delay):
                return
            self.reconnects += 1

    def _switch_protocol(self) -> bool:
        """With protocol "auto", before any CONNACK taken: an attempt in one version that the
        broker refused or closed without answering is tried in the other next, a new client
        made for it (`_remake`). True when that next try is MQTT 3.1.1 after MQTT 5 (made at
        once; the way back waits as any retry does, so two versions never alternate in a
        loop)."""
        if self._settled or self._stop.is_set():
            return False
        self.protocol = "3.1.1" if self.protocol == "5" else "5"
        self._remake = True
        return self.protocol == "3.1.1"

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
        s = self.settings
        if reason.is_failure:
            unsupported = self.protocol == "5" and reason.value == _UNSUPPORTED_PROTOCOL
            if self.capabilities.refused_will(reason.value):
                # The Will goes not retained, or at QoS 0, at once.
                self._remake = self._refused_will = True
            elif unsupported and not self._settled:
                self._fell_back = str(reason)  # said once, at the 3.1.1 connect
            elif unsupported:
                self._failed(
                    f"broker {s.host}:{s.port} refused MQTT 5 ({reason}); set "
                    'mqtt.protocol = "auto" or "3.1.1" for it'
                )
            else:
                self._failed(f"broker {s.host}:{s.port} refused the connection: {reason}")
                if not self._settled:
                    # Understood, and refused for another reason: not the protocol version.
                    self._settled = True
            client.disconnect()
            return
        if self.capabilities.learn(properties if self.protocol == "5" else None):
            self._remake = True  # the Will as the broker takes it, from the next connect
        if self.capabilities.receive_maximum != self._client_window:
            # paho's window cannot change on an open connection: the next connect's client
            # has it. Until then the sender leaves room below the limit for the others.
            self._remake = True
        # paho would resend what was unacknowledged at the drop right after this callback;
        # the sender resends those rows from the outbox, so each would go twice.
        client.drop_out_messages()
        self._connection_changed(up=True)
        if self.offline_since is not None:
            self.offline_total_s += time.monotonic() - self.offline_since
            self.offline_since = None
        self.state = "online"
        self.last_error = ""
        self._up_since = time.monotonic()
        if not self._settled:
            self._settled = True  # this version, for every reconnect of this link
            if self.protocol == "3.1.1":
                why = self._fell_back or "closed the MQTT 5 connection without answering"
                log.warning(
                    "mqtt: broker %s:%s does not take MQTT 5 (%s): using MQTT 3.1.1 with it "
                    "(no response topics, no refusal reasons in PUBACKs)",
                    s.host,
                    s.port,
                    why,
                )
        log.info("mqtt: connected to %s:%s (MQTT %s)", s.host, s.port, self.protocol)
        no_nagle(client)
        self.subscriptions.subscribe(client, self.subscriptions.filters())
        self.publish_status()
        self.connected.set()
        for listener in self._listeners:
            listener(True)

    def publish_status(self) -> None:
        """The retained online status, again: on connect, and when something changed that
        an operator should see (a rejected config edit, a model that failed to load)."""
        status = {"state": "online", "device": self.device, **self.online_status()}
        try:
            self.publish(self.status_topic, json.dumps(status).encode(), retain=True)
        except PublishError as exc:
            log.debug("mqtt: status not published (%s); the next connect publishes it", exc)

    def _connection_changed(self, up: bool) -> None:
        """PUBACKs of the old connection never come: forget who waited for them."""
        with self._acks_lock:
            self._epoch += 1
            self._up = up
            self._awaiting.clear()
            self._early.clear()
        self.subscriptions.forget()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        was_up = self.connected.is_set()
        self.connected.clear()
        self._connection_changed(up=False)
        if self.offline_since is None:
            self.offline_since = time.monotonic()
        s = self.settings
        if self._stop.is_set():
            return  # our own disconnect at stop: nothing to warn about
        if not self._settled and self.protocol == "5" and not was_up:
            return  # tried again in MQTT 3.1.1 at once; said if that works
        if was_up:
            self._failed(f"connection to {s.host}:{s.port} lost: {reason}")
            for listener in self._listeners:
                listener(False)
        elif not self._answered and not self._stop.is_set():
            self._failed(
                f"connection to {s.host}:{s.port} closed before the broker answered: {reason}"
            )

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        code = int(getattr(reason, "value", 0) or 0)
        with self._acks_lock:
            on_ack = self._awaiting.pop(mid, _unclaimed)
            if on_ack is _unclaimed:
                self._early[mid] = code  # publish() has not returned yet: it claims this
                return
            last = not self._awaiting
        if last or self.capabilities.receive_maximum:
            # The broker's next packet may be a command: ack at once. While more are in
            # flight our own publishes carry the ACKs, and a drain saves the system call;
            # but not in a window a broker's Receive Maximum keeps small, which fills
            # before the next PUBACKs come: they would wait out the delayed ACK (a drain
            # at a window of 18 on Mosquitto fell from 15,000 to 800 messages/s).
            quick_ack(client)
        if on_ack is not None:
            on_ack(code)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        quick_ack(client)
        self.subscriptions.route(message)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        self.subscriptions.on_suback(mid, list(reason_codes))

    def snapshot(self) -> dict[str, Any]:
        offline = self.offline_total_s
        if self.offline_since is not None:
            offline += time.monotonic() - self.offline_since
        return {
            "state": self.state,
            "reconnects": self.reconnects,
            "seconds_offline": round(offline, 1),
            "last_error": self.last_error,
            # Filters the broker refused: no message on them arrives (subscriptions.py).
            "refused_subscriptions": sorted(self.subscriptions.refused),
        }


def no_nagle(client: mqtt.Client) -> None:
    """TCP_NODELAY on the client's socket: small messages (PUBACKs, commands, chunk
    requests) otherwise wait out Nagle's delay against the peer's delayed ACK, about 40 ms
    a round trip."""
    sock = client.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# Linux only; elsewhere ACKs keep the kernel's own timing.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def quick_ack(client: mqtt.Client) -> None:
    """TCP_QUICKACK on the client's socket, after each packet read: what just arrived is
    acknowledged now, not up to 40 ms later. A broker with Nagle on (Mosquitto's default)
    holds its next small packet to us (a command, a reply, the next PUBACK) until that ACK
    comes. The kernel leaves quick-ack mode on its own, so it is set again each time."""
    if _QUICKACK is None:
        return
    sock = client.socket()
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


def _use_tls(client: mqtt.Client, tls: TlsSettings) -> None:
    """TLS with the configured files; a file that is missing or unusable is a SettingError
    naming its key, so the agent stops with one line instead of a traceback."""
    try:
        keyfile = secret_path(tls.key_file) if tls.key_file else None
    except ValueError as exc:
        raise SettingError(f"mqtt.tls.key_file: {exc}") from None
    files = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": keyfile}
    for key, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            problem = "cannot be read" if path.exists() else "not found"
            raise SettingError(f"mqtt.tls.{key}: {path}: {problem}")
    try:
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(keyfile) if keyfile else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise SettingError(f"mqtt.tls: the certificate or key are not usable: {exc}") from None
