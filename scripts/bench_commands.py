#!/usr/bin/env python3
"""Command round trip as an operator sees it: `edge-agent run` as its own process on the
shipped demo config (BlazeFace on a clip of photos, the default pipeline), a Mosquitto
started here, and an operator client in this process sending `ping` with an MQTT 5
response topic, one at a time, timing send to reply. Beside it, in the same run: the
broker's own round trip (publish to a topic the operator itself subscribes), and the same
pings to the agent with its pipeline paused (idle).

Each figure is measured against a stock Mosquitto and one with `set_tcp_nodelay true`, and
on the stock broker with two operator clients: a plain paho client, and one that sets
TCP_QUICKACK after each packet as `edge-fleet` does (the agent always does).

    .venv/bin/python scripts/bench_commands.py [--pings 200]

Target: p99 <= 5 ms with set_tcp_nodelay while the default pipeline runs.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_link import start_broker  # noqa: E402

from edge_agent.link.mqtt import quick_ack  # noqa: E402

DEVICE = "bench"
CONFIG = ROOT / "configs" / "demo.toml"


class Operator:
    """One MQTT 5 client: publishes a request, waits for the message on its reply topic."""

    def __init__(self, port: int, quick: bool) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
        self.got = threading.Event()
        self.last = b""
        self.quick = quick
        self.client.on_message = self._on_message
        if quick:
            self.client.on_publish = lambda client, *_: quick_ack(client)
        self.client.connect("127.0.0.1", port)
        # As the agent's link does: a small message is not held back for a delayed ACK.
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self.quick:
            quick_ack(client)
        self.last = msg.payload
        self.got.set()

    def listen(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.3)  # the SUBACK

    def call(self, topic: str, body: dict[str, object], reply_topic: str) -> float:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        self.got.clear()
        started = time.perf_counter()
        self.client.publish(topic, json.dumps(body).encode(), qos=1, properties=props)
        if not self.got.wait(10):
            raise RuntimeError(f"no answer on {reply_topic} to {topic}")
        return time.perf_counter() - started

    def command(self, name: str, **fields: object) -> dict[str, object]:
        self.call(
            f"edge/{DEVICE}/cmd/{name}",
            {"request_id": uuid.uuid4().hex[:16], **fields},
            "ops/replies",
        )
        reply: dict[str, object] = json.loads(self.last)
        return reply

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_agent(port: int, state: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EDGE_AGENT_DEVICE__ID": DEVICE,
        "EDGE_AGENT_DEVICE__STATE_DIR": str(state),
        "EDGE_AGENT_MQTT__ENABLED": "true",
        "EDGE_AGENT_MQTT__PORT": str(port),
        "EDGE_AGENT_OUTPUT__JSONL": "",  # results to the outbox and broker, not stdout
    }
    return subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "edge-agent"), "run", "--config", str(CONFIG)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def ms(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(values, (50, 99))
    return float(p50) * 1000, float(p99) * 1000


def measure(folder: Path, nodelay: bool, quick: bool, pings: int) -> dict[str, tuple[float, float]]:
    broker, port = start_broker(folder, *(["set_tcp_nodelay true"] if nodelay else []))
    agent = start_agent(port, folder / "state")
    operator = Operator(port, quick)
    try:
        operator.listen("ops/replies")
        deadline = time.monotonic() + 60
        while True:  # online and inferring
            try:
                status = operator.command("status")
                result = status.get("result")
                pipelines = result.get("pipelines", {}) if isinstance(result, dict) else {}
                if pipelines.get("faces", {}).get("results", 0) > 0:
                    break
            except RuntimeError:
                pass
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError("the agent did not come up with its pipeline running")
            time.sleep(0.5)
        operator.listen("bench/echo")
        figures = {
            "broker": ms([operator.call("bench/echo", {}, "bench/echo") for _ in range(pings)])
        }
        ping = f"edge/{DEVICE}/cmd/ping"

        def pings_now() -> list[float]:
            return [
                operator.call(ping, {"request_id": uuid.uuid4().hex[:16]}, "ops/replies")
                for _ in range(pings)
            ]

        figures["running"] = ms(pings_now())
        operator.command("pause", pipeline="faces")
        time.sleep(0.5)
        figures["idle"] = ms(pings_now())
        operator.command("resume", pipeline="faces")
        return figures
    finally:
        operator.close()
        agent.terminate()
        agent.wait(15)
        broker.terminate()
        broker.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=200)
    args = parser.parse_args()
    print(f"command round trip, {args.pings} pings each, ms (p50 / p99)")
    head = f"{'broker, operator client':<44}"
    print(head + f"{'broker echo':>16}{'agent paused':>16}{'agent running':>16}")
    cases = [
        (False, False, "stock Mosquitto, plain paho"),
        (False, True, "stock Mosquitto, quick-ack (edge-fleet)"),
        (True, False, "set_tcp_nodelay true, plain paho"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (nodelay, quick, label) in enumerate(cases):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            f = measure(folder, nodelay, quick, args.pings)
            cells = [f"{f[k][0]:6.1f} / {f[k][1]:5.1f}" for k in ("broker", "idle", "running")]
            print(f"{label:<44}" + "".join(f"{c:>16}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
