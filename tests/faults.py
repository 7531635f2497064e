"""Fault scenarios run against the real agent process and real Mosquitto brokers: used by
tests/test_reliability.py with small counts and by scripts/fault_inject.py with large ones.

What "lost" means here: a result the agent committed to its outbox that never reached a
subscriber. The broker keeps a persistent session for the subscriber (persistence on), so a
broker restart does not itself lose what it had acknowledged."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config.settings import OutboxSettings
from edge_agent.outbox.store import Message, Outbox
from tests.agent_helpers import config_text, wait_until
from tests.mqtt_fixtures import Broker, TcpProxy

ROOT = Path(__file__).resolve().parent.parent
DEVICE = "test-device"
RESULTS = f"edge/{DEVICE}/results/#"

AGENT_BODY = """
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = {fps}

[pipelines.boxes]
source = "pattern"
model = "detector"

[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
keepalive_s = 5
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[logging]
status_interval_s = 0
"""


def persistent_broker(directory: Path) -> Broker:
    """A broker that keeps sessions and queued messages across a restart, as a production
    broker does, and never drops what it queues for a slow subscriber (Mosquitto's default
    is to drop past 1,000 queued messages: the broker's loss, not the agent's)."""
    return Broker(
        directory,
        extra_config=[
            "persistence true",
            f"persistence_location {directory}/",
            "max_queued_messages 0",
        ],
    )


class DurableSubscriber:
    """A subscriber with a session that outlives its connection (MQTT 5, clean_start false,
    session expiry of an hour): what it missed while away is queued for it by the broker."""

    def __init__(self, port: int, topic: str = RESULTS) -> None:
        self.port = port
        self.topic = topic
        self.ids: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"durable-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self._subscribed = threading.Event()

    def start(self) -> DurableSubscriber:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"no SUBACK from the broker on port {self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        key = json.loads(msg.payload)["id"]
        with self._lock:
            self.ids[key] += 1

    def received(self) -> set[str]:
        with self._lock:
            return set(self.ids)

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.ids.values())


@dataclass
class Report:
    stored: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)  # the agent's RSS, sampled

    def lines(self) -> list[str]:
        out = [
            f"stored {self.stored}, delivered {self.delivered}, lost {self.lost}, "
            f"duplicates {self.duplicates}, {self.seconds:.1f} s"
        ]
        if self.rss_mb:
            out.append(
                f"agent RSS while draining: start {self.rss_mb[0]:.1f} MB, "
                f"peak {max(self.rss_mb):.1f} MB, end {self.rss_mb[-1]:.1f} MB"
            )
        return out + self.notes


def stored_results(state: Path, column: str) -> list[Any]:
    """One column (id, payload, ...) of every result row in the agent's outbox, read beside
    the running agent."""
    path = state / "outbox.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute(f"SELECT {column} FROM messages WHERE class='result'")]
    except sqlite3.OperationalError:
        return []  # the agent has created the file but not yet its table
    finally:
        db.close()


def stored_result_ids(state: Path) -> set[str]:
    return set(stored_results(state, "id"))


def outbox_states(state: Path, ids: set[str]) -> dict[str, int]:
    """How many of `ids` are pending, delivered (acknowledged) or set aside."""
    names = {0: "pending", 1: "delivered", 2: "set_aside"}
    db = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True)
    try:
        found: Counter[str] = Counter()
        for key in ids:
            row = db.execute("SELECT state FROM messages WHERE id=?", (key,)).fetchone()
            found[names[row[0]] if row else "absent"] += 1
        return dict(found)
    finally:
        db.close()


def write_config(work: Path, port: int, fps: int) -> Path:
    config = work / "agent.toml"
    config.write_text(config_text(work / "state", AGENT_BODY.format(port=port, fps=fps)))
    return config


def agent_process(config: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    return subprocess.Popen(command, cwd=ROOT, stderr=subprocess.DEVNULL)


def stop_agent(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def kill_while_offline(work: Path, rounds: int, seed: int = 0) -> Report:
    """Kill -9 the agent `rounds` times while it produces results with the broker down;
    then bring the broker up, start the agent once more and check every stored result
    arrives."""
    rng = random.Random(seed)
    broker = persistent_broker(work / "broker").start()
    port = broker.port
    broker.stop()
    config = write_config(work, port, fps=100)
    state = work / "state"
    report = Report()
    started = time.monotonic()
    try:
        for _ in range(rounds):
            before = len(stored_result_ids(state))
            proc = agent_process(config)
            wait_until(
                lambda before=before: len(stored_result_ids(state)) > before + 20,
                timeout=60,
                what="new results committed",
            )
            time.sleep(rng.uniform(0.0, 1.0))  # at a random point of its work
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        committed = stored_result_ids(state)
        report.stored = len(committed)
        broker.start()
        subscriber = DurableSubscriber(port).start()
        proc = agent_process(config)
        try:
            wait_until(
                lambda: committed <= subscriber.received(), timeout=120, what="every stored result"
            )
        finally:
            stop_agent(proc)
            subscriber.stop()
        got = subscriber.received()
        report.delivered = len(committed & got)
        report.lost = len(committed - got)
        report.duplicates = subscriber.duplicates()
    finally:
        broker.stop()
    report.seconds = time.monotonic() - started
    return report


def fill_outbox(state: Path, count: int) -> set[str]:
    """`count` results committed as if made while offline."""
    box = Outbox(state / "outbox.db", OutboxSettings(durability="normal"))
    ids: set[str] = set()
    now = time.time()
    try:
        for start in range(0, count, 5000):
            batch = []
            for _ in range(min(5000, count - start)):
                key = uuid.uuid4().hex
                body = {"schema": "edge-agent/result/1", "id": key, "device": DEVICE}
                batch.append(
                    Message(
                        key,
                        f"edge/{DEVICE}/results/backlog",
                        json.dumps(body).encode(),
                        1,
                        "result",
                        now,
                    )
                )
                ids.add(key)
            box.append(batch)
    finally:
        box.close()
    return ids


def drain_through_faults(work: Path, count: int) -> Report:
    """A backlog of `count` results drained through a proxy; the broker is restarted at a
    third of the way and the connection cut at two thirds. Every result must arrive."""
    broker = persistent_broker(work / "broker").start()
    proxy = TcpProxy(broker).start()
    state = work / "state"
    backlog = fill_outbox(state, count)
    config = write_config(work, proxy.port, fps=1)
    subscriber = DurableSubscriber(broker.port).start()
    report = Report(stored=len(backlog))
    started = time.monotonic()
    proc = agent_process(config)
    agent = psutil.Process(proc.pid)
    faults = [(count // 3, "broker restarted"), (2 * count // 3, "connection cut")]
    try:
        deadline = time.monotonic() + max(120.0, count / 500)
        while not backlog <= subscriber.received():
            if time.monotonic() > deadline:
                missing = backlog - subscriber.received()
                raise AssertionError(
                    f"{len(missing)} of {count} results not delivered; their outbox states: "
                    f"{outbox_states(state, missing)}; {report.notes}"
                )
            if subscriber.ids:  # from the first result on: start-up is not the drain
                report.rss_mb.append(agent.memory_info().rss / 2**20)
            if faults and len(subscriber.ids) >= faults[0][0]:
                at, what = faults.pop(0)
                if what == "broker restarted":
                    broker.restart()
                else:
                    proxy.cut()
                report.notes.append(f"{what} after {at} results received")
            time.sleep(0.1)
    finally:
        stop_agent(proc)
        subscriber.stop()
        proxy.stop()
        broker.stop()
    got = subscriber.received()
    report.delivered = len(backlog & got)
    report.lost = len(backlog - got)
    report.duplicates = subscriber.duplicates()
    report.seconds = time.monotonic() - started
    return report
