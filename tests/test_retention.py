"""Offline retention on real SQLite files: the default policy for results (kept 7 days,
the oldest dropped when full, every loss counted and told once per episode), TTL expiry,
the time until the outbox is full, and `edge-agent results purge` run as a separate
process while the agent's writer goes on storing."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

from edge_agent.config.settings import ClassPolicy, OutboxSettings
from edge_agent.outbox.growth import MIN_SPAN_S
from edge_agent.outbox.store import Message, Outbox
from edge_agent.outbox.writer import OutboxWriter
from tests.conftest import run_cli
from tests.waiting import wait_until

DAY = 86400.0


def message(cls: str = "result", size: int = 1000, created: float | None = None) -> Message:
    return Message(
        uuid.uuid4().hex,
        f"edge/d/{cls}",
        b"x" * size,
        1,
        cls,  # type: ignore[arg-type]
        time.time() if created is None else created,
    )


def stored_ids(path: Path, where: str = "1") -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute(f"SELECT id FROM messages WHERE {where}")}


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# The default policy -----------------------------------------------------------------------


def test_the_default_keeps_results_a_week_and_drops_the_oldest_when_full() -> None:
    settings = OutboxSettings()
    assert settings.results == ClassPolicy(when_full="drop_oldest", ttl_s=7 * DAY)
    assert (settings.max_bytes, settings.max_disk_share) == (500_000_000, 0.5)
    # A class table written in a file without when_full gets the same.
    assert ClassPolicy(ttl_s=3600).when_full == "drop_oldest"


def test_a_full_outbox_drops_the_oldest_results_counts_them_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Offline past the bound on the default policy: nothing is refused or held in memory,
    the newest results are the ones kept, each one dropped is counted, and the log has one
    line when dropping begins and one when it has ended, not one per message."""
    caplog.set_level(logging.INFO)
    box = Outbox(tmp_path / "outbox.db", OutboxSettings(max_bytes=1_000_000))
    writer = OutboxWriter(box, "edge", "d")
    ids = []
    for _ in range(3000):
        key = uuid.uuid4().hex
        ids.append(key)
        writer.put_message("edge/d/results/p", b"r" * 1000, "result", key)
    assert writer.flush(timeout=30)
    kept = stored_ids(box.path)
    stats = box.stats()
    dropped = stats["drops"]["result:dropped_oldest"]
    assert writer.waiting == 0 and writer.stored["result"] == 3000
    assert len(kept) == stats["pending"] == 3000 - dropped
    assert 1000 < dropped < 3000
    assert kept == set(ids[dropped:])  # the newest, in order
    assert stats["dropping"] == {"result:dropped_oldest": dropped}
    assert stats["room_bytes"] < 2000
    begun = [r for r in caplog.records if "dropping the oldest" in r.getMessage()]
    assert len(begun) == 1
    assert "full (max_bytes 1 MB, max_disk_share 0.5)" in begun[0].getMessage()
    assert "result:dropped_oldest" in begun[0].getMessage()
    # Housekeeping: the first pass sees the episode still fresh, the next one ends it.
    box.expire()
    assert not [r for r in caplog.records if "dropped oldest from" in r.getMessage()]
    box.expire()
    ended = [r.getMessage() for r in caplog.records if "dropped oldest from" in r.getMessage()]
    assert len(ended) == 1 and ended[0].startswith(f"outbox: {dropped} result message(s)")
    assert box.stats()["dropping"] == {}
    writer.close()
    assert f"dropped result:dropped_oldest {dropped}" in caplog.records[-1].getMessage()


def test_results_past_their_ttl_expire_counted_and_told_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    box = Outbox(tmp_path / "outbox.db", OutboxSettings())
    now = time.time()
    old = [message(created=now - 8 * DAY) for _ in range(300)]
    young = [message(created=now - 6 * DAY) for _ in range(50)]
    box.append(old + young)
    assert box.expire() == 300
    assert stored_ids(box.path) == {m.id for m in young}
    assert box.stats()["drops"] == {"result:expired": 300}
    begun = [r.getMessage() for r in caplog.records if "are expiring" in r.getMessage()]
    assert begun == [
        "outbox: undelivered result messages older than ttl_s 604800 s are expiring;"
        " counted in its drops as result:expired"
    ]
    box.expire()  # nothing more: the episode ends, one line with its total
    ended = [r.getMessage() for r in caplog.records if "expired from" in r.getMessage()]
    assert len(ended) == 1 and ended[0].startswith("outbox: 300 result message(s) expired")


def test_a_ttl_applies_to_messages_stored_before_it_was_set(tmp_path: Path) -> None:
    """An outbox filled under the old default (results kept until delivered) is trimmed
    by the new one at the first housekeeping after the upgrade."""
    path = tmp_path / "outbox.db"
    before = Outbox(path, OutboxSettings(results=ClassPolicy(when_full="reject_new")))
    before.append([message(created=time.time() - 30 * DAY) for _ in range(100)])
    assert before.expire() == 0
    before.close()
    after = Outbox(path, OutboxSettings())
    assert after.expire() == 100
    assert after.stats()["pending"] == 0


# Time until full ---------------------------------------------------------------------------


def test_full_in_s_is_a_number_while_the_backlog_grows_and_none_when_it_does_not(
    tmp_path: Path,
) -> None:
    clock = Clock()
    box = Outbox(tmp_path / "outbox.db", OutboxSettings(max_bytes=10_000_000), clock=clock)
    assert box.stats()["full_in_s"] is None  # nothing seen yet
    for _ in range(30):  # offline: 10 results of about 1 kB a second
        box.append([message() for _ in range(10)])
        clock.now += 1.0
        box.stats()
    stats = box.stats()
    rate = 10 * (1000 + len("edge/d/result"))
    assert stats["full_in_s"] is not None
    assert stats["full_in_s"] == pytest.approx(stats["room_bytes"] / rate, rel=0.05)
    # The link comes back: the backlog is delivered faster than it grows.
    for _ in range(30):
        box.append([message() for _ in range(10)])
        box.mark_delivered([m.seq for m in box.pending(40)])
        clock.now += 1.0
        assert box.stats()["pending"] >= 0
    assert box.stats()["full_in_s"] is None
    # Online and caught up: the backlog stays flat.
    for _ in range(400):
        box.append([message()])
        box.mark_delivered([m.seq for m in box.pending(10)])
        clock.now += 1.0
        box.stats()
    assert box.stats()["pending"] == 0
    assert box.stats()["full_in_s"] is None


def test_full_in_s_from_the_real_writer_on_the_real_clock(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxSettings())
    writer = OutboxWriter(box, "edge", "d")
    started = time.monotonic()
    while time.monotonic() - started < MIN_SPAN_S + 1.5:
        for _ in range(20):
            writer.put_message("edge/d/results/p", b"r" * 600, "result", uuid.uuid4().hex)
        time.sleep(0.05)
        box.stats()
    writer.flush()
    full_in = box.stats()["full_in_s"]
    writer.close()
    # About 12 kB/s into the room left: finite and, on any disk this runs on, long.
    assert isinstance(full_in, float) and 60 < full_in < 10 * 365 * DAY


def test_stats_stays_cheap_with_a_large_backlog(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxSettings())
    for _ in range(20):
        box.append([message(size=200) for _ in range(5000)])
    box.stats()
    started = time.perf_counter()
    for _ in range(100):
        box.stats()
    assert (time.perf_counter() - started) / 100 < 0.005  # under 5 ms a call


# Purge ---------------------------------------------------------------------------------------


def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nstate_dir = "{tmp_path / "state"}"\n')
    return path


def purge_cli(conf: Path, *args: str) -> tuple[int, str, str]:
    proc = run_cli("results", "purge", "--config", str(conf), *args)
    return proc.returncode, proc.stdout, proc.stderr


def test_purge_by_time_and_class_while_the_writer_stores_loses_nothing_else(
    tmp_path: Path,
) -> None:
    """The agent's writer stores results all along (a real OutboxWriter, its own
    connection) while `results purge --before 2h --class results` runs in another
    process: the old results go, and nothing else does: not the old telemetry and events,
    not a recent result, not one stored meanwhile."""
    conf = config(tmp_path)
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path, OutboxSettings(durability="normal"))
    old = time.time() - 3 * 3600
    old_results = [message(created=old + i * 0.01) for i in range(6000)]
    keep = [message("telemetry", created=old) for _ in range(300)]
    keep += [message("event", created=old) for _ in range(100)]
    keep += [message(created=time.time() - 3600) for _ in range(200)]
    for start in range(0, len(old_results), 500):
        box.append(old_results[start : start + 500])
    box.append(keep)
    writer = OutboxWriter(box, "edge", "d")
    made: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            key = uuid.uuid4().hex
            made.append(key)
            writer.put_message("edge/d/results/p", b"n" * 700, "result", key)
            time.sleep(0.0005)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        wait_until(lambda: writer.committed > 200, what="the writer storing")
        code, out, err = purge_cli(conf, "--before", "2h", "--class", "results")
    finally:
        stop.set()
        producer.join()
    assert writer.flush(timeout=30)
    assert code == 0, err
    assert out.startswith("purged 6000 message(s), 6.08 MB: result 6000; pending 6000;")
    assert writer.write_error == "" and writer.waiting == 0
    assert writer.committed == len(made) > 200
    assert stored_ids(path) == {m.id for m in keep} | set(made)
    # The agent noticed the other process's commits: its tallies are right again and the
    # undelivered results purged are counted, not lost silently.
    stats = box.stats()
    assert stats["pending"] == len(keep) + len(made)
    assert stats["drops"] == {"result:purged": 6000}
    writer.close()
    box.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)


def test_purge_of_a_class_gives_the_space_back(tmp_path: Path) -> None:
    conf = config(tmp_path)
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path, OutboxSettings())
    telemetry = [message("telemetry", 2000) for _ in range(3000)]
    for start in range(0, len(telemetry), 500):
        box.append(telemetry[start : start + 500])
    results = [message("result", 500) for _ in range(200)]
    box.append(results)
    box.mark_delivered([m.seq for m in box.pending(100)])  # some delivered, some not
    box.close()
    code, out, _ = purge_cli(conf, "--class", "telemetry", "--dry-run")
    assert code == 0 and out.startswith("would purge 3000 message(s)")
    assert len(stored_ids(path)) == 3200
    code, out, err = purge_cli(conf, "--class", "telemetry", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["count"] == 3000 and done["by_class"] == {"telemetry": 3000}
    assert done["by_state"] == {"pending": 3000}
    assert done["file_bytes_after"] < done["file_bytes_before"] / 4
    assert path.stat().st_size == done["file_bytes_after"]  # the WAL was truncated too
    assert stored_ids(path) == {m.id for m in results}
    # No filter: everything, delivered or not.
    code, out, _ = purge_cli(conf)
    assert code == 0 and out.startswith("purged 200 message(s)")
    assert "delivered 100, pending 100" in out
    assert stored_ids(path) == set()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--before", "soon"], "edge-agent: --before 'soon': not a time (give "),
        (["--before=-2h"], "edge-agent: --before '-2h': not a time"),
        (["--before", "nan"], "edge-agent: --before 'nan': not a time"),
        (
            ["--before", "2999-01-01T00:00"],
            "edge-agent: --before '2999-01-01T00:00': in the future",
        ),
        (["--before", "7d", "--class", "photos"], "edge-agent: --class 'photos': not a class"),
        (["--class", "results", "--class", ""], "edge-agent: --class '': not a class"),
    ],
)
def test_purge_refuses_bad_input_in_one_line_naming_the_argument(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    conf = config(tmp_path)
    path = tmp_path / "state" / "outbox.db"
    box = Outbox(path, OutboxSettings())
    box.append([message(created=time.time() - 30 * DAY) for _ in range(10)])
    box.close()
    code, out, err = purge_cli(conf, *args)
    assert code == 2 and out == ""
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert len(stored_ids(path)) == 10  # nothing deleted


def test_purge_without_an_outbox_says_where_it_looked(tmp_path: Path) -> None:
    conf = config(tmp_path)
    code, _, err = purge_cli(conf, "--before", "1d")
    assert code == 2
    assert err == f"edge-agent: {tmp_path / 'state' / 'outbox.db'}: no outbox yet" + (
        " (the agent has not stored a result)\n"
    )
    assert not (tmp_path / "state" / "outbox.db").exists()  # not created by looking


def test_purge_with_a_bad_config_names_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text("[outbox]\nmax_bytes = 'lots'\n")
    code, _, err = purge_cli(conf)
    assert code != 0 and "Traceback" not in err
    assert "outbox.max_bytes" in err


def test_the_status_line_says_when_an_offline_outbox_will_be_full(tmp_path: Path) -> None:
    from tests.agent_helpers import mqtt_table, pattern_pipeline, start_agent
    from tests.mqtt_fixtures import free_port

    # A broker nobody listens on: the results pile up and the backlog grows.
    body = pattern_pipeline("boxes", "detector", fps=30) + mqtt_table(free_port())
    agent = start_agent(tmp_path, body)
    try:
        assert "full in" not in agent.status_line()  # no history yet
        wait_until(lambda: "full in" in agent.status_line(), 20, "a time to full")
        assert agent.outbox.stats()["full_in_s"] > 0
    finally:
        agent.stop()
