"""The outbox on real SQLite files: order, policies, expiry, shrinking, corruption, a full
disk on a real (tmpfs) filesystem: the WAL's bound, every write path, what is held in
memory, and the JSON-lines copy written only after the commit."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config.settings import ClassPolicy, OutboxSettings
from edge_agent.outbox.database import OutboxWriteError, read_only
from edge_agent.outbox.store import Message, Outbox
from edge_agent.outbox.writer import OutboxWriter
from edge_agent.sinks import JsonlCopy
from tests.agent_helpers import wait_until
from tests.faults import CannotMount, fill_disk, tmpfs


def message(cls: str = "result", size: int = 100, created: float | None = None) -> Message:
    return Message(
        uuid.uuid4().hex,
        f"edge/d/{cls}",
        b"x" * size,
        1,
        cls,  # type: ignore[arg-type]
        created or time.time(),
    )


def test_rows_acknowledged_since_a_time_are_put_back_in_their_order(tmp_path: Path) -> None:
    """After a drop the agent did not ask for, the sender's rows acknowledged in the last
    seconds go again: pending once more, first in line, counted, and no others."""
    box = Outbox(tmp_path / "outbox.db", OutboxSettings())
    early = [message("result") for _ in range(3)]
    late = [message("result"), message("telemetry"), message("escalation")]
    box.append(early + late)
    seqs = {m.id: m.seq for m in box.pending(10)}
    box.mark_delivered([seqs[m.id] for m in early])
    time.sleep(0.05)
    since = time.time()
    escalation = box.pending(1, cls="escalation")[0].seq  # the escalation client's own
    box.mark_delivered([seqs[late[0].id], seqs[late[1].id], escalation])
    assert box.stats()["pending"] == 0 and box.stats()["delivered_kept"] == 6

    assert box.put_back(since) == 2
    assert [m.id for m in box.pending(10)] == [late[0].id, late[1].id]
    stats = box.stats()
    assert stats["pending"] == 2 and stats["delivered_kept"] == 4
    assert stats["by_class"] == {
        "result": {"pending": 1, "bytes": 100 + len("edge/d/result")},
        "telemetry": {"pending": 1, "bytes": 100 + len("edge/d/telemetry")},
    }
    assert box.put_back(since) == 0  # pending already
    box.close()


def test_pending_comes_events_first_then_results_then_telemetry_oldest_first(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxSettings())
    sent = [message("telemetry"), message("result"), message("event"), message("result")]
    assert box.append(sent) == []
    order = [m.id for m in box.pending(10)]
    assert order == [sent[2].id, sent[1].id, sent[3].id, sent[0].id]
    first = box.pending(1)
    box.mark_delivered([first[0].seq])
    assert [m.id for m in box.pending(10)] == [sent[1].id, sent[3].id, sent[0].id]
    # In-flight rows can be left out of the next page.
    assert [m.id for m in box.pending(2, exclude={box.pending(1)[0].seq})] == [
        sent[3].id,
        sent[0].id,
    ]
    box.close()
    # What was committed survives a reopen.
    again = Outbox(tmp_path / "outbox.db", OutboxSettings())
    assert [m.id for m in again.pending(10)] == [sent[1].id, sent[3].id, sent[0].id]
    assert again.stats()["pending"] == 3


def test_a_duplicate_id_is_stored_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", OutboxSettings())
    m = message()
    box.append([m, m])
    assert box.stats()["pending"] == 1


def test_full_outbox_refuses_results_and_drops_oldest_telemetry(tmp_path: Path) -> None:
    """Results set to reject_new (the default drops their oldest: test_retention.py)."""
    settings = OutboxSettings(max_bytes=100_000, results=ClassPolicy(when_full="reject_new"))
    box = Outbox(tmp_path / "outbox.db", settings)
    results = [message("result", 1000) for _ in range(120)]
    refused = box.append(results)
    assert 0 < len(refused) < 120
    # Refused, not dropped: the writer holds them, and counts them only if it gives up.
    assert "result:rejected_full" not in box.drops
    kept = box.stats()["pending"]
    # Telemetry makes room by dropping its own oldest, never a result.
    box.append([message("telemetry", 1000) for _ in range(5)])
    assert box.stats()["by_class"]["result"]["pending"] == kept
    telemetry = [message("telemetry", 1000) for _ in range(5)]
    box.append(telemetry)
    assert box.drops.get("telemetry:dropped_oldest", 0) >= 5
    assert {m.id for m in box.pending(1000) if m.cls == "telemetry"} == {m.id for m in telemetry}


def test_every_loss_from_every_thread_is_counted_once_in_the_stats(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Housekeeping expires, the sender sets aside, the writer gives up: each on its own
    thread, all counted in the one drops count that telemetry and the summary read."""
    settings = OutboxSettings(
        max_bytes=100_000,
        results=ClassPolicy(when_full="reject_new"),
        telemetry=ClassPolicy(when_full="drop_oldest", ttl_s=60),
    )
    box = Outbox(tmp_path / "outbox.db", settings)
    writer = OutboxWriter(box, "edge", "d")
    old = time.time() - 3600
    box.append([message("telemetry", 100, created=old) for _ in range(30)])
    box.append([message("event", 100) for _ in range(20)])
    events = [m.seq for m in box.pending(20)]
    for _ in range(120):  # more than fits: some are refused, held, given up at the stop
        writer.put_message("edge/d/results/p", b"r" * 1000, "result", uuid.uuid4().hex)

    def refused_by_the_broker() -> None:
        for seq in events:
            box.set_aside(seq, "too_large")

    expiring = threading.Thread(target=box.expire)
    setting_aside = threading.Thread(target=refused_by_the_broker)
    expiring.start()
    setting_aside.start()
    expiring.join()
    setting_aside.join()
    with caplog.at_level(logging.INFO):
        writer.close(timeout=0.5)
        # close() waits that long at most; a loaded machine may still be giving up.
        wait_until(lambda: not writer.alive, 30, "the writer's thread to end")
    given_up = writer.taken["result"] - writer.stored["result"]
    assert given_up > 0
    drops = box.stats()["drops"]
    assert drops == {
        "telemetry:expired": 30,
        "event:too_large": 20,
        "result:rejected_full": given_up,
    }
    assert json.loads(json.dumps(box.stats()))["drops"] == drops  # as telemetry sends it
    summary = caplog.records[-1].getMessage()
    assert (
        f"dropped event:too_large 20, result:rejected_full {given_up}, telemetry:expired 30"
        in summary
    )


def test_expired_and_old_delivered_rows_go_and_the_file_shrinks(tmp_path: Path) -> None:
    settings = OutboxSettings(
        retention_s=0, telemetry=ClassPolicy(when_full="drop_oldest", ttl_s=60)
    )
    path = tmp_path / "outbox.db"
    box = Outbox(path, settings)
    old = time.time() - 3600
    box.append([message("telemetry", 2000, created=old) for _ in range(500)])
    box.append([message("result", 2000) for _ in range(500)])
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full_size = path.stat().st_size
    assert box.expire() == 500
    assert box.drops["telemetry:expired"] == 500
    box.mark_delivered([m.seq for m in box.pending(1000)])
    box.expire(time.time() + 1)
    box._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert box.stats()["pending"] == 0
    assert path.stat().st_size < full_size / 4


def test_a_corrupt_outbox_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not an sqlite database at all" * 100)
    box = Outbox(path, OutboxSettings())
    assert box.moved_aside is not None and box.moved_aside.exists()
    assert box.moved_aside.read_bytes().startswith(b"this is not")
    box.append([message()])
    assert box.stats()["pending"] == 1


def test_a_damaged_page_is_found_at_open(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, OutboxSettings())
    box.append([message("result", 3000) for _ in range(50)])
    box.close()
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 2 + 512] = b"\xff" * 512  # a page in the middle
    path.write_bytes(bytes(data))
    again = Outbox(path, OutboxSettings())
    assert again.moved_aside is not None
    assert again.stats()["pending"] == 0


def mounted(tmp_path: Path, size: str) -> Iterator[Path]:
    try:
        with tmpfs(tmp_path / "disk", size) as mount:
            yield mount
    except CannotMount as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mounted(tmp_path, "2m")


@pytest.fixture
def disk_3m(tmp_path: Path) -> Iterator[Path]:
    """The size of the volume the chaos run used."""
    yield from mounted(tmp_path, "3m")


def test_full_disk_applies_the_policy_keeps_the_database_and_resumes(small_disk: Path) -> None:
    path = small_disk / "outbox.db"
    # Results held, not dropped, while the disk is full (the default drops the oldest).
    settings = OutboxSettings(
        max_disk_share=1.0, durability="normal", results=ClassPolicy(when_full="reject_new")
    )
    box = Outbox(path, settings)
    writer = OutboxWriter(box, "edge", "d")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 + 512 * 1024))
    for _ in range(400):
        writer.put_message("edge/d/results/p", b"r" * 2000, "result", uuid.uuid4().hex)
    writer.flush(timeout=1)
    stats = box.stats()
    # Either refused by the size check or held back by SQLite's "disk is full": held.
    assert writer.waiting == 400 - writer.committed > 0
    # The database is intact while the disk is full.
    check = sqlite3.connect(path).execute("PRAGMA quick_check").fetchone()
    assert check == ("ok",)
    assert stats["pending"] == writer.committed
    # Space comes back: new results are stored again.
    filler.unlink()
    before = writer.committed
    for _ in range(50):
        writer.put_message("edge/d/results/p", b"r" * 2000, "result", uuid.uuid4().hex)
    wait_until(lambda: writer.committed >= before + 50, what="commits after space returned")
    assert not writer.disk_full
    writer.close(timeout=1.0)
    # What still found no room by the stop is counted: nothing vanished.
    assert writer.stored["result"] + box.drops.get("result:rejected_full", 0) == 450


def test_the_wal_stays_within_its_bound_on_a_3_mb_disk(disk_3m: Path) -> None:
    """Issue 10, item 6: results appended and marked delivered on a 3 MB volume grew the WAL
    to 2.96 MB (no checkpoint before SQLite's 1,000 pages) until the disk was full. Now the
    WAL stays near its bound, counted in the budget, and delivered rows give way."""
    path = disk_3m / "outbox.db"
    box = Outbox(path, OutboxSettings())
    assert box.wal_limit <= 256 * 1024  # an eighth of the budget a 3 MB disk allows
    peak = 0
    for _ in range(300):
        box.append([message("result", 700) for _ in range(20)])
        box.mark_delivered([m.seq for m in box.pending(15)])
        peak = max(peak, Path(f"{path}-wal").stat().st_size)
    assert peak <= box.wal_limit + 32 * 1024  # one batch past the bound at most
    assert box.wal_peak >= peak  # the agent's own figure, taken after every commit
    files = path.stat().st_size + Path(f"{path}-wal").stat().st_size
    assert files <= 0.5 * 3 * 2**20 + box.wal_limit  # max_disk_share of the volume
    assert box.stats()["pending"] > 800  # results kept, delivered ones cleared for them


def test_every_write_on_a_full_disk_names_the_disk_and_leaves_the_outbox_intact(
    disk_3m: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10, items 5 and 6: the error read "cannot commit (cannot rollback - no
    transaction is active)". Every write path now raises one error that says the disk
    holding the outbox is full, with the path; housekeeping logs it and goes on."""
    path = disk_3m / "outbox.db"
    box = Outbox(path, OutboxSettings())
    box.append([message("result", 700) for _ in range(1200)])
    seqs = [m.seq for m in box.pending(2000)]
    box.mark_delivered(seqs[:600])  # for housekeeping to remove
    seqs = seqs[600:]
    # A reader beside the agent (`edge-agent results tail`) holds the WAL: it cannot start
    # over, so every write needs new space.
    reader = read_only(path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM messages").fetchone()
    filler = fill_disk(disk_3m)
    with pytest.raises(OutboxWriteError) as failed:
        box.append([message("telemetry", 700) for _ in range(400)])  # drop_oldest: not refused
    assert failed.value.disk_full
    text = str(failed.value)
    assert text.startswith(f"the disk holding the outbox is full: {path}")
    assert "rollback" not in text
    with pytest.raises(OutboxWriteError, match="disk holding the outbox is full"):
        box.mark_delivered(seqs)
    with caplog.at_level(logging.WARNING):
        assert box.expire(time.time() + 10**6) == 0
    assert "housekeeping postponed: the disk holding the outbox is full" in caplog.text
    # Whole transactions only (marks that went before the failure stay), tallies right.
    stats = box.stats()
    truth = dict(
        sqlite3.connect(path).execute("SELECT state, COUNT(*) FROM messages GROUP BY state")
    )
    assert (stats["pending"], stats["delivered_kept"]) == (truth[0], truth[1])
    assert truth[0] + truth[1] == 1200 and truth[0] > 0
    assert sqlite3.connect(path).execute("PRAGMA quick_check").fetchone() == ("ok",)
    reader.close()
    filler.unlink()
    box.mark_delivered(seqs)
    assert box.expire(time.time() + 10**6) == 0
    assert box.stats()["pending"] == 0 and box.stats()["delivered_kept"] == 0


def test_held_messages_are_stored_when_space_returns_and_counted_if_it_never_does(
    disk_3m: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 10, item 6: results held in memory were dropped at SIGTERM with no log line
    and no count. They are stored once space returns; what is still held at stop is
    counted and logged."""
    box = Outbox(disk_3m / "outbox.db", OutboxSettings(durability="normal"))
    writer = OutboxWriter(box, "edge", "d")
    filler = fill_disk(disk_3m)
    for _ in range(300):
        writer.put_message("edge/d/results/p", b"r" * 700, "result", uuid.uuid4().hex)
    wait_until(lambda: writer.waiting == 300, what="300 results held in memory")
    filler.unlink()
    wait_until(lambda: writer.committed == 300, what="the held results stored")
    assert box.stats()["pending"] == 300 and box.drops == {}
    filler = fill_disk(disk_3m)
    for _ in range(500):  # telemetry is never refused for room: it meets the full disk
        writer.put_message("edge/d/telemetry", b"t" * 700, "telemetry", uuid.uuid4().hex)
    wait_until(lambda: bool(writer.write_error), what="a failed write")
    assert writer.disk_full
    with caplog.at_level(logging.INFO):
        writer.close(timeout=1.0)
    assert box.drops == {
        "telemetry:disk_full": writer.taken["telemetry"] - writer.stored["telemetry"]
    }
    lost = [r.getMessage() for r in caplog.records if "lost at stop" in r.getMessage()]
    assert len(lost) == 1 and "the disk holding the outbox is full" in lost[0]
    assert f"telemetry {box.drops['telemetry:disk_full']}" in lost[0]
    assert "dropped telemetry:disk_full" in caplog.records[-1].getMessage()  # the summary
    filler.unlink()


def test_the_jsonl_copy_is_written_only_after_the_commit(disk_3m: Path, tmp_path: Path) -> None:
    """Issue 10, item 10: the copy was written before the outbox commit, so after kill -9 it
    held results the outbox never had. It is now fed from each committed batch."""
    box = Outbox(disk_3m / "outbox.db", OutboxSettings(durability="normal"))
    copy_path = tmp_path / "copy.jsonl"
    writer = OutboxWriter(box, "edge", "d", [JsonlCopy(str(copy_path))])
    filler = fill_disk(disk_3m)
    ids = [uuid.uuid4().hex for _ in range(100)]
    for key in ids:
        body = json.dumps({"id": key}).encode()
        writer.put_message("edge/d/results/p", body, "result", key)
    wait_until(lambda: writer.waiting == 100, what="results held: the disk is full")
    time.sleep(0.2)
    assert copy_path.read_text() == ""  # nothing stored, nothing copied
    filler.unlink()
    wait_until(lambda: writer.committed == 100, what="stored once space returned")
    writer.close()
    copied = [json.loads(line)["id"] for line in copy_path.read_text().splitlines()]
    assert copied == ids
