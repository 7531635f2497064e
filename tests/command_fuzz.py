"""Property-based fuzzing of command bodies against a running agent: whatever arrives
(well-formed bodies, random JSON and bytes, thousands of levels of nesting, other
encodings and broken UTF-8, NaN and infinite numbers), exactly one reply comes back
(matched by MQTT 5 correlation data), and the agent keeps answering. Used by
tests/test_commands.py (a small sample) and scripts/fuzz_commands.py (10,000 cases)."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections import Counter
from typing import Any

import paho.mqtt.client as mqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.commands.handlers import HANDLERS
from edge_agent.json_body import MAX_DEPTH

FIELDS = [
    "request_id",
    "pipeline",
    "changes",
    "manifest",
    "source",
    "level",
    "name",
    "version",
    "issued_at",
    "expires_at",
    "nonce",
    "signature",
    "quality",
    "x",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
# Mostly well-formed request ids, so bodies get past the envelope to the schemas.
request_ids = st.one_of(
    st.builds(lambda: uuid.uuid4().hex[:16]), st.text(max_size=70), st.integers()
)
bodies = st.one_of(
    st.fixed_dictionaries({"request_id": request_ids}).flatmap(
        lambda base: st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5).map(
            lambda extra: {**extra, **base}
        )
    ),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
)


def _nest(depth: int, shape: str, leaf: bytes) -> bytes:
    """`depth` levels of arrays, objects or both around `leaf`, built as text: json.dumps
    itself recurses per level."""
    opens = {"list": b"[", "dict": b'{"k":', "mixed": b'[{"k":'}[shape]
    closes = {"list": b"]", "dict": b"}", "mixed": b"}]"}[shape]
    return opens * depth + leaf + closes * depth


# Up to thousands of levels, alone or as a command's field; "deep" past the parser's limit
# (once a RecursionError and no reply), "nested" within it.
deep = st.builds(
    lambda depth, shape, field: (
        "deep" if depth + bool(field) > MAX_DEPTH else "nested",
        b'{"request_id": "%s", "%s": %s}'
        % (uuid.uuid4().hex[:16].encode(), field, _nest(depth, shape, b"1"))
        if field
        else _nest(depth, shape, b"1"),
    ),
    st.one_of(st.integers(1, 20_000), st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2)),
    st.sampled_from(["list", "dict", "mixed"]),
    st.sampled_from([b"", b"changes", b"manifest", b"pipeline"]),
)
# Other encodings: json.loads on bytes took UTF-16 and UTF-32 (with or without a byte order
# mark) for the real thing.
other_encoding = st.builds(
    lambda body, encoding: json.dumps(body, ensure_ascii=False).encode(encoding),
    bodies,
    st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]),
)
# A byte sequence no UTF-8 has, put anywhere in an (ASCII) body.
bad_utf8 = st.builds(
    lambda body, at, junk: (lambda raw: raw[:at] + junk + raw[at:])(json.dumps(body).encode()),
    bodies,
    st.integers(0, 200),
    st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x80", b"\xf5\x80\x80\x80"]),
)
# Numbers no comparison refuses: NaN, infinities, and ones that overflow to infinity.
non_finite = st.builds(
    lambda field, number: (
        b'{"request_id": "%s", "%s": %s}' % (uuid.uuid4().hex[:16].encode(), field, number)
    ),
    st.sampled_from([b"issued_at", b"expires_at", b"quality", b"changes"]),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999999", b"-1e400"]),
)
# (kind, payload): the kind is counted, so a run says what it covered. The kind comes from a
# wide integer: hypothesis does not repeat a choice it has made, so a plain sampled_from
# would soon stop drawing kinds with few variants (non_finite has 20).
_KINDS = [
    deep,
    bodies.map(lambda b: ("body", json.dumps(b).encode())),
    json_values.map(lambda v: ("value", json.dumps(v).encode())),
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    other_encoding.map(lambda b: ("other_encoding", b)),
    bad_utf8.map(lambda b: ("bad_utf8", b)),
    non_finite.map(lambda b: ("non_finite", b)),
]
payloads = st.integers(0, 2**31).flatmap(lambda n: _KINDS[n % len(_KINDS)])
# Every command, and names that are none.
names = st.sampled_from([*HANDLERS, "bogus", "x" * 60])


class FuzzClient:
    """Publishes a body with a fresh correlation id and waits for the one reply."""

    def __init__(self, host: str, port: int, prefix: str, device: str) -> None:
        self.prefix, self.device = prefix, device
        self.replies: Counter[bytes] = Counter()
        self.statuses: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()  # payloads sent, by strategy
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.subscribe("fuzz/replies", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        correlation = getattr(msg.properties, "CorrelationData", None)
        with self._cond:
            if correlation is not None:
                self.replies[bytes(correlation)] += 1
                self.statuses[json.loads(msg.payload)["status"]] += 1
            self._cond.notify_all()

    def one_reply(self, name: str, payload: bytes, timeout: float = 10.0) -> None:
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "fuzz/replies"
        props.CorrelationData = correlation
        self.client.publish(f"{self.prefix}/{self.device}/cmd/{name}", payload, 1, properties=props)
        with self._cond:
            if not self._cond.wait_for(lambda: self.replies[correlation] >= 1, timeout):
                raise AssertionError(f"no reply to {name} {payload[:120]!r}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def fuzz(client: FuzzClient, cases: int, seed: int | None = None) -> None:
    """Runs `cases` random commands; raises on the first one left without a reply."""

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=seed is not None,
        suppress_health_check=list(HealthCheck),
    )
    @given(name=names, case=payloads)
    def one(name: str, case: tuple[str, bytes]) -> None:
        kind, payload = case
        client.kinds[kind] += 1
        client.one_reply(name, payload)

    one()


def duplicates(client: FuzzClient) -> dict[bytes, int]:
    return {k: v for k, v in client.replies.items() if v > 1}


def summary(client: FuzzClient) -> dict[str, Any]:
    return {
        "replies": sum(client.replies.values()),
        "by_status": dict(client.statuses),
        "sent_by_kind": dict(client.kinds),
    }
