"""`edge-agent run` imports what its config uses: a sensor-only agent never loads OpenCV, an
agent without [mqtt] never loads paho, and none loads the signing library or urllib until a
signature or a download needs them. Each case runs the real console entry point in a fresh
interpreter to its first result, and that interpreter reports which of those modules it
ever imported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import MODELS
from tests.mqtt_fixtures import Broker

WATCHED = ("cv2", "paho", "cryptography", "urllib.request", "imagesize", "prometheus_client")

# Runs `edge-agent ARGV` as the console script does; at exit it writes the watched modules
# found in sys.modules to REPORT.
SCRIPT = f"""
import atexit, json, os, sys

def report():
    loaded = sorted(m for m in {WATCHED!r} if m in sys.modules)
    with open(os.environ["REPORT"], "w") as f:
        json.dump(loaded, f)

atexit.register(report)
from edge_agent.cli import main
sys.argv[0] = "edge-agent"
sys.exit(main())
"""


def sensor_config(tmp_path: Path, extra: str = "") -> Path:
    samples = tmp_path / "samples.txt"
    rng = np.random.default_rng(0)
    samples.write_text(
        "".join(f"{x:.3f} {y:.3f} {z:.3f}\n" for x, y, z in rng.normal(size=(256, 3)))
    )
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[device]
id = "imports"
state_dir = "{tmp_path / "state"}"
[models.vibration]
path = "{MODELS / "sensor_classifier_int8.tflite"}"
[sources.accel]
kind = "lines"
path = "{samples}"
channels = 3
window = 64
[pipelines.vibration]
source = "accel"
model = "vibration"
[output]
jsonl = "-"
{extra}
"""
    )
    return config


def run_agent(tmp_path: Path, config: Path) -> list[str]:
    """The watched modules `edge-agent run` loaded by the time its first result was out."""
    report = tmp_path / "report.json"
    env = {**os.environ, "REPORT": str(report)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert json.loads(first)["pipeline"] == "vibration", first
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    loaded: list[str] = json.loads(report.read_text())
    return loaded


def test_a_sensor_only_agent_loads_no_opencv_paho_or_signing(tmp_path: Path) -> None:
    assert run_agent(tmp_path, sensor_config(tmp_path)) == []


def test_mqtt_on_loads_paho_and_still_no_opencv(tmp_path: Path, broker: Broker) -> None:
    mqtt = f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n'
    # paho itself imports urllib.request (for its proxy settings).
    assert run_agent(tmp_path, sensor_config(tmp_path, mqtt)) == ["paho", "urllib.request"]
