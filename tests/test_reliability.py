"""Losing nothing: the agent killed with SIGKILL again and again while the broker is away;
everything committed before each kill reaches the broker once it is back."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.agent_helpers import config_text, wait_until
from tests.conftest import ROOT
from tests.mqtt_fixtures import Broker, Subscriber

BODY = """
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = 100

[pipelines.boxes]
source = "pattern"
model = "detector"

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
reconnect_min_s = 0.1
reconnect_max_s = 0.3

[logging]
status_interval_s = 0
"""


def stored_ids(state: Path) -> set[str]:
    db = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT id FROM messages WHERE class='result'")}
    except sqlite3.OperationalError:
        return set()  # the agent has created the file but not yet its table
    finally:
        db.close()


def test_sigkill_while_offline_loses_no_stored_result(tmp_path: Path, broker: Broker) -> None:
    port = broker.port
    broker.stop()
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(config_text(state, BODY.format(port=port)))
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    committed: set[str] = set()
    for _ in range(3):
        proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
        target = len(committed) + 50

        def grew(target: int = target) -> bool:
            return (state / "outbox.db").exists() and len(stored_ids(state)) > target

        wait_until(grew, timeout=30, what="new results committed")
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        committed = stored_ids(state)
    assert len(committed) > 150

    broker.start()
    with Subscriber(broker, "edge/+/results/#") as sub:
        proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)
        try:

            def received() -> set[str]:
                return {json.loads(m.payload)["id"] for m in sub.messages}

            wait_until(lambda: committed <= received(), timeout=60, what="every stored result")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
