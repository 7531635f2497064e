#!/usr/bin/env python3
"""Outbox benchmark: result appends per second through the writer (batched commits), with
durability `normal` and `full`, on a file in a temporary folder of this machine's disk.

    .venv/bin/python scripts/bench_outbox.py [--count 100000] [--dir /path/on/target/disk]

Target: at least 20,000 results/s with `normal`; the `full` figure is reported beside it.
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None, help="folder on the disk to measure")
    args = parser.parse_args()
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
