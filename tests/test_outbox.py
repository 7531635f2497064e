"""The outbox on real SQLite files: order, policies, expiry, shrinking, corruption, a full
disk on a real (tmpfs) filesystem."""

from __future__ import annotations

import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.config.settings import ClassPolicy, OutboxSettings
from edge_agent.outbox.store import Message, Outbox
from edge_agent.outbox.writer import OutboxWriter
from tests.agent_helpers import wait_until


def message(cls: str = "result", size: int = 100, created: float | None = None) -> Message:
    return Message(
        uuid.uuid4().hex,
        f"edge/d/{cls}",
        b"x" * size,
        1,
        cls,
        created or time.time(),  # type: ignore[arg-type]
    )


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
    settings = OutboxSettings(max_bytes=100_000)
    box = Outbox(tmp_path / "outbox.db", settings)
    results = [message("result", 1000) for _ in range(120)]
    refused = box.append(results)
    assert 0 < len(refused) < 120
    assert box.drops["result:rejected_full"] == len(refused)
    kept = box.stats()["pending"]
    # Telemetry makes room by dropping its own oldest, never a result.
    box.append([message("telemetry", 1000) for _ in range(5)])
    assert box.stats()["by_class"]["result"]["pending"] == kept
    telemetry = [message("telemetry", 1000) for _ in range(5)]
    box.append(telemetry)
    assert box.drops.get("telemetry:dropped_oldest", 0) >= 5
    assert {m.id for m in box.pending(1000) if m.cls == "telemetry"} == {m.id for m in telemetry}


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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_applies_the_policy_keeps_the_database_and_resumes(small_disk: Path) -> None:
    path = small_disk / "outbox.db"
    box = Outbox(path, OutboxSettings(max_disk_share=1.0, durability="normal"))
    writer = OutboxWriter(box, "edge", "d")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 + 512 * 1024))
    for _ in range(400):
        writer.put_message("edge/d/results/p", b"r" * 2000, "result", uuid.uuid4().hex)
    writer.flush(timeout=2)
    stats = box.stats()
    # Either refused by the size check or held back by SQLite's "disk is full": counted.
    held_or_refused = box.drops.get("result:rejected_full", 0) + (400 - writer.committed)
    assert held_or_refused > 0
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
    writer.close()
