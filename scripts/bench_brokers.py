#!/usr/bin/env python3
"""Drain benchmark per broker: the outbox drained by the agent's link and sender, against
raw paho QoS 1 publishing of the same payloads to the same broker, in one run, for a
private Mosquitto (MQTT 5), NATS 2.9 and RabbitMQ 3.10 (both MQTT 3.1.1: raw paho speaks
what the broker takes, the agent finds it out itself).

    .venv/bin/python scripts/bench_brokers.py [--count 20000] [--repeats 3]

RabbitMQ needs root (its node's folder goes to the rabbitmq user).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_link import agent_drain, raw_paho  # noqa: E402
from bench_outbox import PAYLOAD  # noqa: E402

from tests.brokers import NatsBroker, RabbitBroker  # noqa: E402
from tests.mqtt_fixtures import Broker  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=500, help="messages in flight")
    parser.add_argument("--repeats", type=int, default=3, help="raw and agent runs, in turns")
    parser.add_argument("--brokers", default="mosquitto,nats,rabbitmq")
    args = parser.parse_args()
    payloads = [PAYLOAD % uuid.uuid4().hex.encode() for _ in range(args.count)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.brokers.split(","):
            folder = Path(tmp) / name
            broker: Broker | NatsBroker | RabbitBroker
            if name == "mosquitto":
                broker = Broker(folder)
            elif name == "nats":
                broker = NatsBroker(folder)
            else:
                broker = RabbitBroker()
            broker.start()
            raws, drains = [], []
            try:
                for i in range(args.repeats):  # in turns: a busy moment falls on both alike
                    raws.append(raw_paho(broker.port, payloads, args.window, name == "mosquitto"))
                    run = folder / f"run{i}"
                    run.mkdir(parents=True)
                    drains.append(agent_drain(broker.port, payloads, run, args.window, "auto")[0])
            finally:
                if isinstance(broker, RabbitBroker):
                    broker.remove()
                else:
                    broker.stop()
            rows.append((name, statistics.median(drains), statistics.median(raws), drains, raws))
    print(f"{args.count} messages of {len(PAYLOAD)} bytes, QoS 1, window {args.window}, ")
    print(f"median of {args.repeats} runs each, in turns\n")
    print(f"{'broker':<12}{'agent msg/s':>12}{'raw paho':>12}{'ratio':>8}")
    for name, drain, raw, drains, raws in rows:
        print(f"{name:<12}{drain:>12.0f}{raw:>12.0f}{drain / raw:>8.2f}")
        print(f"{'':<12}  runs: agent {', '.join(f'{d:.0f}' for d in drains)}")
        print(f"{'':<12}        raw   {', '.join(f'{r:.0f}' for r in raws)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
