"""The operator's side of the broker, for `edge-fleet`: one paho connection (MQTT 5 or 3.1.1,
TLS, user name and password), and a fleet request over it: a command published to devices,
a group or everyone, and the replies (and update events) gathered by its request id.

paho's network thread only queues what arrives; the caller's thread takes the messages off
the queue, so nothing here needs a lock beyond paho's acknowledgements."""

from __future__ import annotations

import contextlib
import json
import math
import queue
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.commands.schemas import REQUEST_ID_PATTERN
from edge_agent.errors import UserError
from edge_agent.json_body import canonical
from edge_agent.link import topics
from edge_agent.link.mqtt import no_nagle, quick_ack
from edge_agent.updates.signing import load_private_key, sign_bytes

Protocol = Literal["auto", "5", "3.1.1"]
TargetKind = Literal["device", "group", "all"]

_ACK_TIMEOUT_S = 10.0  # CONNACK, SUBACK, PUBACK: a broker that is up answers far sooner
_KEEPALIVE_S = 30
_UNSUPPORTED_PROTOCOL = 0x84  # CONNACK: the broker does not speak this MQTT version
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN)
_ADDRESS = re.compile(
    r"\[(?P<v6>[^\]]+)\](?::(?P<p6>\d+))?|(?P<host>[^:\[\]/]+)(?::(?P<port>\d+))?"
)
TICK_S = 0.5  # how often a wait with a countdown redraws it
_SEEN = 10_000  # message ids remembered to drop the duplicates at-least-once delivery makes


@dataclass(frozen=True)
class BrokerOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge"
    username: str | None = None
    password: str | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    protocol: Protocol = "auto"  # 5, or 3.1.1 where the broker refuses 5 (NATS, RabbitMQ)
    use_tls: bool = False  # with no file given: the system's CA certificates

    @property
    def tls(self) -> bool:
        return self.use_tls or any(path is not None for path in (self.ca, self.cert, self.key))

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, default_port: int, what: str = "--broker") -> tuple[str, int]:
    """HOST, HOST:PORT, [V6] or [V6]:PORT."""
    match = _ADDRESS.fullmatch(text.strip())
    if match is None:
        raise UserError(f"{what} {text!r}: expected HOST or HOST:PORT ([ADDR]:PORT for IPv6)")
    host = match["v6"] or match["host"]
    port = int(match["p6"] or match["port"] or default_port)
    if not 1 <= port <= 65535:
        raise UserError(f"{what} {text!r}: port {port} is not 1 to 65535")
    return host, port


def check_level(value: str, what: str) -> str:
    """A name that must be exactly one MQTT topic level."""
    if not value or any(c in value for c in "/+#\0"):
        raise UserError(f"{what} {value!r}: must be one topic level (no '/', '+', '#')")
    return value


@dataclass(frozen=True)
class Target:
    """Who a command goes to: some devices by id, the devices of groups, or all of them."""

    kind: TargetKind
    names: tuple[str, ...] = ()

    def command_topics(self, prefix: str, command: str) -> list[tuple[str, str | None]]:
        """(topic, device id when the topic names one device)."""
        if self.kind == "device":
            return [(topics.Command(prefix, command, device=d).topic, d) for d in self.names]
        if self.kind == "group":
            return [(topics.Command(prefix, command, group=g).topic, None) for g in self.names]
        return [(topics.Command(prefix, command).topic, None)]

    @property
    def expected(self) -> set[str] | None:
        """The devices that must answer; None when the broker alone knows who listens."""
        return set(self.names) if self.kind == "device" else None


@dataclass(frozen=True)
class Signer:
    key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def load(cls, path: Path, key_id: str | None) -> Signer:
        # keygen writes ID.pem: the file's stem is the key id unless told otherwise.
        return cls(load_private_key(path), key_id or path.stem)


def new_request_id() -> str:
    return f"fleet-{uuid.uuid4().hex[:16]}"


def command_body(
    fields: dict[str, Any], signer: Signer | None = None, expires_in: float | None = None
) -> dict[str, Any]:
    """The command as published: the caller's fields, a request id unless they give one,
    issued_at, expires_at with `expires_in`, and with a signer a nonce and the signature
    over the canonical body (what the device's dispatcher checks)."""
    body = {key: value for key, value in fields.items() if key != "signature"}
    body.setdefault("request_id", new_request_id())
    request_id = body["request_id"]
    if not isinstance(request_id, str) or _REQUEST_ID.fullmatch(request_id) is None:
        raise UserError(f"request_id {request_id!r}: must match {REQUEST_ID_PATTERN}")
    now = time.time()
    body.setdefault("issued_at", now)
    if expires_in is not None:
        body["expires_at"] = now + expires_in
    if signer is not None:
        body.setdefault("nonce", uuid.uuid4().hex)
        value = sign_bytes(canonical(body), signer.key)
        body["signature"] = {"key_id": signer.key_id, "value": value}
    return body


def json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def use_credentials(client: mqtt.Client, o: BrokerOptions) -> None:
    """The user name, password and TLS of `o` on a paho client not yet connected."""
    if o.username is not None:
        client.username_pw_set(o.username, o.password)
    elif o.password is not None:
        raise UserError("a password needs a user name (--username)")
    if o.tls:
        for flag, path in (("--ca", o.ca), ("--cert", o.cert), ("--key", o.key)):
            if path is not None and not path.is_file():
                raise UserError(f"{flag} {path}: no such file")
        try:
            client.tls_set(
                ca_certs=str(o.ca) if o.ca else None,
                certfile=str(o.cert) if o.cert else None,
                keyfile=str(o.key) if o.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ValueError) as exc:
            raise UserError(f"TLS files (--ca/--cert/--key): {exc}") from None


class FleetClient:
    """A paho client on its own network thread (paho's `loop_start`), reconnecting by
    itself; every subscription is made again after a reconnect, since sessions are clean."""

    def __init__(self, options: BrokerOptions) -> None:
        self.options = options
        self.client_id = f"edge-fleet-{uuid.uuid4().hex[:12]}"
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.on_reconnect: list[Callable[[], None]] = []  # e.g. a ChunkServer's subscribe
        self._subscriptions: list[str] = []
        self._connack = threading.Event()
        self._refusal: str | None = None
        self._ever_connected = False
        self._v5_refused = False  # the broker refused MQTT 5 itself, or closed unanswered
        self._acks: dict[int, list[Any]] = {}
        self._acked = threading.Condition()
        # What this connection speaks: "auto" starts with 5 and falls back at connect.
        self.protocol: Literal["5", "3.1.1"] = "3.1.1" if options.protocol == "3.1.1" else "5"
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        o = self.options
        v5 = self.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else True,
        )
        use_credentials(client, o)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        # A broker with Nagle on waits for our ACK before its next small packet to us.
        client.on_publish = lambda client, *_: quick_ack(client)
        return client

    # Lifecycle ---------------------------------------------------------------------------

    def connect(self, timeout: float = _ACK_TIMEOUT_S) -> FleetClient:
        if self._connack.is_set():
            return self  # a second CONNECT would replace the session under our feet
        o = self.options
        try:
            if self.protocol == "5":
                self.client.connect(o.host, o.port, keepalive=_KEEPALIVE_S, clean_start=True)
            else:
                self.client.connect(o.host, o.port, keepalive=_KEEPALIVE_S)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise UserError(f"broker {o.address}: cannot connect: {exc}") from None
        self.client.loop_start()
        if not self._connack.wait(timeout) or self._refusal is not None:
            why = self._refusal or f"no CONNACK within {timeout:.0f} s"
            self.close()
            if o.protocol == "auto" and self.protocol == "5" and self._v5_refused:
                # NATS answers 0x84; RabbitMQ 3.x closes without a word. Once, in 3.1.1.
                self.protocol = "3.1.1"
                self._connack.clear()
                self._refusal = None
                self._v5_refused = False
                self.client = self._make_client()
                return self.connect(timeout)
            raise UserError(f"broker {o.address}: {why}")
        return self

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> FleetClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # paho's network thread ---------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        quick_ack(client)
        self.messages.put(message)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if not self._ever_connected and not self._connack.is_set():
            # Closed before any CONNACK: what RabbitMQ 3.x does to an MQTT 5 CONNECT.
            self._refusal = "closed the connection without answering the CONNECT"
            self._v5_refused = self.protocol == "5"
            self._connack.set()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            if not self._ever_connected:
                self._refusal = f"refused the connection: {reason}"
                self._v5_refused = reason.value == _UNSUPPORTED_PROTOCOL
                self._connack.set()
            return
        no_nagle(client)  # a command's round trip is a few small messages
        if self._ever_connected:
            if self._subscriptions:
                client.subscribe([(topic, 1) for topic in self._subscriptions])
            for hook in self.on_reconnect:
                hook()
        self._ever_connected = True
        self._connack.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: list[Any], properties: Any
    ) -> None:
        with self._acked:
            self._acks[mid] = codes
            self._acked.notify_all()

    # The caller's thread -----------------------------------------------------------------

    def subscribe(self, *topics: str) -> None:
        """Subscribe (QoS 1) and wait for the SUBACK, so nothing sent after is missed."""
        rc, mid = self.client.subscribe([(topic, 1) for topic in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise UserError(f"broker {self.options.address}: {mqtt.error_string(rc)}")
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._acks, _ACK_TIMEOUT_S):
                raise UserError(f"broker {self.options.address}: no SUBACK for {topics[0]}")
            codes = self._acks.pop(mid)
        for topic, code in zip(topics, codes, strict=False):
            if getattr(code, "is_failure", False):
                raise UserError(f"broker {self.options.address} refused {topic}: {code}")
        self._subscriptions.extend(topics)

    def publish(self, topic: str, payload: bytes, properties: Properties | None = None) -> None:
        """Publish at QoS 1 and wait for the broker to take it."""
        info = self.client.publish(topic, payload, qos=1, properties=properties)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with contextlib.suppress(RuntimeError, ValueError):  # raised when not sent at all
                info.wait_for_publish(_ACK_TIMEOUT_S)
        if not info.is_published():
            why = mqtt.error_string(info.rc) if info.rc else "no PUBACK"
            raise UserError(f"broker {self.options.address}: {topic} not sent: {why}")

    @overload
    def messages_until(
        self, deadline: float | None, quiet: float | None = None, tick: None = None
    ) -> Iterator[mqtt.MQTTMessage]: ...

    @overload
    def messages_until(
        self, deadline: float | None, quiet: float | None = None, *, tick: float
    ) -> Iterator[mqtt.MQTTMessage | None]: ...

    def messages_until(
        self, deadline: float | None, quiet: float | None = None, tick: float | None = None
    ) -> Iterator[mqtt.MQTTMessage | None]:
        """Messages as they come, until `deadline` (monotonic; None: never) or, with
        `quiet`, once one came, until none came for that long (a burst of retained ones).
        With `tick`, None comes in between whenever nothing came for that long."""
        got = False
        while True:
            wait = None if deadline is None else deadline - time.monotonic()
            if quiet is not None and got:
                wait = quiet if wait is None else min(wait, quiet)
            if wait is not None and wait <= 0:
                return
            step = wait if tick is None else tick if wait is None else min(wait, tick)
            try:
                message = self.messages.get(timeout=step)
            except queue.Empty:
                if step is not None and tick is not None and (wait is None or step < wait):
                    yield None  # a tick, not the end
                    continue
                return
            got = True
            yield message


class Seen:
    """Drops a message whose `id` came before (delivery is at least once)."""

    def __init__(self, size: int = _SEEN) -> None:
        self._ids: dict[str, None] = {}
        self._size = size

    def first(self, body: dict[str, Any]) -> bool:
        message_id = body.get("id")
        if not isinstance(message_id, str):
            return True
        if message_id in self._ids:
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._size:
            del self._ids[next(iter(self._ids))]
        return True


class Request:
    """One command sent to a target, and the replies and events that came back for it."""

    def __init__(
        self,
        fleet: FleetClient,
        target: Target,
        command: str,
        body: dict[str, Any],
        expires_in: float | None = None,
    ) -> None:
        self.fleet = fleet
        self.target = target
        self.command = command
        self.body = body
        self.request_id: str = body["request_id"]
        self.expires_in = expires_in
        self.replies: dict[str, dict[str, Any]] = {}  # device -> its first reply
        self.round_trip_ms: dict[str, float] = {}  # device -> publish to its reply
        self._sent: dict[str | None, float] = {}  # topic's device (None: many) -> when
        self._seen = Seen()

    def send(self, *extra_topics: str) -> None:
        prefix = self.fleet.options.prefix
        self.fleet.subscribe(topics.Reply(prefix, topics.ANY, self.request_id).topic, *extra_topics)
        payload = json.dumps(self.body).encode()
        for topic, device in self.target.command_topics(prefix, self.command):
            properties = self._properties(device)
            self._sent.setdefault(device, time.monotonic())
            self.fleet.publish(topic, payload, properties)

    def _properties(self, device: str | None) -> Properties | None:
        if self.fleet.protocol != "5":
            return None  # 3.1.1: devices answer on {prefix}/{device}/reply/{request_id}
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if device is not None:
            # Inside the device's own topic tree, so an ACL that confines each device to
            # {prefix}/{device}/# lets the reply through. A group or broadcast has no topic
            # every device may write, so those answer on their default reply topic.
            props.ResponseTopic = topics.Reply(
                self.fleet.options.prefix, device, self.request_id
            ).topic
            props.CorrelationData = self.request_id.encode()
        if self.expires_in is not None:
            # The broker drops the command, queued for an offline device, once it expired.
            props.MessageExpiryInterval = max(1, math.ceil(self.expires_in))
        return props

    def wait(
        self,
        timeout: float,
        wait_for: int | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        on_reply: Callable[[str, dict[str, Any]], None] | None = None,
        *,
        expected: set[str] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Replies by device, until every expected device answered (the targeted ones by
        default; for a group or all, those the caller knows of), `wait_for` did, the
        timeout passed, or the operator pressed Ctrl-C. `on_tick` is called about every
        `TICK_S` while nothing comes (a countdown on screen)."""
        if expected is None:
            expected = self.target.expected
        deadline = time.monotonic() + timeout
        tick = TICK_S if on_tick is not None else None
        try:
            for message in self.fleet.messages_until(deadline, tick=tick):
                if message is None:
                    if on_tick is not None:
                        on_tick()
                    continue
                self._take(message, on_event, on_reply)
                if expected is not None and expected <= self.replies.keys():
                    break
                if wait_for is not None and len(self.replies) >= wait_for:
                    break
        except KeyboardInterrupt:
            pass
        return self.replies

    def _take(
        self,
        message: mqtt.MQTTMessage,
        on_event: Callable[[str, dict[str, Any]], None] | None,
        on_reply: Callable[[str, dict[str, Any]], None] | None,
    ) -> None:
        body = json_object(bytes(message.payload))
        topic = topics.parse(message.topic)
        if body is None or not isinstance(topic, topics.Reply | topics.Event):
            return
        if not self._seen.first(body):
            return
        device = topic.device
        if isinstance(topic, topics.Reply):
            if self._is_ours(message, body) and device not in self.replies:
                self.replies[device] = body
                sent = self._sent.get(device, self._sent.get(None))
                if sent is not None:
                    self.round_trip_ms[device] = (time.monotonic() - sent) * 1000
                if on_reply is not None:
                    on_reply(device, body)
        elif body.get("request_id") == self.request_id and on_event:
            on_event(device, body)

    def _is_ours(self, message: mqtt.MQTTMessage, body: dict[str, Any]) -> bool:
        correlation = getattr(getattr(message, "properties", None), "CorrelationData", None)
        if correlation is not None:
            return bytes(correlation) == self.request_id.encode()
        return body.get("request_id") == self.request_id
