"""scripts/fleet_sim.py at small scale against a real Mosquitto: 30 real agents in two
worker processes, a broker restart while they produce results (none lost, every device
back), and `edge-fleet cmd --all ping` answered by every one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.mqtt_fixtures import find_mosquitto

sys.path.insert(0, str(ROOT / "scripts"))

import fleet_sim

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


def test_small_fleet_survives_a_broker_restart_and_answers_a_broadcast(tmp_path: Path) -> None:
    options = fleet_sim.Options(
        broker="mosquitto",
        devices=30,
        per_process=15,
        rate=2.0,
        steady_s=1.0,
        down_s=1.0,
        reconnect_max_s=4.0,
        phases=("ping", "restart"),
        push_devices=0,
        state_dir=tmp_path / "fleet",
        timeout_s=20.0,
    )
    lines: list[str] = []
    figures = fleet_sim.run(options, say=lines.append)

    assert figures["ping"]["answered"] == 30, lines
    assert figures["ping"]["ok"] == 30
    restart = figures["restart"]
    assert restart["devices_back"] == 30, lines
    assert restart["all_back_s"] <= 4.0 + 1.0  # within reconnect_max_s of the broker's return
    delivery = restart["delivery"]
    assert delivery["produced"] > 60  # results flowed before, during and after the restart
    assert delivery["lost"] == 0, delivery
    assert delivery["received_unique"] == delivery["produced"]
