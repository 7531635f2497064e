"""Kill -9 at each step of a model update, then start again: there is always exactly one
valid active model. A download resumes where it stopped; a version on trial is rolled back."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_agent.fleet.serve import RangeHTTPServer
from edge_agent.updates.store import ModelStore
from tests.agent_helpers import config_text, mqtt_table, pattern_pipeline
from tests.faults import agent_process, stop_agent
from tests.mqtt_fixtures import Broker, Subscriber
from tests.operator import Operator
from tests.update_helpers import Keys, digits_update
from tests.waiting import wait_until

BODY = """
[logging]
status_interval_s = 0

{keys}health_window_s = {window}
download_timeout_s = 2
"""


def write_config(tmp_path: Path, port: int, keys: Keys, window: float) -> Path:
    path = tmp_path / "agent.toml"
    body = pattern_pipeline("digits", "digits") + mqtt_table(port)
    body += BODY.format(keys=keys.config(), window=window)
    path.write_text(config_text(tmp_path / "state", body))
    return path


def running_version(sub: Subscriber) -> str | None:
    """The digits model's version in the latest retained online status."""
    for message in reversed(sub.messages):
        status = json.loads(message.payload)
        if status.get("state") == "online":
            return str(status["models"]["digits"]["version"])
    return None


def wait_online(broker: Broker) -> None:
    """The agent's online status: published after it subscribes, so a command sent from now
    on reaches it (a CONNECT in the broker's log comes before the SUBSCRIBE)."""
    with Subscriber(broker, "edge/test-device/status") as status:
        wait_until(lambda: running_version(status) is not None, 30, "agent online")


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def start_update(operator: Operator, manifest: Any, url: str) -> str:
    return operator.send(
        "update_model", manifest={**manifest.as_dict(), "source": {"kind": "http", "url": url}}
    )


def test_killed_mid_download_resumes_after_restart(
    tmp_path: Path, broker: Broker, keys: Keys
) -> None:
    manifest, folder = digits_update(tmp_path, keys)
    config = write_config(tmp_path, broker.port, keys, window=0.5)
    cut_at = manifest.files["model"].size // 3
    # The first response stops after a third of the model and then hangs: the kill lands
    # mid-download.
    server = RangeHTTPServer(folder, cut_after=cut_at, stall_s=30).start()
    try:
        with Operator(broker) as operator:
            proc = agent_process(config)
            try:
                wait_online(broker)
                start_update(operator, manifest, server.url)
                part = tmp_path / "state" / "downloads" / "digits-1.1.0" / "model.part"
                wait_until(lambda: part.exists() and part.stat().st_size >= cut_at, 30, "a part")
            finally:
                kill(proc)
            server.cut_after = None
            with Subscriber(broker, "edge/test-device/status") as status:
                proc = agent_process(config)
                try:
                    operator.wait_event("committed", timeout=60)
                    wait_until(lambda: running_version(status) == "1.1.0", 30, "1.1.0 running")
                finally:
                    stop_agent(proc)
        ranges = [r for path, r in server.requests if path.endswith(".tflite") and r]
        assert ranges and ranges[-1].startswith(f"bytes={cut_at}-"), server.requests
        record = ModelStore(tmp_path / "state" / "models", 3).active("digits")
        assert record is not None and record.version == "1.1.0" and record.state == "committed"
    finally:
        server.stop()


@pytest.mark.parametrize("at_event", ["installed", "activated"])
def test_killed_before_commit_comes_back_on_the_previous_model(
    tmp_path: Path, broker: Broker, keys: Keys, at_event: str
) -> None:
    manifest, folder = digits_update(tmp_path, keys)
    config = write_config(tmp_path, broker.port, keys, window=60)  # never commits in time
    with RangeHTTPServer(folder) as server, Operator(broker) as operator:
        proc = agent_process(config)
        try:
            wait_online(broker)
            start_update(operator, manifest, server.url)
            operator.wait_event(at_event, timeout=60)
        finally:
            kill(proc)
        with Subscriber(broker, "edge/test-device/status") as status:
            proc = agent_process(config)
            try:
                wait_until(lambda: running_version(status) == "1.0.0", 30, "1.0.0 running")
            finally:
                stop_agent(proc)
    store = ModelStore(tmp_path / "state" / "models", 3)
    assert store.active("digits") is None  # the config's file runs: one valid model
    if at_event == "activated":
        operator.wait_event("rolled_back")  # the status can come ahead of the event
        rolled = [e for e in operator.events("digits") if e["stage"] == "rolled_back"]
        assert rolled and "restart" in rolled[-1]["reason"]
