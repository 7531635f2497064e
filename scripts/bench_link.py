#!/usr/bin/env python3
"""Drain benchmark: the outbox drained to a local Mosquitto by the agent's sender, against
raw paho QoS 1 publishing of the same payloads to the same broker, in the same run.

    .venv/bin/python scripts/bench_link.py [--count 30000] [--rss-count 100000]
        [--protocol 5|3.1.1] [--json]

Raw paho is run at each in-flight window of --windows (its speed depends on the window: at
500 it walks every unacknowledged message at each PUBACK) and the agent is compared with
its best window. Raw and agent runs are taken in turns, --repeats times; each figure is the
median of its runs. CPU per message (this process only, the broker left out) is given
beside each rate: on a busy machine it varies less than the rate does. Both speak the same
MQTT version (--protocol; MQTT 5's PUBACKs cost paho more Python time to decode).

After those, one drain of --rss-count rows (0: none) reports the process's RSS at its
start, its peak and its end.

Mosquitto advertises a Receive Maximum of 20 (its max_inflight_messages) to MQTT 5
clients: the agent keeps within it (18 in flight, 2 left for replies and the status), raw
paho's script does not. --broker-config 'max_inflight_messages 0' lifts it.

Target: the drain at least 0.9x raw paho's best window; RSS flat while draining.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

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
WINDOWS = "20,50,100,200,500,1000"
_APPEND_BATCH = 5000
_SAMPLE_S = 0.05  # RSS and progress looked at this often while draining


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


class Run(NamedTuple):
    rate: float  # messages per second
    cpu_us: float  # this process's CPU time per message, all threads
    rss_start: float = 0.0  # MB, agent runs only
    rss_peak: float = 0.0
    rss_end: float = 0.0


def raw_run(port: int, payloads: list[bytes], window: int, v5: bool = True) -> Run:
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
    cpu = time.process_time()
    started = time.perf_counter()
    for payload in payloads:
        room.acquire()
        client.publish(TOPIC, payload, qos=1)
    done.wait(600)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    client.disconnect()
    client.loop_stop()
    return Run(len(payloads) / elapsed, cpu / len(payloads) * 1e6)


def raw_paho(port: int, payloads: list[bytes], window: int, v5: bool = True) -> float:
    return raw_run(port, payloads, window, v5).rate


def agent_drain(
    port: int,
    payloads: list[bytes],
    folder: Path,
    window: int | None = None,
    protocol: str = "5",
) -> Run:
    """The outbox filled with `payloads`, then drained by the sender with the default
    settings (`window`: another mqtt.inflight)."""
    box = Outbox(folder / "outbox.db", OutboxSettings())
    now = time.time()
    for start in range(0, len(payloads), _APPEND_BATCH):
        box.append(
            [
                Message(uuid.uuid4().hex, TOPIC, p, 1, "result", now)
                for p in payloads[start : start + _APPEND_BATCH]
            ]
        )
    extra = {} if window is None else {"inflight": window}
    settings = MqttSettings(enabled=True, port=port, client_id="agent", protocol=protocol, **extra)
    link = MqttLink(settings, "bench", lambda: {})
    sender = Sender(box, link, settings)
    process = psutil.Process()
    rss_start = process.memory_info().rss
    peak = rss_start
    cpu = time.process_time()
    started = time.perf_counter()
    sender.start()
    link.start()
    # The sender's own count, not an outbox query: the bench must not load the database.
    while sender.acked < len(payloads):
        peak = max(peak, process.memory_info().rss)
        time.sleep(_SAMPLE_S)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    # The count goes up as acknowledgements are taken; their marks follow within a moment.
    deadline = time.monotonic() + 30
    while box.stats()["pending"] and time.monotonic() < deadline:
        time.sleep(_SAMPLE_S)
    assert box.stats()["pending"] == 0, box.stats()
    rss_end = process.memory_info().rss
    if link.reconnects:
        print(f"(the agent's link reconnected {link.reconnects} times in a run)", file=sys.stderr)
    sender.stop()
    link.stop()
    box.close()
    mb = 2**20
    return Run(
        len(payloads) / elapsed,
        cpu / len(payloads) * 1e6,
        rss_start / mb,
        max(peak, rss_end) / mb,
        rss_end / mb,
    )


def payloads_of(count: int) -> list[bytes]:
    return [PAYLOAD % uuid.uuid4().hex.encode() for _ in range(count)]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    windows = [int(w) for w in args.windows.split(",")]
    v5 = args.protocol == "5"
    payloads = payloads_of(args.count)
    raws: dict[int, list[Run]] = {w: [] for w in windows}
    drains: list[Run] = []
    rss: Run | None = None
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp), *args.broker_config)
        try:
            # In turns, so a busy moment of the machine falls on all alike.
            for i in range(args.repeats):
                for window in windows:
                    raws[window].append(raw_run(port, payloads, window, v5))
                folder = Path(tmp) / f"run{i}"
                folder.mkdir()
                drains.append(agent_drain(port, payloads, folder, args.window, args.protocol))
            if args.rss_count:
                del payloads
                folder = Path(tmp) / "rss"
                folder.mkdir()
                rss = agent_drain(
                    port, payloads_of(args.rss_count), folder, args.window, args.protocol
                )
        finally:
            broker.terminate()
            broker.wait(5)
    sweep = {w: statistics.median(r.rate for r in runs) for w, runs in raws.items()}
    best = max(sweep, key=sweep.__getitem__)
    drain = statistics.median(r.rate for r in drains)
    result: dict[str, Any] = {
        "count": args.count,
        "payload_bytes": len(PAYLOAD),
        "protocol": args.protocol,
        "repeats": args.repeats,
        "agent_window": args.window or MqttSettings().inflight,
        "agent_msg_s": round(drain),
        "agent_runs": [round(r.rate) for r in drains],
        "agent_cpu_us": round(statistics.median(r.cpu_us for r in drains), 1),
        "raw_sweep_msg_s": {str(w): round(v) for w, v in sweep.items()},
        "raw_sweep_runs": {str(w): [round(r.rate) for r in runs] for w, runs in raws.items()},
        "raw_best_window": best,
        "raw_best_msg_s": round(sweep[best]),
        "raw_best_cpu_us": round(statistics.median(r.cpu_us for r in raws[best]), 1),
        "ratio": round(drain / sweep[best], 3),
    }
    if rss is not None:
        result.update(
            rss_count=args.rss_count,
            rss_drain_msg_s=round(rss.rate),
            rss_start_mb=round(rss.rss_start, 1),
            rss_peak_mb=round(rss.rss_peak, 1),
            rss_end_mb=round(rss.rss_end, 1),
        )
    return result


def report(r: dict[str, Any]) -> None:
    print(
        f"{r['count']} messages of {r['payload_bytes']} bytes, QoS 1, MQTT {r['protocol']},"
        " local Mosquitto;"
    )
    print(f"median of {r['repeats']} runs each, in turns\n")
    print("raw paho by in-flight window [msg/s]:")
    for window, rate in r["raw_sweep_msg_s"].items():
        each = ", ".join(str(x) for x in r["raw_sweep_runs"][window])
        print(f"  {window:>6}  {rate:>8}   runs {each}")
    print()
    print(f"{'figure':<44}{'agent':>10}{'baseline':>10}{'ratio':>8}  target")
    label = f"drain vs raw paho, window {r['raw_best_window']} [msg/s]"
    print(f"{label:<44}{r['agent_msg_s']:>10}{r['raw_best_msg_s']:>10}{r['ratio']:>8}  >= 0.9")
    label = "CPU per message, this process [us]"
    print(f"{label:<44}{r['agent_cpu_us']:>10}{r['raw_best_cpu_us']:>10}")
    runs_text = ", ".join(str(x) for x in r["agent_runs"])
    print(f"  agent window {r['agent_window']}, runs {runs_text}")
    if "rss_count" in r:
        print(
            f"\nRSS through a drain of {r['rss_count']} rows ({r['rss_drain_msg_s']} msg/s) [MB]:"
            f" start {r['rss_start_mb']}, peak {r['rss_peak_mb']}, end {r['rss_end_mb']}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30_000, help="messages per timed run")
    parser.add_argument("--windows", default=WINDOWS, help="raw paho's windows, swept")
    parser.add_argument(
        "--window", type=int, default=None, help="the agent's window (default: mqtt.inflight)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, taken in turns")
    parser.add_argument(
        "--rss-count", type=int, default=100_000, help="rows of the RSS drain (0: none)"
    )
    parser.add_argument(
        "--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version of both sides"
    )
    parser.add_argument(
        "--broker-config",
        action="append",
        default=[],
        metavar="LINE",
        help="a mosquitto.conf line (repeatable), e.g. 'max_inflight_messages 0': no Receive "
        "Maximum, where the default 20 keeps the agent to 18 in flight",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
