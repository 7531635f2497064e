#!/usr/bin/env python3
"""on_full on a recording: the same MJPEG video file (640x480) through MobileNetV2 int8 on
one thread, slower than the file decodes, with drop_oldest and with wait, alternated in one
run. Throughput is results per second from the first result to the last.

    .venv/bin/python scripts/bench_lossless.py [--frames 300] [--repeats 3] [--queue-size 1]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config.load import load_settings  # noqa: E402
from edge_agent.payloads import ResultPayload  # noqa: E402
from tests.agent_helpers import config_text  # noqa: E402
from tests.sources_helpers import write_video  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2_int8.tflite"


class TimedSink:
    def __init__(self) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()

    def put(self, payload: ResultPayload, on_durable: Callable[[], None] | None = None) -> None:
        with self._lock:
            self.times.append(time.perf_counter())
        if on_durable is not None:
            on_durable()

    def close(self, timeout: float = 5.0) -> None:
        pass


def run(video: Path, work: Path, on_full: str, frames: int, queue_size: int) -> tuple[float, int]:
    """(results/s, dropped) for one pass over the video."""
    body = f"""
[sources.clip]
kind = "camera"
device = "{video}"

[pipelines.clip]
source = "clip"
model = "mobilenet"
queue_size = {queue_size}
on_full = "{on_full}"
"""
    models = f'\n[models.mobilenet]\npath = "{MODEL}"\nthreads = 1\n'
    path = work / f"{on_full}.toml"
    path.write_text(config_text(work / "state", body, models=models))
    sink = TimedSink()
    agent = Agent(load_settings(path), sink=sink, config_path=path)
    agent.start()
    try:
        stats = agent.pipelines["clip"].stats
        deadline = time.monotonic() + 120
        while stats.results + stats.dropped < frames:
            if time.monotonic() > deadline:
                raise SystemExit(f"{on_full}: only {stats.results} results by the deadline")
            time.sleep(0.05)
        times = sink.times
        return (len(times) - 1) / (times[-1] - times[0]), stats.dropped
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queue-size", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object of the figures")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = write_video(work / "clip.avi", frames=args.frames)
        rates: dict[str, list[float]] = {"drop_oldest": [], "wait": []}
        for i in range(args.repeats):
            for mode in rates:
                rate, dropped = run(video, work, mode, args.frames, args.queue_size)
                rates[mode].append(rate)
                if not args.json:
                    print(f"run {i + 1} {mode:11}: {rate:7.1f} results/s, dropped {dropped}")
    drop, wait = (statistics.median(rates[m]) for m in ("drop_oldest", "wait"))
    if args.json:
        print(json.dumps({"runs": rates, "drop_oldest": drop, "wait": wait}))
        return
    print(f"median: drop_oldest {drop:.1f}, wait {wait:.1f} results/s; wait/drop {wait / drop:.3f}")


if __name__ == "__main__":
    main()
