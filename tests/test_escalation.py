"""Escalation end to end on a real Mosquitto: the device's client (a real link, outbox and
writer) and two reference servers running a bigger digits model with the agent's runtime."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config.settings import (
    ClassPolicy,
    EscalateSettings,
    MqttSettings,
    OutboxSettings,
)
from edge_agent.escalation.client import EscalationClient
from edge_agent.escalation.server import EscalationServer
from edge_agent.link import topics
from edge_agent.link.mqtt import MqttLink
from edge_agent.outbox.store import Outbox
from edge_agent.outbox.writer import OutboxWriter
from edge_agent.payloads import Envelope, ModelRef, ResultPayload
from edge_agent.runtime.backend import select_backend
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.predictor import Predictor
from edge_agent.sources.base import Frame
from tests.agent_helpers import mqtt_table, start_agent
from tests.conftest import MODELS
from tests.mqtt_fixtures import DEVICE, PREFIX, Broker, Subscriber, wait_until

pytest_plugins = ("tests.mqtt_fixtures",)

BIG = MODELS / "digits_slow_int8.tflite"  # heavier than digits_int8; the same task


class Device:
    def __init__(self, broker: Broker, tmp: Path, protocol: str = "auto", ttl_s: float = 3600):
        policy = ClassPolicy(when_full="drop_oldest", ttl_s=ttl_s, max_bytes=10_000_000)
        self.outbox = Outbox(tmp / "outbox.db", OutboxSettings(escalations=policy))
        self.writer = OutboxWriter(self.outbox, PREFIX, DEVICE)
        mqtt_settings = MqttSettings(
            enabled=True,
            host=broker.host,
            port=broker.port,
            protocol=protocol,  # type: ignore[arg-type]
        )
        self.link = MqttLink(mqtt_settings, DEVICE, dict)
        self.envelope = Envelope(DEVICE)
        self.client = EscalationClient(
            self.link, self.outbox, self.writer, self.writer, PREFIX, DEVICE, self.envelope
        )
        backend = select_backend("auto")
        self.predictor = Predictor(load_model(MODELS / "digits_int8.tflite", backend, (), 1))
        self.digits = np.load(MODELS / "data" / "digits_test.npz")

    def start(self) -> Device:
        self.client.start()
        self.link.start()
        return self

    def offer(self, i: int, settings: EscalateSettings) -> ResultPayload:
        x = self.digits["x"][i]
        sample = self.predictor.tensor_sample(x, "test")
        result = self.predictor.predict([sample], [None])[0].result
        payload = ResultPayload(
            id=self.envelope.new_id(),
            seq=self.envelope.next_seq(),
            ts=time.time(),
            boot_id=self.envelope.boot_id,
            device=DEVICE,
            pipeline="digits",
            source={"name": "test", "index": i},
            model=ModelRef(name="digits", version="1", sha256="0"),
            delegate="cpu",
            latency_ms={},
            result=result,
        )
        frame = Frame(np.zeros((8, 8), np.uint8), time.monotonic(), time.time(), i)
        self.client.offer(settings, payload, frame, sample, self.predictor.model.input.quant)
        return payload

    def refined(self) -> list[dict[str, Any]]:
        self.writer.flush()
        rows = self.outbox._db.execute(
            "SELECT payload FROM messages WHERE class='result'"
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        self.client.stop()
        if self.link.state != "offline" or self.link.reconnects or self.link.connected.is_set():
            self.link.stop()
        self.writer.close()
        self.outbox.close()


def server(broker: Broker, name: str, protocol: str = "5") -> EscalationServer:
    predictor = Predictor(load_model(BIG, select_backend("auto"), (), 1))
    s = EscalationServer(
        predictor, broker.host, broker.port, protocol=protocol, client_id=name
    ).start()
    assert s.connected.wait(5)
    return s


TENSOR = EscalateSettings(enabled=True, min_score=0.0, max_score=1.0, send="tensor")


@pytest.fixture
def servers(broker: Broker) -> Iterator[list[EscalationServer]]:
    both = [server(broker, "big-1"), server(broker, "big-2")]
    yield both
    for s in both:
        s.stop()


def test_escalations_go_at_the_band_and_budget_and_are_refined(
    broker: Broker, tmp_path: Path, servers: list[EscalationServer]
) -> None:
    device = Device(broker, tmp_path).start()
    try:
        assert device.link.connected.wait(5)
        band = TENSOR.model_copy(update={"min_score": 0.3, "max_score": 0.999, "max_per_minute": 6})
        offered = [device.offer(i, band) for i in range(40)]
        counts = device.client.counts
        wait_until(lambda: counts.get("answered", 0) == 6, 10)
        assert counts.get("band", 0) == 6 and counts.get("over_budget", 0) >= 1
        wait_until(lambda: len([r for r in device.refined() if "refines" in r]) == 6, 5)
        refined = [r for r in device.refined() if "refines" in r]
        ids = {p.id for p in offered}
        assert all(r["refines"] in ids and r["escalation"] == "answered" for r in refined)
        assert {r["model"]["version"] for r in refined} == {"1.0.0-slow"}
        # The shared subscription split the load between the two servers.
        assert all(s.counts.get("answered", 0) >= 1 for s in servers), [s.counts for s in servers]
    finally:
        device.close()


def test_offline_escalations_wait_then_go(
    broker: Broker, tmp_path: Path, servers: list[EscalationServer]
) -> None:
    device = Device(broker, tmp_path)
    device.client.start()  # the link is not started: offline
    try:
        for i in range(3):
            device.offer(i, TENSOR)
        wait_until(
            lambda: device.outbox.stats()["by_class"].get("escalation", {}).get("pending") == 3, 5
        )
        device.link.start()
        wait_until(lambda: device.client.counts.get("answered", 0) == 3, 10)
        # Acknowledged requests are marked in batches, a moment after their answers.
        wait_until(lambda: device.outbox.stats()["by_class"].get("escalation") is None, 5)
    finally:
        device.close()


def test_offline_escalations_expire_leaving_the_device_result(
    broker: Broker, tmp_path: Path
) -> None:
    device = Device(broker, tmp_path, ttl_s=0.5)
    device.client.start()
    try:
        originals = [device.offer(i, TENSOR) for i in range(2)]
        wait_until(lambda: len([r for r in device.refined() if "refines" in r]) == 2, 5)
        refined = [r for r in device.refined() if "refines" in r]
        assert {r["escalation"] for r in refined} == {"expired"}
        assert sorted(r["result"]["top"][0]["label"] for r in refined) == sorted(
            o.result["top"][0]["label"] for o in originals
        )
    finally:
        device.close()


def test_a_server_that_is_down_gives_timeouts(broker: Broker, tmp_path: Path) -> None:
    device = Device(broker, tmp_path).start()
    try:
        assert device.link.connected.wait(5)
        quick = TENSOR.model_copy(update={"timeout_s": 0.5, "max_per_minute": 3})
        started = time.perf_counter()
        for i in range(10):
            device.offer(i, quick)
        assert time.perf_counter() - started < 1.0  # offers never wait on the network
        wait_until(lambda: device.client.counts.get("timeout", 0) == 3, 5)
        refined = [r for r in device.refined() if "refines" in r]
        assert [r["escalation"] for r in refined] == ["timeout"] * 3
    finally:
        device.close()


def test_mqtt_311_uses_the_reply_topic(broker: Broker, tmp_path: Path) -> None:
    s = server(broker, "big-311", protocol="3.1.1")
    device = Device(broker, tmp_path, protocol="3.1.1").start()
    try:
        assert device.link.connected.wait(5) and device.link.protocol == "3.1.1"
        device.offer(0, TENSOR)
        wait_until(lambda: device.client.counts.get("answered", 0) == 1, 10)
    finally:
        device.close()
        s.stop()


def _probe(broker: Broker) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def test_a_duplicate_request_is_answered_once(broker: Broker, tmp_path: Path) -> None:
    s = server(broker, "big-1")
    device = Device(broker, tmp_path).start()
    probe = _probe(broker)
    answers: list[bytes] = []
    probe.on_message = lambda c, u, m: answers.append(m.payload)
    probe.subscribe("edge/probe/escalated/#", qos=1)
    try:
        assert device.link.connected.wait(5)
        device.offer(0, TENSOR)
        wait_until(lambda: s.counts.get("answered", 0) == 1, 10)
        body = device.outbox._db.execute(
            "SELECT payload FROM messages WHERE class='escalation'"
        ).fetchone()[0]
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = "edge/probe/escalated/digits"
        props.CorrelationData = json.loads(body)["id"].encode()
        probe.publish(topics.Escalate(PREFIX, DEVICE, "digits").topic, body, 1, properties=props)
        wait_until(lambda: s.counts.get("duplicate", 0) == 1, 5)
        time.sleep(0.3)
        assert answers == [] and s.counts.get("answered") == 1
    finally:
        probe.loop_stop()
        device.close()
        s.stop()


def test_bad_answers_are_dropped_with_one_line_each(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(broker, tmp_path).start()
    probe = _probe(broker)
    try:
        assert device.link.connected.wait(5)
        caplog.set_level(logging.WARNING, "edge_agent.escalation")
        topic = topics.Escalated(PREFIX, DEVICE, "digits").topic
        good = {
            "schema": "edge-agent/escalation-answer/1",
            "id": "a",
            "request_id": "nope",
            "ts": 1.0,
            "server": "x",
            "model": {"name": "m", "version": "1", "sha256": "0"},
            "delegate": "cpu",
            "latency_ms": 1.0,
            "result": {},
        }
        probe.publish(topic, json.dumps(good), 1)  # unknown correlation id
        probe.publish(topic, json.dumps({**good, "result": "wrong"}), 1)  # wrong shape
        probe.publish(topic, b"{" + b" " * 70_000 + b"}", 1)  # oversize
        counts = device.client.counts
        wait_until(
            lambda: (
                sum(counts.get(f"dropped_{w}", 0) for w in ("unknown_id", "bad_shape", "oversize"))
                == 3
            ),
            5,
        )
        lines = [r for r in caplog.records if "answer dropped" in r.getMessage()]
        assert len(lines) == 3
        assert [r for r in device.refined() if "refines" in r] == []
    finally:
        probe.loop_stop()
        device.close()


# Below digits_int8's top score (255/256 = 0.9961, which most digits reach): the unsure ones.
UNSURE = 0.9922


def test_an_agents_pipeline_escalates_per_the_band_and_the_refined_results_arrive(
    broker: Broker, tmp_path: Path, servers: list[EscalationServer]
) -> None:
    """A running agent: test digits as PNG files into an image_dir source, digits_int8 in
    the pipeline; the results in the band go to the servers' bigger model and come back as
    records refining them, on the results topic."""
    folder = tmp_path / "digits"
    folder.mkdir()
    digits = np.load(MODELS / "data" / "digits_test.npz")["x"][:60]
    for i, x in enumerate(digits):  # the model reads 0..255 as 0..16
        cv2.imwrite(str(folder / f"{i:03}.png"), np.round(x * 255 / 16).astype(np.uint8))
    body = f"""
[sources.files]
kind = "image_dir"
path = "{folder}"
settle_s = 0

[pipelines.digits]
source = "files"
model = "digits"

[pipelines.digits.escalate]
enabled = true
min_score = 0.0
max_score = {UNSURE}
send = "tensor"
max_per_minute = 1000
""" + mqtt_table(broker.port)
    results = Subscriber(broker, f"{PREFIX}/test-device/results/digits").start()
    agent = start_agent(tmp_path, body, online=True)
    try:

        def received() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            bodies = [json.loads(m.payload) for m in results.messages]
            return [b for b in bodies if "refines" not in b], [b for b in bodies if "refines" in b]

        wait_until(lambda: len(received()[0]) == len(digits), 20, "every digit's result")
        originals, _ = received()
        unsure = {o["id"] for o in originals if o["result"]["top"][0]["score"] <= UNSURE}
        assert 0 < len(unsure) < len(digits) / 2, [o["result"]["top"][0] for o in originals]
        wait_until(lambda: len(received()[1]) == len(unsure), 20, "the refined results")
        refined = received()[1]
        assert {r["refines"] for r in refined} == unsure
        assert {r["escalation"] for r in refined} == {"answered"}
        assert {r["model"]["version"] for r in refined} == {"1.0.0-slow"}
        assert all(r["delegate"].startswith("escalation:") for r in refined)
        counts = agent.snapshot()["escalation"]
        assert counts["offered"] == len(digits)
        assert counts["band"] == counts["sent"] == counts["answered"] == len(unsure)
        assert counts["timeout"] == counts["expired"] == counts["in_flight"] == 0
        assert agent.telemetry.collect()["escalation"] == agent.snapshot()["escalation"]
    finally:
        agent.stop()
        results.close()


def _serve(tmp_path: Path, broker: Broker, *flags: str, wait_s: float = 20) -> tuple[bool, str]:
    """`edge-fleet serve-escalation` as a process: whether it was serving within `wait_s`,
    and its log."""
    import os
    import subprocess
    import sys

    log = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_FLEET_")}
    env["EDGE_FLEET_PROFILES"] = str(tmp_path / "no-profiles.toml")
    fleet = str(Path(sys.executable).parent / "edge-fleet")
    command = [fleet, "serve-escalation", "--model", str(BIG)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--broker", f"127.0.0.1:{broker.port}", *flags],
            stdout=out,
            stderr=out,
            env=env,
        )
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and "serving" not in log.read_text():
            time.sleep(0.1)
        return "serving" in log.read_text(), log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_server_takes_the_fleet_broker_options_tls_included(
    tmp_path: Path, tls_broker: Broker
) -> None:
    assert tls_broker.tls is not None
    serving, text = _serve(tmp_path, tls_broker, "--ca", str(tls_broker.tls.ca_cert))
    assert serving, text
    # Without the CA the broker's certificate is not trusted: never serving.
    plain, text = _serve(tmp_path, tls_broker, wait_s=4)
    assert not plain, text


def test_a_crop_sends_the_top_box_of_the_whole_frame(broker: Broker, tmp_path: Path) -> None:
    """send = "crop": the best detection's box with its margin, cut from the frame as the
    source gave it, as a JPEG whose place in the frame the request names; a result without
    a box sends the whole frame."""
    import base64

    device = Device(broker, tmp_path).start()
    probe = _probe(broker)
    requests: list[dict[str, Any]] = []
    probe.on_message = lambda c, u, m: requests.append(json.loads(m.payload))
    probe.subscribe(topics.Escalate(PREFIX, DEVICE, "cam").topic, qos=1)
    crop = EscalateSettings(enabled=True, min_score=0.0, max_score=1.0, send="crop")
    image = np.zeros((480, 640, 3), np.uint8)
    image[100:300, 200:400] = (0, 0, 255)  # the object the boxes point at
    frame = Frame(image, time.monotonic(), time.time(), 0)
    detections = [
        {"label": "thing", "score": 0.4, "box": [10.0, 10.0, 50.0, 50.0]},
        {"label": "thing", "score": 0.5, "box": [200.0, 100.0, 400.0, 300.0]},
    ]

    def offer(result: dict[str, Any]) -> None:
        payload = ResultPayload(
            id=device.envelope.new_id(),
            seq=device.envelope.next_seq(),
            ts=time.time(),
            boot_id=device.envelope.boot_id,
            device=DEVICE,
            pipeline="cam",
            source={"name": "test", "index": 0},
            model=ModelRef(name="det", version="1", sha256="0"),
            delegate="cpu",
            latency_ms={},
            result=result,
        )
        quant = device.predictor.model.input.quant
        device.client.offer(crop, payload, frame, np.empty(0, np.uint8), quant)

    try:
        assert device.link.connected.wait(5)
        offer({"detections": detections})
        offer({"top": [{"label": "thing", "score": 0.5}]})  # a classifier's: no box
        wait_until(lambda: len(requests) == 2, 10, "both requests")
        boxed, whole = sorted(requests, key=lambda r: r["crop"] is None)
        # The best box (score 0.5) grown by 10% of its size on each side.
        assert boxed["crop"] == [180, 80, 420, 320] and boxed["format"] == "jpeg"
        part = cv2.imdecode(np.frombuffer(base64.b64decode(boxed["data"]), np.uint8), 1)
        assert part.shape == (240, 240, 3) and boxed["shape"] == [240, 240]
        assert part[120, 120, 2] > 200 and part[5, 5, 2] < 50  # the object inside, margin dark
        assert whole["shape"] == [480, 640]
    finally:
        probe.loop_stop()
        device.close()
