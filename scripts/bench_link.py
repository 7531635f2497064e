#!/usr/bin/env python3
"""Drain benchmark: the outbox drained to a local Mosquitto by the agent's sender, against
raw paho QoS 1 publishing of the same payloads to the same broker, in the same run.

    .venv/bin/python scripts/bench_link.py [--count 100000]

Target: the drain at least 0.9x raw paho; memory flat while draining.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_outbox import PAYLOAD  # noqa: E402

from edge_agent.config.settings import MqttSettings, OutboxSettings  # noqa: E402
from edge_agent.link.mqtt import MqttLink  # noqa: E402
from edge_agent.link.sender import Sender  # noqa: E402
from edge_agent.outbox.store import Message, Outbox  # noqa: E402

TOPIC = "edge/bench/results/p"


def start_broker(folder: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = folder / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", *extra]
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(config)], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def raw_paho(port: int, payloads: list[bytes], window: int, v5: bool = True) -> float:
    """The obvious script: publish QoS 1, at most `window` unacknowledged at a time."""
    room = threading.Semaphore(window)
    done = threading.Event()
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        room.release()
        if acked == len(payloads):
            done.set()

    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="raw", protocol=protocol)
    client.max_inflight_messages_set(window)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    for payload in payloads:
        room.acquire()
        client.publish(TOPIC, payload, qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return len(payloads) / elapsed


def agent_drain(
    port: int, payloads: list[bytes], folder: Path, window: int
) -> tuple[float, float, float]:
    box = Outbox(folder / "outbox.db", OutboxSettings())  # the default settings
    now = time.time()
    for start in range(0, len(payloads), 5000):
        box.append(
            [
                Message(uuid.uuid4().hex, TOPIC, p, 1, "result", now)
                for p in payloads[start : start + 5000]
            ]
        )
    settings = MqttSettings(enabled=True, port=port, client_id="agent", inflight=window)
    link = MqttLink(settings, "bench", lambda: {})
    sender = Sender(box, link, settings)
    process = psutil.Process()
    rss_start = process.memory_info().rss
    peak = rss_start
    started = time.perf_counter()
    sender.start()
    link.start()
    # The sender's own count, not an outbox query: the bench must not load the database.
    while sender.acked < len(payloads):
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    # The count goes up as acknowledgements are taken; their marks follow within a moment.
    deadline = time.monotonic() + 30
    while box.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.stats()["pending"] == 0, box.stats()
    if link.reconnects:
        print(f"  (the agent's link reconnected {link.reconnects} times during this run)")
    sender.stop()
    link.stop()
    box.close()
    return len(payloads) / elapsed, rss_start / 2**20, peak / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=500, help="messages in flight")
    parser.add_argument("--repeats", type=int, default=3, help="raw and agent runs, taken in turns")
    args = parser.parse_args()
    payloads = [PAYLOAD % uuid.uuid4().hex.encode() for _ in range(args.count)]
    raws, drains, rss = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            # In turns, so a busy moment of the machine falls on both alike.
            for i in range(args.repeats):
                raws.append(raw_paho(port, payloads, args.window))
                folder = Path(tmp) / f"run{i}"
                folder.mkdir()
                drain, rss_start, rss_peak = agent_drain(port, payloads, folder, args.window)
                drains.append(drain)
                rss.append((rss_start, rss_peak))
        finally:
            broker.terminate()
            broker.wait(5)
    raw, drain = statistics.median(raws), statistics.median(drains)
    print(f"{args.count} messages of {len(PAYLOAD)} bytes, QoS 1, window {args.window}, ")
    print(f"median of {args.repeats} runs each, in turns\n")
    print(f"{'figure':<36}{'agent':>10}{'baseline':>10}{'ratio':>8}  target")
    print(f"{'drain vs raw paho [msg/s]':<36}{drain:>10.0f}{raw:>10.0f}{drain / raw:>8.2f}  >= 0.9")
    print("  runs: agent " + ", ".join(f"{d:.0f}" for d in drains))
    print("        raw   " + ", ".join(f"{r:.0f}" for r in raws))
    rss_start, rss_peak = rss[0]
    label = "RSS while draining, peak vs start [MB]"
    print(f"{label:<36}{rss_peak:>10.1f}{rss_start:>10.1f}{rss_peak / rss_start:>8.2f}  flat")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(peak RSS of the whole process, raw paho's runs included: {peak_mb:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
