"""Losing nothing, against the real agent process and real Mosquitto brokers: SIGKILL again
and again while the broker is away, and a backlog drained through a broker restart and a
cut connection. scripts/fault_inject.py runs the same scenarios with larger counts."""

from __future__ import annotations

from pathlib import Path

from tests.faults import drain_through_faults, kill_while_offline

INFLIGHT = 500  # the default in-flight window: duplicates are bounded by it at each fault


def test_sigkill_while_offline_loses_no_stored_result(tmp_path: Path) -> None:
    report = kill_while_offline(tmp_path, rounds=3)
    assert report.stored > 60, report.lines()
    assert report.lost == 0, report.lines()


def test_broker_restart_and_cut_mid_drain_lose_nothing(tmp_path: Path) -> None:
    report = drain_through_faults(tmp_path, count=20_000)
    assert len(report.notes) == 2, report.lines()  # both faults happened mid-drain
    assert report.lost == 0, report.lines()
    assert report.duplicates <= 2 * INFLIGHT, report.lines()
