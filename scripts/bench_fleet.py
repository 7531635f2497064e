#!/usr/bin/env python3
"""Fleet benchmark, against a local Mosquitto started here, each figure beside a baseline
measured in the same run:

- command round trip (send to reply) while a pipeline runs, against the broker's own
  round trip (publish to a topic the sender itself subscribes);
- a 4 MB model file pulled over MQTT chunks by the device's link, against the same bytes
  published by raw paho to a subscriber in chunks of the same size;
- hot swap of a model under a 15 fps pipeline: the longest gap between results around each
  swap, against the frame interval.

    .venv/bin/python scripts/bench_fleet.py [--pings 300] [--swaps 10]

Targets: command p99 < 50 ms; transfer >= 5 MB/s; a swap stalls the pipeline by at most
one frame interval.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
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

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config.load import load_settings  # noqa: E402
from edge_agent.config.settings import MqttSettings  # noqa: E402
from edge_agent.fleet.serve import ChunkServer  # noqa: E402
from edge_agent.link import topics  # noqa: E402
from edge_agent.link.mqtt import Message, MqttLink, PublishError  # noqa: E402
from edge_agent.payloads import ResultPayload  # noqa: E402
from edge_agent.sinks import ResultSink  # noqa: E402
from edge_agent.updates.transfer import ChunkPull  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2_int8.tflite"
FPS = 15
CONFIG = """
[device]
id = "bench"
state_dir = "{state}"

[models.mobilenet]
path = "{model}"
threads = 1

[sources.camera]
kind = "synthetic"
pattern = "moving_box"
fps = {fps}

[pipelines.classify]
source = "camera"
model = "mobilenet"

[mqtt]
enabled = {mqtt}
port = {port}

[logging]
status_interval_s = 0
"""


class TimedSink(ResultSink):
    def __init__(self) -> None:
        self.arrivals: list[float] = []

    def put(self, payload: ResultPayload, on_durable: object = None) -> None:
        self.arrivals.append(time.monotonic())

    def close(self, timeout: float = 5.0) -> None:
        pass


def operator(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    # As the agent's link does: a small message is not held back for a delayed ACK.
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    client.loop_start()
    return client


def percentiles(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(values, (50, 99))
    return float(p50) * 1000, float(p99) * 1000


def round_trips(client: mqtt.Client, count: int, send: str, listen: str, body: bool) -> list[float]:
    """Sequential requests: each waits for its answer on `listen`."""
    got = threading.Event()
    client.on_message = lambda c, u, m: got.set()
    client.subscribe(listen, qos=1)
    time.sleep(0.3)  # the SUBACK
    times = []
    for i in range(count):
        got.clear()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = listen
        props.CorrelationData = str(i).encode()
        payload = json.dumps({"request_id": uuid.uuid4().hex}).encode() if body else b"x"
        started = time.perf_counter()
        client.publish(send, payload, qos=1, properties=props)
        if not got.wait(5):
            raise RuntimeError(f"no answer on {listen}")
        times.append(time.perf_counter() - started)
    client.unsubscribe(listen)
    return times


def bench_commands(port: int, folder: Path, pings: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.toml"
    path.write_text(
        CONFIG.format(state=folder / "state", model=MODEL, fps=FPS, mqtt="true", port=port)
    )
    agent = Agent(load_settings(path), config_path=path)
    agent.start()
    client = operator(port)
    try:
        while agent.link is None or not agent.link.connected.is_set():
            time.sleep(0.05)
        time.sleep(0.5)
        broker = round_trips(client, pings, "bench/echo", "bench/echo", body=False)
        command = round_trips(client, pings, "edge/bench/cmd/ping", "ops/replies", body=True)
    finally:
        client.loop_stop()
        client.disconnect()
        agent.stop()
    (b50, b99), (c50, c99) = percentiles(broker), percentiles(command)
    row("command round trip p50 [ms]", c50, b50, "")
    row("command round trip p99 [ms]", c99, b99, "< 50 ms")


def bench_transfer(port: int, folder: Path, chunk_size: int, window: int) -> None:
    size = MODEL.stat().st_size
    # Baseline: the same bytes, chunk by chunk, from raw paho to a raw subscriber.
    received = threading.Event()
    count = 0
    chunks = -(-size // chunk_size)

    def on_chunk(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        nonlocal count
        count += 1
        if count == chunks:
            received.set()

    sink = operator(port)
    sink.on_message = on_chunk
    sink.subscribe("raw/#", qos=1)
    time.sleep(0.3)
    source = operator(port)
    data = MODEL.read_bytes()
    started = time.perf_counter()
    for i in range(chunks):
        source.publish(f"raw/{i}", data[i * chunk_size : (i + 1) * chunk_size], qos=1)
    received.wait(60)
    raw_s = time.perf_counter() - started

    # The device's link pulling the chunks the operator's ChunkServer answers.
    server = ChunkServer(source, "edge", "bench", {"model": MODEL}, chunk_size).start()
    link = MqttLink(MqttSettings(enabled=True, port=port), "bench-device", lambda: {})
    pull: ChunkPull | None = None

    def on_message(message: Message) -> None:
        if isinstance(message.topic, topics.TransferData) and pull is not None:
            pull.feed(message.topic.index, message.payload)

    def publish(topic: str, payload: bytes) -> bool:
        try:
            link.publish(topic, payload)
        except PublishError:
            return False
        return True

    link.subscribe(topics.transfer_data_filter("edge", "bench-device"), on_message)
    link.start()
    link.connected.wait(10)
    time.sleep(0.3)
    part = folder / "model.part"
    part.unlink(missing_ok=True)
    pull = ChunkPull(
        publish,
        topics.TransferGet("edge", "bench-device", "bench").topic,
        "model",
        part,
        size,
        chunk_size,
        window,
        timeout_s=2.0,
    )
    started = time.perf_counter()
    pull.run(threading.Event())
    pull_s = time.perf_counter() - started
    assert part.read_bytes() == data
    server.stop()
    link.stop()
    for client in (sink, source):
        client.loop_stop()
        client.disconnect()
    mb = size / 1e6
    row(f"{mb:.1f} MB model over MQTT chunks [MB/s]", mb / pull_s, mb / raw_s, ">= 5 MB/s")


def bench_swap(folder: Path, swaps: int) -> None:
    path = folder / "swap.toml"
    path.write_text(
        CONFIG.format(state=folder / "swap-state", model=MODEL, fps=FPS, mqtt="false", port=1883)
    )
    sink = TimedSink()
    agent = Agent(load_settings(path), sink=sink)
    agent.start()
    interval = 1 / FPS
    worst = 0.0
    normal: list[float] = []
    try:
        time.sleep(2.0)  # warm
        for _ in range(swaps):
            before = len(sink.arrivals)
            time.sleep(0.5)
            steady = np.diff(sink.arrivals[before:])
            normal.extend(steady.tolist())
            mark = len(sink.arrivals)
            agent.host.load_current("mobilenet", agent.settings)
            time.sleep(0.5)
            around = np.diff(sink.arrivals[mark - 1 :])
            worst = max(worst, float(around.max()))
    finally:
        agent.stop()
    typical = statistics.median(normal)
    stall = max(0.0, worst - typical)
    row("longest result gap at a swap [ms]", worst * 1000, typical * 1000, "")
    row("swap stall [frame intervals]", stall / interval, 1.0, "<= 1")


def row(label: str, value: float, baseline: float, target: str) -> None:
    ratio = value / baseline if baseline else float("nan")
    print(f"{label:<40}{value:>10.2f}{baseline:>10.2f}{ratio:>8.2f}  {target}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=262144)
    parser.add_argument("--window", type=int, default=8)
    args = parser.parse_args()
    print(f"{'figure':<40}{'agent':>10}{'baseline':>10}{'ratio':>8}  target")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for nodelay in (False, True):
            # Mosquitto's default leaves Nagle's algorithm on for its clients' sockets:
            # a small reply can wait out a delayed ACK. set_tcp_nodelay turns it off.
            print(f"-- broker {'with' if nodelay else 'without'} set_tcp_nodelay")
            broker, port = start_broker(folder, *(["set_tcp_nodelay true"] if nodelay else []))
            try:
                bench_commands(port, folder / f"cmd-{nodelay}", args.pings)
                bench_transfer(port, folder, args.chunk_size, args.window)
            finally:
                broker.terminate()
                broker.wait(5)
        bench_swap(folder, args.swaps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
