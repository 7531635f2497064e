"""The agent in-process, on real models and real sources: results, the real-time policy,
the optimisations, and live changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config.load import load_settings
from edge_agent.config.settings import AgentSettings
from tests.agent_helpers import ListSink, config_text, start_agent
from tests.conftest import MODELS
from tests.waiting import wait_until


def settings_from(tmp_path: Path, body: str, name: str = "agent.toml") -> AgentSettings:
    path = tmp_path / name
    path.write_text(config_text(tmp_path / "state", body))
    return load_settings(path)


@pytest.fixture
def running(tmp_path: Path):  # type: ignore[no-untyped-def]
    agents: list[Agent] = []

    def start(body: str) -> tuple[Agent, ListSink]:
        sink = ListSink()
        agent = start_agent(tmp_path, body, sink=sink)
        agents.append(agent)
        return agent, sink

    yield start
    for agent in agents:
        agent.stop()


BOXES = """
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
count = {count}
{fps}

[pipelines.boxes]
source = "pattern"
model = "detector"
queue_size = 1000
"""


def test_every_frame_becomes_a_result_with_the_full_payload(running) -> None:  # type: ignore[no-untyped-def]
    agent, sink = running(BOXES.format(count=30, fps=""))
    wait_until(lambda: len(sink.results) == 30, what="30 results")
    results = sink.results
    assert [r.source["index"] for r in results] == list(range(30))
    assert len({r.id for r in results}) == 30
    assert [r.seq for r in results] == sorted(r.seq for r in results)
    first = results[0]
    assert first.device == "test-device" and first.pipeline == "boxes"
    assert first.boot_id == agent.envelope.boot_id
    assert first.model.name == "detector" and len(first.model.sha256) == 64
    assert first.delegate == "cpu"
    assert set(first.latency_ms) >= {"capture", "preprocess", "queue", "infer", "decode"}
    assert any(r.result["detections"] for r in results)
    assert all(d["label"] == "red" for r in results for d in r.result["detections"])
    snapshot = agent.snapshot()["pipelines"]["boxes"]
    assert snapshot["results"] == 30
    assert set(snapshot["latency_ms"]["infer"]) == {"p50", "p95", "p99"}


def test_when_inference_falls_behind_the_oldest_frames_are_dropped(running) -> None:  # type: ignore[no-untyped-def]
    body = """
[models.mobilenet]
path = "{model}"
threads = 1

[sources.noise]
kind = "synthetic"
pattern = "noise"
count = 400

[pipelines.slow]
source = "noise"
model = "mobilenet"
queue_size = 2
""".format(model=MODELS / "mobilenet_v2_int8.tflite")
    agent, sink = running(body)
    hub = agent.hubs["noise"]
    wait_until(lambda: hub.runner.state.value == "ended", timeout=30, what="source end")
    stats = agent.pipelines["slow"].stats
    # Every frame is either inferred or dropped and counted: none vanishes.
    wait_until(lambda: stats.results + stats.dropped == 400, what="every frame accounted for")
    assert stats.frames == 400
    assert stats.dropped > 0
    # The newest frames are the ones kept: the last frame always gets its result.
    assert sink.results[-1].source["index"] == 399


def test_change_gate_skips_unchanged_frames_and_cache_reuses_results(running) -> None:  # type: ignore[no-untyped-def]
    body = """
[sources.still]
kind = "synthetic"
pattern = "bars"
count = 40
fps = 50  # time for the first result to be cached before the next frame

[pipelines.gated]
source = "still"
model = "detector"
queue_size = 100
gate = { enabled = true, threshold = 0.02, max_skip_s = 60 }

[pipelines.cached]
source = "still"
model = "digits"
queue_size = 100
cache = { enabled = true }
"""
    agent, sink = running(body)
    wait_until(lambda: agent.hubs["still"].runner.state.value == "ended", what="source end")
    wait_until(lambda: len(sink.of("cached")) == 40, what="40 cached-pipeline results")
    gated = agent.pipelines["gated"].stats
    assert gated.frames == 40 and gated.skipped == 39 and len(sink.of("gated")) == 1
    cached = agent.pipelines["cached"].stats
    results = sink.of("cached")
    assert cached.cache_hits >= 35  # all but the frames that came before the first result
    assert sum(r.cached for r in results) == cached.cache_hits
    assert all(r.result == results[0].result for r in results)


def test_a_model_shared_by_pipelines_is_loaded_once_and_batched(running) -> None:  # type: ignore[no-untyped-def]
    body = """
[models.mobilenet]
path = "{model}"
threads = 1
batch = {{ max_batch = 4, max_wait_ms = 20 }}

[sources.a]
kind = "synthetic"
pattern = "noise"
count = 40

[sources.b]
kind = "synthetic"
pattern = "moving_box"
count = 40

[pipelines.one]
source = "a"
model = "mobilenet"
queue_size = 100

[pipelines.two]
source = "b"
model = "mobilenet"
queue_size = 100
""".format(model=MODELS / "mobilenet_v2_int8.tflite")
    agent, sink = running(body)
    wait_until(lambda: len(sink.results) == 80, timeout=30, what="80 results")
    assert list(agent.workers) == ["mobilenet"]
    assert agent.workers["mobilenet"].invokes < 80


def test_reload_applies_only_what_changed_and_loses_no_frame(tmp_path: Path) -> None:
    body = """
[sources.steady]
kind = "synthetic"
pattern = "moving_box"
fps = 40
count = 120

[sources.other]
kind = "synthetic"
pattern = "bars"
fps = 20

[pipelines.untouched]
source = "steady"
model = "detector"
queue_size = 1000

[pipelines.changing]
source = "other"
model = "digits"
decode = {{ top_k = 3 }}
"""
    sink = ListSink()
    agent = start_agent(tmp_path, body.format(), sink=sink)
    try:
        untouched = agent.pipelines["untouched"]
        wait_until(lambda: len(sink.of("changing")) > 3, what="first results")
        # A threshold in place, a new model file swapped in, a source changed.
        shutil.copy(MODELS / "digits_int8.tflite", tmp_path / "digits_copy.tflite")
        shutil.copy(MODELS / "digits_int8.json", tmp_path / "digits_copy.json")
        edited = (
            body.format()
            .replace("top_k = 3", "top_k = 1")
            .replace('pattern = "bars"\nfps = 20', 'pattern = "noise"\nfps = 25')
        )
        new = settings_from(tmp_path, edited, "edited.toml")
        new.models["digits"].path = tmp_path / "digits_copy.tflite"
        done = agent.reload(new).done
        assert "model digits swapped, on cpu" in done
        assert "source other restarted" in done
        assert "pipeline changing settings applied" in done
        assert not any("untouched" in d or "steady" in d for d in done)
        assert agent.pipelines["untouched"] is untouched
        wait_until(lambda: len(sink.of("untouched")) == 120, timeout=15, what="all 120 frames")
        # Every frame of the untouched pipeline arrived, in order.
        assert [r.source["index"] for r in sink.of("untouched")] == list(range(120))
        assert untouched.stats.dropped == 0
        wait_until(lambda: len(sink.of("changing")[-1].result["top"]) == 1, what="top_k 1")
    finally:
        agent.stop()


def test_a_model_that_fails_to_load_keeps_the_old_one_running(tmp_path: Path) -> None:
    model = tmp_path / "digits.tflite"
    shutil.copy(MODELS / "digits_int8.tflite", model)
    shutil.copy(MODELS / "digits_int8.json", tmp_path / "digits.json")
    body = """
[sources.still]
kind = "synthetic"
pattern = "bars"
fps = 30

[pipelines.p]
source = "still"
model = "digits"
"""
    digits = f'\n[models.digits]\npath = "{model}"\nthreads = 1\n'
    sink = ListSink()
    agent = start_agent(tmp_path, body, sink=sink, models=digits)
    try:
        wait_until(lambda: len(sink.results) > 2, what="results")
        model.write_bytes(b"TFL3 this is no longer a model")
        assert agent.reload_model_file("digits") is False
        assert "old model keeps running" in agent.last_error
        before = len(sink.results)
        wait_until(lambda: len(sink.results) > before + 3, what="results after the bad file")
        assert agent.workers["digits"].model.info.sha256 == sink.results[0].model.sha256
    finally:
        agent.stop()


def test_a_missing_camera_reconnects_without_stopping_other_pipelines(
    running, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    body = f"""
[sources.gone]
kind = "camera"
device = "{tmp_path / "unplugged.avi"}"
reconnect_min_s = 0.05
reconnect_max_s = 0.2

[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = 30

[pipelines.dead]
source = "gone"
model = "digits"

[pipelines.alive]
source = "pattern"
model = "detector"
"""
    agent, sink = running(body)
    wait_until(lambda: len(sink.of("alive")) > 10, what="results of the healthy pipeline")
    gone = agent.snapshot()["sources"]["gone"]
    assert gone["state"] == "reconnecting"
    assert gone["last_error"]
    wait_until(lambda: agent.hubs["gone"].runner.reconnects >= 2, what="retries")
    assert not sink.of("dead")


def test_config_overrides_the_manifest_preprocessing(running) -> None:  # type: ignore[no-untyped-def]
    body = """
[models.detector.input]
resize = "stretch"

[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
count = 3

[pipelines.boxes]
source = "pattern"
model = "detector"
queue_size = 10
"""
    agent, sink = running(body)
    wait_until(lambda: len(sink.results) == 3, what="3 results")
    assert agent.workers["detector"].model.manifest.input.resize == "stretch"
    # Stretched 640x480 -> 96x96: grid cells map back to 160x120 source pixels.
    boxes = [d["box"] for r in sink.results for d in r.result["detections"]]
    assert boxes and all((b[2] - b[0], b[3] - b[1]) == (160.0, 120.0) for b in boxes)


def test_health_names_a_source_thread_that_died(running) -> None:  # type: ignore[no-untyped-def]
    """What stops the systemd watchdog pings (tests/test_systemd.py has the hung inference):
    a source thread that ended by a bug rather than by its input ending."""
    agent, sink = running(BOXES.format(count=0, fps="fps = 50"))
    wait_until(lambda: len(sink.results) > 2, what="results")
    assert agent.health(stuck_after_s=20) == []

    def a_bug() -> None:
        raise SystemExit("a bug that escapes every handler")

    agent.hubs["pattern"].runner.source.read = a_bug  # type: ignore[method-assign]
    wait_until(lambda: bool(agent.health(stuck_after_s=20)), what="the dead thread noticed")
    assert agent.health(stuck_after_s=20) == ["source pattern: its thread died"]
