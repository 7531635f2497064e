"""Shared by the agent tests: a sink that keeps results in memory, configs written to real
TOML files, an agent started from one (start_agent), and waiting for what it does."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config.load import load_settings
from edge_agent.payloads import ResultPayload
from edge_agent.sinks import ResultSink
from tests.conftest import MODELS
from tests.waiting import wait_until as wait_until  # re-exported: tests import it from here


class ListSink:
    def __init__(self) -> None:
        self.results: list[ResultPayload] = []
        self.closed = False
        self._lock = threading.Lock()

    def put(self, payload: ResultPayload, on_durable: Callable[[], None] | None = None) -> None:
        with self._lock:
            self.results.append(payload)
        if on_durable is not None:
            on_durable()  # kept in memory is as durable as a test needs

    def close(self, timeout: float = 5.0) -> None:
        self.closed = True

    def of(self, pipeline: str) -> list[ResultPayload]:
        with self._lock:
            return [r for r in self.results if r.pipeline == pipeline]


# The [models.*] tables config_text puts in unless told otherwise: two of the shipped models.
SHIPPED_MODELS = f"""
[models.digits]
path = "{MODELS / "digits_int8.tflite"}"
threads = 1

[models.detector]
path = "{MODELS / "detector_int8.tflite"}"
threads = 1
"""


def config_text(
    state_dir: Path, body: str, groups: tuple[str, ...] = (), models: str = SHIPPED_MODELS
) -> str:
    """A whole agent.toml: device `test-device` in `groups`, `models` (the [models.*]
    tables), then `body`."""
    return f"""
[device]
id = "test-device"
state_dir = "{state_dir}"
groups = {list(groups)!r}
{models}{body}
"""


def pattern_pipeline(pipeline: str, model: str, fps: int = 30) -> str:
    """Config text: a synthetic moving box at `fps` into `model`."""
    return f"""
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = {fps}

[pipelines.{pipeline}]
source = "pattern"
model = "{model}"
"""


def mqtt_table(port: int) -> str:
    """Config text: a broker on 127.0.0.1 and quick reconnects, for tests."""
    return f"""
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
keepalive_s = 5
"""


def start_agent(
    tmp_path: Path,
    body: str,
    *,
    sink: ResultSink | None = None,
    groups: tuple[str, ...] = (),
    models: str = SHIPPED_MODELS,
    online: bool = False,
    timeout: float = 10.0,
) -> Agent:
    """An agent in this process, started: config_text of `body` (with `groups` and `models`)
    written to tmp_path/agent.toml, its state in tmp_path/state. The file is its
    config_path, so set_config and a reload can edit it. Results go to `sink` if given, else to
    the outbox. `online`: returned once its link is up, within `timeout` seconds (stopped and
    the wait's error raised if it never is)."""
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", body, groups, models))
    agent = Agent(load_settings(path), sink=sink, config_path=path)
    agent.start()
    if online:
        try:
            wait_until(
                lambda: agent.link is not None and agent.link.connected.is_set(),
                timeout,
                "the agent's link online",
            )
        except BaseException:
            agent.stop()
            raise
    return agent


def start_online(tmp_path: Path, body: str, groups: tuple[str, ...] = ()) -> Agent:
    """start_agent(..., online=True), by the name some tests still import."""
    return start_agent(tmp_path, body, groups=groups, online=True)


def sensor_lines_pipeline(model: str, model_path: Path, lines: Path, windows: Any) -> str:
    """Config text: `windows` ([N,64,3]) written to `lines` one sample a line, read back by
    a lines source `imu` into pipeline `imu` on `model`, a window per result."""
    lines.write_text("".join(f"{x:.6f},{y:.6f},{z:.6f}\n" for w in windows for x, y, z in w))
    return f"""
[models.{model}]
path = "{model_path}"
threads = 1

[sources.imu]
kind = "lines"
path = "{lines}"
channels = 3
window = 64
hop = 64

[pipelines.imu]
source = "imu"
model = "{model}"
queue_size = 100
"""
