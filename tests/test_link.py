"""Results from the outbox to a real Mosquitto: delivered once acknowledged, kept while the
broker is away, and resent after the connection is cut."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.agent import Agent
from edge_agent.config.load import load_settings
from tests.agent_helpers import config_text, mqtt_table, wait_until
from tests.mqtt_fixtures import Broker, Subscriber, TcpProxy

SOURCE = """
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
count = {count}
fps = {fps}

[pipelines.boxes]
source = "pattern"
model = "detector"
queue_size = 1000
"""


def make_agent(tmp_path: Path, port: int, count: int, fps: int = 0) -> Agent:
    body = SOURCE.format(count=count, fps=fps or 1000) + mqtt_table(port)
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", body))
    return Agent(load_settings(path))


def result_ids(sub: Subscriber) -> list[str]:
    return [json.loads(m.payload)["id"] for m in sub.messages if "/results/" in m.topic]


def test_results_reach_the_broker_with_status_online_then_offline(
    tmp_path: Path, broker: Broker
) -> None:
    with Subscriber(broker, "edge/#") as sub:
        agent = make_agent(tmp_path, broker.port, count=50)
        agent.start()
        try:
            wait_until(lambda: len(result_ids(sub)) >= 50, timeout=20, what="50 results")
            wait_until(lambda: agent.outbox.stats()["pending"] == 0, what="outbox drained")
            status = [m for m in sub.messages if m.topic == "edge/test-device/status"]
            online = json.loads(status[0].payload)
            assert online["state"] == "online" and online["boot_id"] == agent.envelope.boot_id
            assert online["models"]["detector"]["delegate"] == "cpu"
        finally:
            agent.stop()
        wait_until(
            lambda: json.loads(sub.messages[-1].payload).get("state") == "offline",
            what="offline status",
        )
    ids = result_ids(sub)
    assert len(set(ids)) == 50
    first = json.loads(next(m.payload for m in sub.messages if "/results/" in m.topic))
    assert first["pipeline"] == "boxes" and first["device"] == "test-device"


def test_results_made_while_the_broker_is_unreachable_are_delivered_when_it_comes(
    tmp_path: Path, broker: Broker, proxy: TcpProxy
) -> None:
    proxy.refuse()  # connection refused, as from a broker that is down
    with Subscriber(broker, "edge/+/results/#") as sub:
        agent = make_agent(tmp_path, proxy.port, count=200)
        agent.start()
        try:
            wait_until(lambda: agent.outbox.stats()["pending"] == 200, what="200 stored offline")
            assert agent.link is not None and agent.link.state != "online"
            assert not sub.messages
            proxy.accept()
            wait_until(lambda: agent.outbox.stats()["pending"] == 0, timeout=20, what="drained")
            wait_until(lambda: len(set(result_ids(sub))) == 200, what="200 results received")
        finally:
            agent.stop()


def test_a_cut_connection_mid_drain_loses_nothing(
    tmp_path: Path, broker: Broker, proxy: TcpProxy
) -> None:
    with Subscriber(broker, "edge/+/results/#") as sub:
        agent = make_agent(tmp_path, proxy.port, count=3000)
        agent.start()
        try:
            wait_until(lambda: len(result_ids(sub)) > 300, timeout=30, what="first results")
            proxy.cut()
            wait_until(lambda: len(result_ids(sub)) > 1500, timeout=30, what="more after cut")
            proxy.cut()
            wait_until(lambda: agent.outbox.stats()["pending"] == 0, timeout=60, what="drained")
            wait_until(lambda: len(set(result_ids(sub))) == 3000, what="every result")
        finally:
            agent.stop()
    ids = result_ids(sub)
    # Duplicates only from what was in flight at each cut, and what the broker acknowledged
    # in the mqtt.resend_acked_within_s before it (put back, counted by the sender).
    assert agent.sender is not None
    put_back = agent.sender.counts["put_back"]
    assert put_back > 0
    assert len(ids) - 3000 <= 2 * agent.settings.mqtt.inflight + put_back


def test_telemetry_goes_through_the_outbox_with_system_and_pipeline_figures(
    tmp_path: Path, broker: Broker
) -> None:
    with Subscriber(broker, "edge/+/telemetry") as sub:
        agent = make_agent(tmp_path, broker.port, count=30)
        agent.start()
        try:
            wait_until(lambda: agent.pipelines["boxes"].stats.results == 30, what="results")
            agent.telemetry.publish()
            [message] = sub.wait_for(1)
        finally:
            agent.stop()
    body = json.loads(message.payload)
    assert body["schema"] == "edge-agent/telemetry/1" and body["device"] == "test-device"
    assert len(body["system"]["cpu_percent_per_core"]) >= 1
    assert body["system"]["state_disk_free_bytes"] > 0
    assert body["process"]["rss_bytes"] > 10_000_000 and body["process"]["threads"] > 3
    boxes = body["pipelines"]["boxes"]
    assert boxes["results"] == 30 and set(boxes["latency_ms"]["infer"]) == {"p50", "p95", "p99"}
    assert body["models"]["detector"]["delegate"] == "cpu"
    assert body["link"]["state"] == "online"
    assert "pending" in body["outbox"] and "drops" in body["outbox"]


def test_a_model_that_fails_to_load_is_reported_on_the_status_topic(
    tmp_path: Path, broker: Broker
) -> None:
    with Subscriber(broker, "edge/+/status") as sub:
        agent = make_agent(tmp_path, broker.port, count=5)
        agent.start()
        try:
            sub.wait_for(1)
            broken = tmp_path / "broken.tflite"
            broken.write_bytes(b"not a model at all")
            agent.settings.models["detector"].path = broken
            assert agent.reload_model_file("detector") is False
            [status] = sub.wait_for(lambda m: bool(json.loads(m.payload).get("last_error")))
        finally:
            agent.stop()
    body = json.loads(status.payload)
    assert body["state"] == "online"
    assert "old model keeps running" in body["last_error"] and "broken.tflite" in body["last_error"]
