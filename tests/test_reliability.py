"""Losing nothing, against the real agent process and real Mosquitto brokers: SIGKILL again
and again while the broker is away, and a backlog drained through a broker restart and a
cut connection. scripts/fault_inject.py runs the same scenarios with larger counts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cv2

from tests.agent_helpers import config_text, wait_until
from tests.conftest import MODELS
from tests.faults import (
    agent_process,
    drain_through_faults,
    kill_while_offline,
    stop_agent,
    stored_results,
)

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


def test_image_files_read_before_a_crash_are_processed_again(tmp_path: Path) -> None:
    """A file counts as done only when its result is durable: results still waiting for
    their commit when the agent is killed are made again from the same files."""
    folder = tmp_path / "drop"
    folder.mkdir()
    image = cv2.imread(str(MODELS / "samples" / "digit_7.png"))
    for i in range(30):
        cv2.imwrite(str(folder / f"img-{i:02}.png"), image)
    past = time.time() - 10
    for path in folder.iterdir():
        os.utime(path, (past, past))
    copies = tmp_path / "copies.jsonl"
    body = IMAGE_BODY.format(folder=folder, copies=copies)
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path / "state", body))
    proc = agent_process(config)
    try:
        # The JSON-lines copy is written at once; the outbox commit waits up to 5 s.
        wait_until(
            lambda: copies.exists() and len(copies.read_text().splitlines()) >= 30, 30, "read"
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not stored_files(tmp_path / "state")  # killed before the commit
    proc = agent_process(config)
    try:
        wait_until(lambda: len(stored_files(tmp_path / "state")) == 30, 30, "all 30 stored")
    finally:
        stop_agent(proc)


IMAGE_BODY = """
[sources.drop]
kind = "image_dir"
path = "{folder}"

[pipelines.digits]
source = "drop"
model = "digits"
queue_size = 100

[outbox]
commit_interval_ms = 5000

[output]
jsonl = "{copies}"

[logging]
status_interval_s = 0
"""


def stored_files(state: Path) -> set[str]:
    """The image files that have a result in the outbox."""
    return {json.loads(body)["source"]["file"] for body in stored_results(state, "payload")}
