#!/usr/bin/env python3
"""Outbox benchmark: result appends per second through the writer (batched commits), with
durability `normal` and `full`, on a file in a temporary folder of this machine's disk.

    .venv/bin/python scripts/bench_outbox.py [--count 100000] [--dir /path/on/target/disk]

Target: at least 20,000 results/s with `normal`; the `full` figure is reported beside it.

With --offline CONFIG: how long that config can stay offline before the outbox is full and
its policies start dropping. Runs `edge-agent run` on it for --seconds with no broker and a
fresh state folder, measures the bytes its outbox grows by per second (results, events and
telemetry, with SQLite's own overhead per row), and divides the outbox's room under the
config's own [outbox] settings by that rate:

    .venv/bin/python scripts/bench_outbox.py --offline configs/demo.toml --seconds 60
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.config.settings import OutboxSettings  # noqa: E402
from edge_agent.outbox.store import Outbox  # noqa: E402
from edge_agent.outbox.writer import OutboxWriter  # noqa: E402

# A typical classification result payload, about 600 bytes of JSON.
PAYLOAD = (
    b'{"schema":"edge-agent/result/1","id":"%s","seq":1,"ts":1795700000.0,"boot_id":"b",'
    b'"device":"cam-17","pipeline":"p","source":{"name":"cam","index":1},"model":{"name":'
    b'"mobilenet_v2","version":"1.0.0","sha256":"' + b"0" * 64 + b'"},"delegate":"cpu",'
    b'"cached":false,"latency_ms":{"capture":1.5,"preprocess":0.6,"queue":0.1,"infer":6.6,'
    b'"decode":0.1},"result":{"top":[{"index":1,"label":"class_1","score":0.5},{"index":2,'
    b'"label":"class_2","score":0.25},{"index":3,"label":"class_3","score":0.125}]}}'
)


def appends_per_second(folder: Path, durability: str, count: int) -> float:
    box = Outbox(folder / f"{durability}.db", OutboxSettings(durability=durability))  # type: ignore[arg-type]
    writer = OutboxWriter(box, "edge", "cam-17")
    ids = [uuid.uuid4().hex for _ in range(count)]
    started = time.perf_counter()
    for message_id in ids:
        writer.put_message(
            "edge/cam-17/results/p", PAYLOAD % message_id.encode(), "result", message_id
        )
    writer.flush(timeout=600)
    elapsed = time.perf_counter() - started
    assert box.stats()["pending"] == count, "not every append was stored"
    writer.close()
    box.close()
    return count / elapsed


# Below this many rows the file is mostly its fixed pages (schema, index roots): its size
# says nothing of the cost of a message.
_MIN_ROWS_ON_DISK = 1000


def offline(config: Path, seconds: float, folder: Path | None) -> None:
    """Prints the growth of `config`'s outbox offline and the time until it is full."""
    from edge_agent.config.load import load_settings

    settings = load_settings(config.resolve())
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        state = Path(tmp) / "state"
        env = {
            **os.environ,
            "EDGE_AGENT_DEVICE__STATE_DIR": str(state),
            "EDGE_AGENT_MQTT__ENABLED": "false",
            "EDGE_AGENT_OUTPUT__JSONL": "",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(seconds)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        db = state / "outbox.db"
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT class, COUNT(*), SUM(size), MIN(created), MAX(created) FROM messages"
                " GROUP BY class"
            ).fetchall()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            page = conn.execute("PRAGMA page_size").fetchone()[0]
    first = min(r[3] for r in rows)
    last = max(r[4] for r in rows)
    span = max(1e-9, last - first)
    count = sum(r[1] for r in rows)
    size = sum(r[2] for r in rows)
    on_disk = pages * page
    outbox = settings.outbox
    # The WAL's bound counts against max_bytes (store.py: an eighth, 64 kB to 4 MB).
    wal = min(4 * 2**20, max(64 * 2**10, outbox.max_bytes // 8))
    room = outbox.max_bytes - wal
    print(f"{config}: {seconds:.0f} s offline, messages made over {span:.1f} s")
    for cls, n, b, _, _ in sorted(rows):
        print(f"  {cls:<10}{n:>8} messages {b / n:>8.0f} B each {b / span:>10.0f} B/s")
    print(f"  all       {count:>8} messages {size / span:>26.0f} B/s of payload and topic")
    rates = [("payload and topic", size / span)]
    if count >= _MIN_ROWS_ON_DISK:
        print(f"  on disk: {on_disk / count:.0f} B a message (file {on_disk / 1e6:.2f} MB)")
        rates.append(("file", on_disk / span))
    for name, rate in rates:
        hours = room / rate / 3600
        print(
            f"  max_bytes {outbox.max_bytes / 1e6:.0f} MB less the WAL's {wal // 2**20} MB at"
            f" {rate / 1e3:.2f} kB/s ({name}): full in {hours:.1f} h ({hours / 24:.1f} days)"
        )
    ttl = outbox.results.ttl_s
    if ttl:
        print(
            f"  results' ttl_s {ttl / 86400:g} days: at this rate the outbox holds"
            f" {min(1.0, room / (size / span) / ttl):.0%} of that"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    parser.add_argument("--offline", type=Path, help="a config to run offline and measure")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (--offline)")
    args = parser.parse_args()
    if args.offline:
        offline(args.offline, args.seconds, args.dir)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        normal = appends_per_second(Path(tmp), "normal", args.count)
        full = appends_per_second(Path(tmp), "full", args.count)
    print(f"{args.count} result appends of {len(PAYLOAD)} bytes, batched commits\n")
    print(f"{'durability':<12}{'appends/s':>12}  target")
    print(f"{'normal':<12}{normal:>12.0f}  >= 20000 {'ok' if normal >= 20000 else 'MISSED'}")
    print(f"{'full':<12}{full:>12.0f}  (reported)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
