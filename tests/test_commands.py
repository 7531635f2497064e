"""Fleet commands through a real Mosquitto to a running agent: every command answered,
malformed ones with a reason, repeats answered without acting twice, stale ones refused,
and commands sent while the device was offline run once, in order, when it is back."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import tomllib
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.agent import Agent
from edge_agent.commands.dispatcher import canonical
from edge_agent.updates.signing import generate_keypair, load_private_key, sign_bytes
from tests.agent_helpers import mqtt_table, pattern_pipeline, start_agent
from tests.command_fuzz import FuzzClient, duplicates, fuzz
from tests.mqtt_fixtures import Broker, TcpProxy
from tests.operator import Operator
from tests.waiting import wait_until


def device_body(port: int, extra: str = "") -> str:
    """Config text: a detector pipeline running, connected to `port`, then `extra`. The
    tests start it in group `lobby`."""
    return pattern_pipeline("boxes", "detector") + mqtt_table(port) + extra


@pytest.fixture
def agent(tmp_path: Path, broker: Broker) -> Iterator[Agent]:
    agent = start_agent(tmp_path, device_body(broker.port), groups=("lobby",), online=True)
    yield agent
    agent.stop()


def test_ping_status_and_get_config_answer(agent: Agent, operator: Operator) -> None:
    assert operator.call("ping")["result"]["pong"] is True
    status = operator.call("status")
    assert status["status"] == "ok" and status["device"] == "test-device"
    assert status["result"]["pipelines"]["boxes"]["paused"] is False
    config = operator.call("get_config")["result"]
    assert config["pipelines"]["boxes"]["model"] == "detector"


def test_pause_and_resume_a_pipeline(agent: Agent, operator: Operator) -> None:
    boxes = agent.pipelines["boxes"]
    wait_until(lambda: boxes.stats.results > 3, what="results")
    assert operator.call("pause", pipeline="boxes")["status"] == "ok"
    time.sleep(0.3)  # what was already queued finishes
    paused_at = boxes.stats.results
    time.sleep(0.5)
    assert boxes.stats.results == paused_at
    assert operator.call("resume", pipeline="boxes")["status"] == "ok"
    wait_until(lambda: boxes.stats.results > paused_at + 3, what="results again")
    missing = operator.call("pause", pipeline="nope")
    assert missing["status"] == "error" and "'nope'" in missing["reason"]


def test_set_config_applies_and_keeps_the_change_in_the_overlay_not_the_file(
    agent: Agent, operator: Operator
) -> None:
    assert agent.config_path is not None
    before = agent.config_path.read_bytes()
    reply = operator.call("set_config", changes={"pipelines": {"boxes": {"queue_size": 7}}})
    assert reply["status"] == "ok", reply
    assert "pipeline boxes settings applied" in reply["result"]["applied"]
    assert agent.settings.pipelines["boxes"].queue_size == 7
    assert agent.config_path.read_bytes() == before
    overlay = Path(reply["result"]["overlay"])
    assert overlay == agent.settings.device.state_dir / "remote.toml"
    assert tomllib.loads(overlay.read_text())["pipelines"]["boxes"]["queue_size"] == 7
    assert reply["result"]["overlay_keys"] == ["pipelines.boxes.queue_size"]

    bad = operator.call("set_config", changes={"pipelines": {"boxes": {"queue_size": -1}}})
    assert bad["status"] == "error" and "queue_size" in bad["reason"]
    assert agent.settings.pipelines["boxes"].queue_size == 7  # unchanged, overlay too
    assert tomllib.loads(overlay.read_text())["pipelines"]["boxes"]["queue_size"] == 7

    moved = operator.call("set_config", changes={"mqtt": {"host": "evil.example"}})
    assert moved["status"] == "error" and "mqtt.host" in moved["reason"]
    keys = operator.call("set_config", changes={"updates": {"trusted_keys": {"x": "AAAA"}}})
    assert keys["status"] == "error" and "updates.trusted_keys" in keys["reason"]


def test_a_repeated_request_id_gets_the_first_reply_without_acting_again(
    agent: Agent, operator: Operator
) -> None:
    first = operator.call("restart_pipeline", pipeline="boxes", request_id="restart-1")
    assert first["status"] == "ok"
    pipeline = agent.pipelines["boxes"]
    operator.send("restart_pipeline", pipeline="boxes", request_id="restart-1")
    wait_until(lambda: len(operator.replies("restart-1")) == 2, what="second reply")
    second = operator.replies("restart-1")[1]
    assert second == first  # the same reply, the same reply id
    assert agent.pipelines["boxes"] is pipeline  # not restarted a second time


def test_stale_and_expired_commands_are_refused(agent: Agent, operator: Operator) -> None:
    expired = operator.call("pause", pipeline="boxes", expires_at=time.time() - 5)
    assert expired["status"] == "error" and "expired" in expired["reason"]
    old = operator.call("pause", pipeline="boxes", issued_at=time.time() - 3600)
    assert old["status"] == "error" and "max_age_s" in old["reason"]
    assert not agent.pipelines["boxes"].paused.is_set()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"pipeline": "boxes"}', "request_id"),
        (b'{"request_id": "../x"}', "request_id"),
        (b'{"request_id": "r-1", "pipeline": 5}', "pipeline"),
        (b'{"request_id": "r-2", "pipeline": "boxes", "extra": 1}', "extra"),
        (b'{"request_id": "r-3"}', "pipeline"),
        (b"\xff\xfe", "not UTF-8"),
        # json.loads on bytes would take this for UTF-16 and run it.
        pytest.param(
            '{"request_id": "u-1", "pipeline": "boxes"}'.encode("utf-16"), "not UTF-8", id="utf16"
        ),
        # NaN and infinity pass every age comparison.
        (b'{"request_id": "t-1", "pipeline": "boxes", "issued_at": NaN}', "NaN"),
        (b'{"request_id": "t-2", "pipeline": "boxes", "issued_at": 1e999999}', "out of range"),
        (b'{"request_id": "t-3", "pipeline": "boxes", "expires_at": Infinity}', "Infinity"),
        # The parser recursed once per level: RecursionError, and no reply at all.
        pytest.param(b"[" * 10_000 + b"]" * 10_000, "10000 levels deep", id="deep-list"),
        pytest.param(b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "10000 levels deep", id="deep-obj"),
    ],
)
def test_malformed_commands_get_an_error_reply_and_the_agent_keeps_running(
    agent: Agent, operator: Operator, raw: bytes, reason: str
) -> None:
    operator.send("pause", raw=raw)
    [reply] = operator.wait_for(lambda m: "/reply/" in m.topic)
    body = json.loads(reply.payload)
    assert body["status"] == "error" and reason in body["reason"], body
    assert operator.call("ping")["status"] == "ok"


def test_a_deeply_nested_set_config_gets_one_malformed_reply(
    agent: Agent, operator: Operator
) -> None:
    changes = b'{"pipelines":' * 5_000 + b"1" + b"}" * 5_000  # too deep for json.dumps
    operator.send("set_config", raw=b'{"request_id": "deep", "changes": ' + changes + b"}")
    [reply] = operator.wait_for(lambda m: "/reply/" in m.topic)
    body = json.loads(reply.payload)
    assert body["status"] == "error" and "5001 levels deep, more than 32" in body["reason"], body
    fine = operator.call("set_config", changes={"pipelines": {"boxes": {"queue_size": 5}}})
    assert fine["status"] == "ok", fine  # a real change still nests well within the limit
    assert "queue_size = 5" in Path(fine["result"]["overlay"]).read_text()


def test_unknown_and_oversized_commands_are_refused(agent: Agent, operator: Operator) -> None:
    unknown = operator.call("format_disk")
    assert unknown["status"] == "error" and "unknown command 'format_disk'" in unknown["reason"]
    big = "x" * (agent.settings.commands.max_bytes + 1)
    operator.send("ping", raw=json.dumps({"request_id": "big", "pad": big}).encode())
    # Not parsed at all, so its request id is unknown: the reply goes to reply/invalid.
    [message] = operator.wait_for(lambda m: m.topic == "edge/test-device/reply/invalid")
    reply = json.loads(message.payload)
    assert reply["status"] == "error" and "commands.max_bytes" in reply["reason"]


def test_group_and_broadcast_commands_reach_the_device(agent: Agent, operator: Operator) -> None:
    assert operator.reply(operator.send("ping", to="group:lobby"))["status"] == "ok"
    assert operator.reply(operator.send("ping", to="all"))["status"] == "ok"


def test_mqtt5_response_topic_and_correlation_data(agent: Agent, operator: Operator) -> None:
    operator.subscribe("ops/replies/#")
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = "ops/replies/42"
    props.CorrelationData = b"corr-42"
    body = json.dumps({"request_id": "with-props"}).encode()
    operator.publish("edge/test-device/cmd/ping", body, properties=props)
    [reply] = operator.wait_for(lambda m: m.topic == "ops/replies/42")
    assert json.loads(reply.payload)["request_id"] == "with-props"
    assert reply.properties is not None and reply.properties.CorrelationData == b"corr-42"


def test_snapshot_returns_a_jpeg_with_detections_drawn(agent: Agent, operator: Operator) -> None:
    wait_until(lambda: agent.pipelines["boxes"].last_result is not None, what="a result")
    reply = operator.call("snapshot", source="pattern")
    assert reply["status"] == "ok", reply
    jpeg = base64.b64decode(reply["result"]["jpeg_base64"])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] == reply["result"]["width"]
    assert reply["result"]["detections_drawn"] >= 1


def test_commands_sent_while_offline_run_once_in_order_when_it_is_back(
    tmp_path: Path, broker: Broker, proxy: TcpProxy
) -> None:
    agent = start_agent(tmp_path, device_body(proxy.port), groups=("lobby",), online=True)
    try:
        with Operator(broker) as operator:
            proxy.refuse()  # the device drops off; its session stays on the broker
            proxy.cut()
            wait_until(lambda: not agent.link.connected.is_set(), what="offline")  # type: ignore[union-attr]
            ids = [
                operator.send("pause", pipeline="boxes"),
                operator.send("set_log_level", level="debug"),
                operator.send("ping", expires_at=time.time() + 0.2),  # stale by then
                operator.send("resume", pipeline="boxes"),
            ]
            time.sleep(0.5)
            assert not operator.replies(ids[0])
            proxy.accept()
            replies = [operator.reply(i, timeout=20) for i in (ids[0], ids[1], ids[3])]
            assert [r["status"] for r in replies] == ["ok", "ok", "ok"]
            stale = operator.reply(ids[2])
            assert stale["status"] == "error" and "expired" in stale["reason"]
            order = [json.loads(m.payload)["request_id"] for m in operator.messages]
            assert order.index(ids[0]) < order.index(ids[1]) < order.index(ids[3])
            assert not agent.pipelines["boxes"].paused.is_set()  # paused, then resumed
            time.sleep(0.3)
            assert all(len(operator.replies(i)) == 1 for i in ids)  # each ran once
    finally:
        agent.stop()


def test_signed_commands_verify_and_replays_are_refused(tmp_path: Path, broker: Broker) -> None:
    private_pem, public = generate_keypair()
    key_file = tmp_path / "ops.pem"
    key_file.write_bytes(private_pem)
    key = load_private_key(key_file)
    extra = (
        f'[commands]\nrequire_signed = true\n\n[updates]\ntrusted_keys = {{ ops = "{public}" }}\n'
    )
    body = device_body(broker.port, extra)
    agent = start_agent(tmp_path, body, groups=("lobby",), online=True)

    def signed(request_id: str, nonce: str, **fields: object) -> dict[str, object]:
        body = {"request_id": request_id, "issued_at": time.time(), "nonce": nonce, **fields}
        return {**body, "signature": {"key_id": "ops", "value": sign_bytes(canonical(body), key)}}

    try:
        with Operator(broker) as operator:
            unsigned = operator.call("ping")
            assert unsigned["status"] == "error" and "unsigned" in unsigned["reason"]
            ok = operator.call("ping", **signed("s-1", "n-1"))
            assert ok["status"] == "ok", ok
            replay = operator.call("ping", **{**signed("s-2", "n-1")})
            assert replay["status"] == "error" and "replay" in replay["reason"]
            tampered = signed("s-3", "n-3", pipeline="boxes")
            tampered["pipeline"] = "other"
            bad = operator.call("pause", **tampered)
            assert bad["status"] == "error" and "bad signature" in bad["reason"]
            unknown = signed("s-4", "n-4")
            unknown["signature"] = {"key_id": "stranger", "value": "AAAA"}
            refused = operator.call("ping", **unknown)
            assert refused["status"] == "error" and "unknown key" in refused["reason"]
    finally:
        agent.stop()


def test_random_bodies_always_get_one_reply(agent: Agent, broker: Broker) -> None:
    client = FuzzClient(broker.host, broker.port, "edge", "test-device")
    try:
        fuzz(client, cases=150)
        time.sleep(0.3)  # a second reply to any of them would have come by now
        assert not duplicates(client)
        client.one_reply("ping", b'{"request_id": "still-alive"}')
    finally:
        client.close()
    assert agent.pipelines["boxes"].stats.results > 0
