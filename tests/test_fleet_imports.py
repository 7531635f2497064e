"""`edge-fleet` runs on an operator's laptop: none of its commands may import OpenCV or the
LiteRT interpreter. Each subcommand runs to its end in a fresh
interpreter against a real Mosquitto, and that interpreter reports which of those modules
it ever imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS
from tests.mqtt_fixtures import Broker, Probe

HEAVY = ("cv2", "ai_edge_litert", "tflite_runtime")

# Runs `edge-fleet ARGV` as the console script does; at exit it writes the heavy modules
# found in sys.modules to REPORT.
SCRIPT = f"""
import atexit, json, os, sys

def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {set(HEAVY)!r})
    with open(os.environ["REPORT"], "w") as f:
        json.dump(loaded, f)

atexit.register(report)
from edge_agent.fleet.cli import main
sys.argv[0] = "edge-fleet"
sys.exit(main())
"""


def run_fleet(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """`edge-fleet ARGS` in a fresh interpreter: its exit code and the heavy modules it loaded."""
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "REPORT": str(report)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.is_file(), done.stderr
    return done.returncode, json.loads(report.read_text())


def test_no_fleet_module_imports_opencv_or_litert_at_import(tmp_path: Path) -> None:
    code, loaded = run_fleet(tmp_path, "--help")
    assert code == 0
    assert loaded == []
    # Every module of the package, as `push`, `sign` and the rest import them later.
    modules = [
        *("args", "cli", "client", "golden", "local", "output", "package", "profile"),
        *("push", "remote", "serve"),
    ]
    script = "import importlib, sys\n" + "".join(
        f"importlib.import_module('edge_agent.fleet.{m}')\n" for m in modules
    )
    script += f"print([m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r}])"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr


@pytest.fixture
def key(tmp_path: Path) -> Path:
    code, loaded = run_fleet(tmp_path, "keygen", "--out", str(tmp_path / "keys"))
    assert (code, loaded) == (0, [])
    return tmp_path / "keys" / "ops.pem"


def test_each_subcommand_runs_without_opencv_or_litert(
    tmp_path: Path, broker: Broker, key: Path
) -> None:
    update = tmp_path / "update"
    model = str(MODELS / "digits_int8.tflite")
    code, loaded = run_fleet(
        tmp_path,
        *("sign", model, "--name", "digits", "--version", "1.1.0"),
        *("--key", str(key), "--out", str(update)),
    )
    assert (code, loaded) == (0, [])
    assert (update / "update.json").is_file()

    address = ("--broker", f"{broker.host}:{broker.port}")
    signed = ("--sign-key", str(key))
    absent = ("--device", "absent-device", "--timeout", "0.5")
    for via in ("mqtt", "http"):
        # No device answers: the push goes out and times out (exit 1), its whole path run.
        code, loaded = run_fleet(
            tmp_path, "push", *address, str(update), *absent, *signed, "--via", via
        )
        assert (code, loaded) == (1, []), via
    code, loaded = run_fleet(
        tmp_path, "cmd", *address, "ping", *absent, *signed, "--expires-in", "30"
    )
    assert (code, loaded) == (1, [])
    code, loaded = run_fleet(tmp_path, "devices", *address, "--timeout", "0.5", "--json")
    assert (code, loaded) == (0, [])
    # A retained result is there at subscribe time: the watch prints it and stops.
    with Probe(broker) as device:
        device.connect()
        device.publish("edge/absent-device/results/digits", b'{"label": 1}', retain=True)
    code, loaded = run_fleet(tmp_path, "watch", *address, "--results", "--count", "1")
    assert (code, loaded) == (0, [])
