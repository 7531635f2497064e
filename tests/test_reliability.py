"""Losing nothing, against the real agent process and real Mosquitto brokers: SIGKILL again
and again while the broker is away, kills, broker restarts and cuts under load, and a
backlog drained through a broker restart and a cut connection. The JSON-lines copy never
holds a result the outbox lacks. scripts/fault_inject.py runs the same scenarios with
larger counts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import cv2

from tests.agent_helpers import config_text
from tests.conftest import MODELS
from tests.faults import (
    agent_process,
    chaos_under_load,
    drain_through_faults,
    kill_while_offline,
    stop_agent,
    stored_results,
)
from tests.waiting import wait_until

INFLIGHT = 500  # the default in-flight window: what may be in flight at each fault


def test_sigkill_while_offline_loses_no_stored_result_and_the_copy_is_never_ahead(
    tmp_path: Path,
) -> None:
    """Issue 10, item 10: after kill -9 the JSON-lines copy held results the outbox never
    had (it was written before the commit). With half a second of results waiting for
    their commit at each kill, the copy must still hold none the outbox lacks."""
    report = kill_while_offline(tmp_path, rounds=3, commit_interval_ms=500)
    assert report.stored > 60, report.lines()
    assert report.lost == 0, report.lines()
    assert report.copy_extra == 0, report.lines()


def test_kills_broker_restarts_and_cuts_under_load_lose_nothing(tmp_path: Path) -> None:
    report = chaos_under_load(tmp_path, kills=2, restarts=1, cuts=1)
    assert report.stored > 100, report.lines()
    assert report.lost == 0, report.lines()
    assert report.copy_extra == 0, report.lines()
    assert "exit status at SIGTERM: [0, 0]; 0 traceback(s)" in report.notes, report.lines()


def test_broker_restart_and_cut_mid_drain_lose_nothing(tmp_path: Path) -> None:
    report = drain_through_faults(tmp_path, count=20_000)
    assert len(report.notes) == 2, report.lines()  # both faults happened mid-drain
    assert report.lost == 0, report.lines()
    # A duplicate is a row in flight at a fault, or one acknowledged just before the drop
    # and sent again on purpose (a broker going down may have lost it).
    assert report.put_back > 0, report.lines()
    assert report.duplicates <= 2 * INFLIGHT + report.put_back, report.lines()


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
    log = tmp_path / "agent.log"
    proc = agent_process(config, log)
    try:
        # The status line counts results as they are made; the commit waits up to 5 s.
        wait_until(lambda: log.exists() and "30 results" in log.read_text(), 30, "made")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not stored_files(tmp_path / "state")  # killed before the commit
    assert not copies.exists() or copies.read_text() == ""  # the copy follows the commit
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
status_interval_s = 0.2
"""


def stored_files(state: Path) -> set[str]:
    """The image files that have a result in the outbox."""
    return {json.loads(body)["source"]["file"] for body in stored_results(state, "payload")}
