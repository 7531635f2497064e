"""The local HTTP endpoint of a real agent, over real sockets: /metrics read with
Prometheus' own parser and checked against the running agent, /api/status, the snapshot,
the page, and the bad cases (wrong or missing token, a taken port, bound beyond localhost
without a token)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import Agent
from edge_agent.config.load import ConfigError, load_settings
from edge_agent.http import auth, handler
from tests.agent_helpers import config_text, pattern_pipeline, start_agent, wait_until

TOKEN = "s3cret-token"


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(
    agent: Agent,
    path: str,
    token: str | None = None,
    source_address: str | None = None,
) -> Reply:
    assert agent.http is not None and agent.http.address is not None
    _, port = agent.http.address
    conn = http.client.HTTPConnection(
        "127.0.0.1",
        port,
        timeout=10,
        source_address=(source_address, 0) if source_address else None,
    )
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return Reply(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def http_table(**keys: Any) -> str:
    lines = ["[http]", "enabled = true", "port = 0"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n" + "\n".join(lines) + "\n"


def started(tmp_path: Path, **keys: Any) -> Agent:
    agent = start_agent(tmp_path, pattern_pipeline("boxes", "detector") + http_table(**keys))
    wait_until(lambda: agent.pipelines["boxes"].stats.results >= 5, 20, "five results")
    return agent


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    agent = started(tmp_path)
    yield agent
    agent.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "http-token"
    path.write_text(TOKEN + "\n")
    return path


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(family: Any, suffix: str = "", **labels: str) -> float:
    found = [
        s.value
        for s in family.samples
        if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (family.name, suffix, labels, family.samples)
    return float(found[0])


def test_metrics_parse_with_prometheus_parser_and_match_the_running_agent(agent: Agent) -> None:
    before = agent.command_status()
    reply = fetch(agent, "/metrics")
    after = agent.command_status()
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    metrics = families(reply.body.decode())

    # Counters lie between the status read just before and just after the scrape.
    for count in ("frames", "results", "dropped", "skipped", "cache_hits", "errors"):
        family = metrics[f"edge_agent_pipeline_{count}"]
        value = sample(family, "_total", pipeline="boxes")
        assert before["pipelines"]["boxes"][count] <= value <= after["pipelines"]["boxes"][count]
    fps = sample(metrics["edge_agent_pipeline_fps"], pipeline="boxes")
    assert abs(fps - after["pipelines"]["boxes"]["fps"]) < 3, (fps, after["pipelines"])
    assert fps > 0
    assert sample(metrics["edge_agent_pipeline_paused"], pipeline="boxes") == 0

    # A real histogram per stage: cumulative buckets ending in +Inf, which is the count.
    latency = metrics["edge_agent_stage_latency_seconds"]
    assert latency.type == "histogram"
    for stage in ("capture", "preprocess", "queue", "infer", "decode", "handoff", "total"):
        buckets = [
            (s.labels["le"], s.value)
            for s in latency.samples
            if s.name.endswith("_bucket") and s.labels["stage"] == stage
        ]
        values = [v for _, v in buckets]
        assert buckets[-1][0] == "+Inf" and values == sorted(values)
        count = sample(latency, "_count", pipeline="boxes", stage=stage)
        assert values[-1] == count
        results = (before["pipelines"]["boxes"]["results"], after["pipelines"]["boxes"]["results"])
        assert results[0] <= count <= results[1]
        assert 0 < sample(latency, "_sum", pipeline="boxes", stage=stage) < count * 5.0
    p50_ms = after["pipelines"]["boxes"]["latency_ms"]["total"]["p50"]
    under = [
        s.value
        for s in latency.samples
        if s.name.endswith("_bucket")
        and s.labels["stage"] == "total"
        and s.labels["le"] != "+Inf"
        and float(s.labels["le"]) >= p50_ms / 1000
    ]
    assert under and under[0] >= count * 0.4  # the bucket above the p50 holds about half

    # The model and its delegate, as the status has them.
    model = after["models"]["detector"]
    info = metrics["edge_agent_model_info"]  # an info metric is a gauge of 1 in this format
    (row,) = [s for s in info.samples if s.labels["model"] == "detector"]
    assert row.name == "edge_agent_model_info" and row.value == 1
    assert {k: row.labels[k] for k in ("name", "version", "sha256", "delegate")} == {
        k: model[k] for k in ("name", "version", "sha256", "delegate")
    }
    agent_info = sample(metrics["edge_agent_info"], version=after["version"])
    assert agent_info == 1

    # The outbox by class and state, and the link (off: no [mqtt]).
    outbox = metrics["edge_agent_outbox_messages"]
    pending = sample(outbox, **{"class": "result", "state": "pending"})
    assert before["outbox"]["by_class"].get("result", {}).get("pending", 0) <= pending
    assert pending <= after["outbox"]["by_class"]["result"]["pending"]
    assert sample(outbox, **{"class": "event", "state": "pending"}) == 0
    assert sample(outbox, **{"class": "", "state": "set_aside"}) == after["outbox"]["set_aside"]
    link = metrics["edge_agent_link_state"]
    assert sample(link, **{"edge_agent_link_state": "disabled"}) == 1
    assert sample(link, **{"edge_agent_link_state": "online"}) == 0
    # Not filling, or no rate known yet, is no sample at all; else the status's figure.
    check_full_in(metrics, before, after)


def check_full_in(metrics: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    """/metrics' time until the outbox is full is the status's, read just before and just
    after the scrape: the rate is recomputed once a second and the room shrinks as results
    come, so it may move by about a second between the two."""
    figures = [s["outbox"]["full_in_s"] for s in (before, after)]
    if figures == [None, None]:
        assert "edge_agent_outbox_full_in_seconds" not in metrics
        return
    value = sample(metrics["edge_agent_outbox_full_in_seconds"])
    known = [f for f in figures if f is not None]
    assert min(known) - 1.5 <= value <= max(known) + 1.5, (value, figures)
    assert value > 0


def test_metrics_say_when_the_outbox_will_be_full_as_the_status_does(tmp_path: Path) -> None:
    """No broker: every result stays pending, the backlog grows, and after the outbox has
    seen it grow for a few seconds (outbox/growth.py MIN_SPAN_S) the time until it is full
    is a number, the same on /metrics as on the status."""
    agent = started(tmp_path)
    try:
        wait_until(
            lambda: agent.command_status()["outbox"]["full_in_s"] is not None,
            30,
            "the status to say when the outbox will be full",
        )
        before = agent.command_status()
        metrics = families(fetch(agent, "/metrics").body.decode())
        after = agent.command_status()
        assert after["outbox"]["full_in_s"] is not None
        check_full_in(metrics, before, after)
        # The room left over the rate the backlog grows at (the disk's bound also counts
        # each row's overhead, so it can only be sooner than bytes alone say).
        outbox = after["outbox"]
        growth = outbox["pending_bytes"] / (time.time() - after["started"])
        assert 0 < outbox["full_in_s"] <= 1.5 * outbox["room_bytes"] / growth, (outbox, growth)
    finally:
        agent.stop()


def test_api_status_is_the_status_with_recent_events(agent: Agent) -> None:
    agent.updater.emit({"kind": "update", "name": "detector", "step": "test"})
    reply = fetch(agent, "/api/status")
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    body = reply.json()
    status = agent.command_status()
    assert set(body) == {*status, "device", "ts", "events"}
    assert body["device"] == "test-device"
    assert body["boot_id"] == status["boot_id"]
    assert body["models"] == status["models"]
    assert set(body["pipelines"]) == {"boxes"}
    assert body["pipelines"]["boxes"]["results"] <= status["pipelines"]["boxes"]["results"]
    assert body["link"] is None
    (event,) = body["events"]
    assert event["step"] == "test" and event["schema"] == "edge-agent/event/1"
    assert abs(body["ts"] - event["ts"]) < 5


def test_answers_are_reused_for_reuse_ms_and_say_when_they_were_made(tmp_path: Path) -> None:
    agent = started(tmp_path, reuse_ms=1000)
    try:
        first, again = (fetch(agent, "/api/status").json() for _ in range(2))
        assert again["ts"] == first["ts"]
        # X-Data-Age says how old the answer was as it left, by the agent's clock alone.
        time.sleep(0.3)
        late = fetch(agent, "/api/status")
        assert late.json()["ts"] == first["ts"]
        assert 0.3 <= float(late.headers["X-Data-Age"]) < 1.0, late.headers
        assert again["pipelines"]["boxes"]["results"] == first["pipelines"]["boxes"]["results"]
        assert fetch(agent, "/metrics").body == fetch(agent, "/metrics").body
        wait_until(lambda: fetch(agent, "/api/status").json()["ts"] > first["ts"], 3, "a new one")
    finally:
        agent.stop()


def test_recent_events_are_bounded(tmp_path: Path) -> None:
    agent = started(tmp_path, recent_events=3)
    try:
        for step in range(5):
            agent.updater.emit({"kind": "update", "step": step})
        steps = [e["step"] for e in fetch(agent, "/api/status").json()["events"]]
        assert steps == [2, 3, 4]
    finally:
        agent.stop()


def test_snapshot_is_the_latest_frame_as_jpeg(agent: Agent) -> None:
    reply = fetch(agent, "/api/snapshot.jpg")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/jpeg"
    assert reply.headers["X-Source"] == "pattern"
    image = cv2.imdecode(np.frombuffer(reply.body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (480, 640, 3)
    hub = agent.hubs["pattern"]
    assert hub.last_frame is not None
    assert abs(float(reply.headers["X-Frame-Time"]) - hub.last_frame.wall_time) < 5
    assert fetch(agent, "/api/snapshot.jpg?source=pattern").status == 200
    missing = fetch(agent, "/api/snapshot.jpg?source=nope")
    assert missing.status == 404 and b"nope" in missing.body


def test_snapshot_has_the_detections_drawn_on_the_frame(tmp_path: Path) -> None:
    """The snapshot is the source's latest frame with the pipeline's last detections drawn
    on it: green box outlines where the raw frame has none, the same picture elsewhere."""
    agent = start_agent(tmp_path, pattern_pipeline("boxes", "detector", fps=4) + http_table())
    try:
        pipeline, hub = agent.pipelines["boxes"], agent.hubs["pattern"]

        def consistent() -> tuple[Any, Any, Reply] | None:
            """A snapshot whose frame and detections stayed the latest while it was made."""
            frame, last = hub.last_frame, pipeline.last_result
            if frame is None or last is None or not last.result.get("detections"):
                return None
            reply = fetch(agent, "/api/snapshot.jpg")
            if hub.last_frame is not frame or pipeline.last_result is not last:
                return None
            assert float(reply.headers["X-Frame-Time"]) == pytest.approx(frame.wall_time, abs=1e-3)
            return frame, last, reply

        found: list[tuple[Any, Any, Reply]] = []

        def taken() -> bool:
            got = consistent()
            if got is not None:
                found.append(got)
            return got is not None

        wait_until(taken, 20, "a snapshot of a frame with detections")
        frame, last, reply = found[0]
        raw = frame.full_image().astype(int)
        shot = cv2.imdecode(np.frombuffer(reply.body, np.uint8), cv2.IMREAD_COLOR).astype(int)
        assert shot.shape == raw.shape
        height, width = raw.shape[:2]
        around = np.zeros((height, width), bool)
        for det in last.result["detections"]:
            x1, y1, x2, y2 = (int(v) for v in det["box"])
            x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
            y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
            # The outline's top and bottom rows: green (BGR 0, 255, 0) in the snapshot,
            # not in the frame.
            for row in (y1, y2):
                drawn, under = shot[row, x1 : x2 + 1], raw[row, x1 : x2 + 1]
                green = (drawn[:, 1] > 180) & (drawn[:, 0] < 90) & (drawn[:, 2] < 90)
                was_green = (under[:, 1] > 180) & (under[:, 0] < 90) & (under[:, 2] < 90)
                assert green.mean() > 0.8 and was_green.mean() < 0.2, (det, green.mean())
            # The outline, its label above it, and the JPEG's ringing beside them.
            around[max(0, y1 - 24) : y2 + 8, max(0, x1 - 8) : x2 + 8] = True
        difference = np.abs(shot - raw).max(axis=2)
        assert np.percentile(difference[~around], 99) < 40, "the rest is the same picture"
    finally:
        agent.stop()


def test_page_and_unknown_paths(agent: Agent) -> None:
    page = fetch(agent, "/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert b'fetch("api/status"' in page.body and b"<script>" in page.body
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert b"http://" not in page.body and b"https://" not in page.body  # nothing from a CDN
    assert fetch(agent, "/nope").status == 404


def test_off_by_default(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", ""))
    settings = load_settings(path)
    assert not settings.http.enabled and settings.http.host == "127.0.0.1"
    assert Agent(settings).http is None


# Tokens ------------------------------------------------------------------------------------


def test_wrong_or_missing_token_is_401_logged_once_per_client_per_minute(
    tmp_path: Path, token_file: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    agent = started(tmp_path, token_file=str(token_file))
    try:
        caplog.set_level(logging.WARNING, logger="edge_agent.http.auth")
        for path in ("/metrics", "/api/status", "/", "/api/snapshot.jpg"):
            missing = fetch(agent, path)
            assert missing.status == 401, path
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            assert fetch(agent, path, token="wrong").status == 401
            assert fetch(agent, path, token=TOKEN).status == 200
        assert fetch(agent, f"/api/status?token={TOKEN}").status == 200  # the page's way
        assert fetch(agent, "/api/status?token=wrong").status == 401

        def refusals() -> list[str]:
            return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

        assert len(refusals()) == 1 and "127.0.0.1" in refusals()[0]
        # Another client address is logged on its own.
        assert fetch(agent, "/metrics", source_address="127.0.0.2").status == 401
        assert fetch(agent, "/metrics", source_address="127.0.0.2").status == 401
        assert len(refusals()) == 2 and "127.0.0.2" in refusals()[1]
        # A minute later, the first client is logged again, once.
        clock[0] += 61
        fetch(agent, "/metrics")
        fetch(agent, "/metrics", token="wrong")
        assert len(refusals()) == 3 and "127.0.0.1" in refusals()[2]
        assert all(TOKEN not in line and "wrong" not in line for line in caplog.messages)
    finally:
        agent.stop()


def test_token_from_a_systemd_credential(tmp_path: Path, monkeypatch: Any) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "http-token").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    agent = started(tmp_path, token_file="credential:http-token", host="0.0.0.0")
    try:
        assert agent.http is not None and agent.http.address is not None
        assert fetch(agent, "/api/status").status == 401
        assert fetch(agent, "/api/status", token=TOKEN).status == 200
    finally:
        agent.stop()


def test_beyond_localhost_without_a_token_the_endpoint_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    agent = started(tmp_path, host="0.0.0.0")
    try:
        assert agent.http is not None and agent.http.address is None
        lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(lines) == 1, caplog.messages
        assert "http.host '0.0.0.0'" in lines[0].getMessage()
        assert "http.token_file" in lines[0].getMessage()
        (problem,) = [p for p in agent.command_status()["problems"] if p["key"] == "http"]
        assert "beyond localhost" in problem["problem"]
        assert agent.health(20) == []
        # The agent runs on.
        done = agent.pipelines["boxes"].stats.results
        wait_until(lambda: agent.pipelines["boxes"].stats.results > done + 3, 10, "results")
    finally:
        agent.stop()


def test_a_missing_token_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    body = http_table(token_file=str(tmp_path / "nowhere"))
    path.write_text(config_text(tmp_path / "state", body))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "http.token_file" in str(caught.value) and "nowhere" in str(caught.value)


# A taken port --------------------------------------------------------------------------------


def test_a_taken_port_is_one_line_and_a_problem_and_the_agent_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    caplog.set_level(logging.INFO)
    try:
        agent = start_agent(
            tmp_path,
            pattern_pipeline("boxes", "detector")
            + http_table().replace("port = 0", f"port = {port}"),
        )
        try:
            assert agent.http is not None and agent.http.address is None
            lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(lines) == 1 and f"port {port}" in lines[0], lines
            (problem,) = [p for p in agent.command_status()["problems"] if p["key"] == "http"]
            assert f"port {port}" in problem["problem"]
            assert agent.health(20) == []
            wait_until(lambda: agent.pipelines["boxes"].stats.results >= 5, 20, "results")
        finally:
            agent.stop()
    finally:
        taken.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_its_thread_is_watched_by_health(tmp_path: Path, monkeypatch: Any) -> None:
    def serve_then_die(self: handler.EndpointServer, poll_interval: float = 0.5) -> None:
        raise RuntimeError("the serving loop broke")

    monkeypatch.setattr(handler.EndpointServer, "serve_forever", serve_then_die)
    agent = started(tmp_path)
    try:
        wait_until(lambda: agent.health(20) == ["http thread died"], 5, "the death noticed")
    finally:
        agent.stop()
