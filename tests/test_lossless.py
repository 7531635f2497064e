"""on_full: a recorded source (a real video file) with a model slower than the file reads
waits for room and loses nothing; drop_oldest drops and counts; a stop while the source's
thread waits for room ends promptly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from tests import blocking_decoder
from tests.agent_helpers import ListSink, start_agent
from tests.conftest import MODELS
from tests.sources_helpers import write_video
from tests.waiting import wait_until

FRAMES = 60

MODELS_TOML = f"""
[models.mobilenet]
path = "{MODELS / "mobilenet_v2_int8.tflite"}"
threads = 1

[models.held]
path = "{MODELS / "digits_int8.tflite"}"
threads = 1
task = "tests.blocking_decoder:BlockingDecoder"
"""


def body(video: Path, model: str, on_full: str | None) -> str:
    setting = f'on_full = "{on_full}"' if on_full else ""
    return f"""
[sources.clip]
kind = "camera"
device = "{video}"

[pipelines.clip]
source = "clip"
model = "{model}"
queue_size = 1
{setting}
"""


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "clip.avi", frames=FRAMES)


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    blocking_decoder.RELEASE.set()
    for agent in started:
        agent.stop()
    blocking_decoder.reset()


def run_clip(tmp_path: Path, agents: list[Agent], text: str) -> tuple[Agent, ListSink]:
    sink = ListSink()
    agent = start_agent(tmp_path, text, sink=sink, models=MODELS_TOML)
    agents.append(agent)
    hub = agent.hubs["clip"]
    wait_until(lambda: hub.runner.state.value == "ended", timeout=30, what="end of the clip")
    stats = agent.pipelines["clip"].stats
    wait_until(lambda: stats.results + stats.dropped == FRAMES, what="every frame accounted")
    return agent, sink


@pytest.mark.parametrize("on_full", [None, "wait"])  # None: the default for a file
def test_a_recording_waits_for_room_and_every_frame_gets_a_result_in_order(
    tmp_path: Path, agents: list[Agent], video: Path, on_full: str | None
) -> None:
    agent, sink = run_clip(tmp_path, agents, body(video, "mobilenet", on_full))
    stats = agent.pipelines["clip"].stats
    assert (stats.frames, stats.results, stats.dropped) == (FRAMES, FRAMES, 0)
    assert [r.source["index"] for r in sink.results] == list(range(FRAMES))


def test_drop_oldest_on_a_recording_drops_and_counts(
    tmp_path: Path, agents: list[Agent], video: Path
) -> None:
    agent, sink = run_clip(tmp_path, agents, body(video, "mobilenet", "drop_oldest"))
    stats = agent.pipelines["clip"].stats
    assert stats.dropped > 0
    assert stats.results == len(sink.results) == FRAMES - stats.dropped
    assert sink.results[-1].source["index"] == FRAMES - 1  # the newest is kept


def test_a_stop_while_the_source_waits_for_room_ends_within_2_s(
    tmp_path: Path, agents: list[Agent], video: Path
) -> None:
    blocking_decoder.reset()
    blocking_decoder.HOLD.set()  # the model's thread holds its first frame: no room again
    sink = ListSink()
    agent = start_agent(tmp_path, body(video, "held", "wait"), sink=sink, models=MODELS_TOML)
    agents.append(agent)
    assert blocking_decoder.HELD.wait(10)
    stats = agent.pipelines["clip"].stats
    # One frame in the decoder, one queued, one waiting for room; one more inferred and
    # waiting for the decoder when the first went to the model's finishing thread.
    wait_until(lambda: stats.frames >= 3, what="the source waiting for room")
    time.sleep(0.3)
    held = stats.frames
    assert held in (3, 4)
    time.sleep(0.3)
    assert stats.frames == held  # it waits: nothing read, nothing dropped
    assert stats.dropped == 0
    runner = agent.hubs["clip"].runner
    started = time.monotonic()
    assert runner.stop(timeout=2.0)
    assert time.monotonic() - started < 2.0
    assert stats.dropped == 1  # the frame it waited with, counted
