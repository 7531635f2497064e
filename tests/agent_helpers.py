"""Shared by the agent tests: a sink that keeps results in memory, configs written to real
TOML files, and waiting for what a running agent does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config.load import load_settings
from edge_agent.payloads import ResultPayload
from tests.conftest import MODELS


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


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.02)


def config_text(state_dir: Path, body: str, groups: tuple[str, ...] = ()) -> str:
    return f"""
[device]
id = "test-device"
state_dir = "{state_dir}"
groups = {list(groups)!r}

[models.digits]
path = "{MODELS / "digits_int8.tflite"}"
threads = 1

[models.detector]
path = "{MODELS / "detector_int8.tflite"}"
threads = 1
{body}
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


def start_online(tmp_path: Path, body: str, groups: tuple[str, ...] = ()) -> Agent:
    """An agent started from `body` written to tmp_path/agent.toml (so set_config can edit
    it), returned once its link is up."""
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", body, groups))
    agent = Agent(load_settings(path), config_path=path)
    agent.start()
    wait_until(lambda: agent.link is not None and agent.link.connected.is_set(), what="online")
    return agent


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
