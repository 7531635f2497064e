"""Brokers for scripts/fleet_sim.py, each a private process on a free port of 127.0.0.1 with
its own data folder (the machine's own services are never touched), and the durable
subscriber that counts every result the fleet delivered.

- Mosquitto: tests/mqtt_fixtures.py's Broker, with persistence on (sessions and queued
  messages survive a restart, as on a production broker) and no limit on the messages
  queued for one client.
- NATS: nats-server with JetStream and its MQTT listener (MQTT 3.1.1 only); sessions,
  retained messages and QoS 1 messages live in JetStream, on disk."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqtt_fixtures import Broker, free_port

HOST = "127.0.0.1"


class SimBroker(Protocol):
    name: str
    protocol: str  # what the devices speak to it

    @property
    def port(self) -> int: ...

    @property
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Mosquitto:
    name = "mosquitto"
    protocol = "5"

    def __init__(self, folder: Path) -> None:
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.broker = Broker(
            folder,
            extra_config=[
                # After the fixture's "persistence false": the last setting wins.
                "persistence true",
                f"persistence_location {data}/",
                "autosave_interval 0",  # saved at a clean stop only
                "max_queued_messages 0",  # the collector's queue: no limit
                "max_inflight_messages 0",
                "connection_messages false",
                "log_type error",
                "log_type warning",
            ],
        )

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def pid(self) -> int | None:
        return self.broker.pid

    def start(self) -> None:
        self.broker.start(timeout=30)

    def stop(self) -> None:
        self.broker.stop(timeout=30)


class Nats:
    name = "nats"
    protocol = "3.1.1"

    def __init__(self, folder: Path, binary: str | None = None, lame_duck: bool = False) -> None:
        found = binary or shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.binary = found
        # Stopped in lame-duck mode: no new clients, the connected ones closed over
        # lame_duck_duration (30 s, NATS's least), then the exit.
        self.lame_duck = lame_duck
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._port = 0
        self._client_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        running = self._proc is not None and self._proc.poll() is None
        return self._proc.pid if running and self._proc else None

    def _write_config(self) -> Path:
        path = self.folder / "nats.conf"
        path.write_text(
            f"""# Written by scripts/fleet_sim_brokers.py: one private NATS for a fleet simulation.
server_name: fleet_sim
listen: {HOST}:{self._client_port}
jetstream {{
  store_dir: "{self.folder / "jetstream"}"
}}
mqtt {{
  listen: {HOST}:{self._port}
}}
lame_duck_duration: "30s"
lame_duck_grace_period: "1s"
"""
        )
        return path

    def start(self) -> None:
        if not self._port:
            self._port, self._client_port = free_port(HOST), free_port(HOST)
        config = self._write_config()
        self._log = (self.folder / "nats.log").open("ab")
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection((HOST, self._port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server's MQTT listener not up on {self._port} within 60 s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            if self.lame_duck:
                subprocess.run(
                    [self.binary, "--signal", f"ldm={proc.pid}"], check=True, capture_output=True
                )
            else:
                proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


def make_broker(name: str, folder: Path, lame_duck: bool = False) -> SimBroker:
    if name == "mosquitto":
        return Mosquitto(folder)
    if name == "nats":
        return Nats(folder, lame_duck=lame_duck)
    raise ValueError(f"broker {name!r}: mosquitto or nats")


class Collector:
    """A durable subscriber to every device's results (QoS 1, a persistent session): what
    the broker acknowledged to a device reaches it even across a broker restart. Counts
    each result id, so the orchestrator can tell lost from duplicated."""

    def __init__(self, port: int, prefix: str = "edge") -> None:
        self.counts: dict[str, int] = {}
        self.received = 0
        self.last_at = time.monotonic()
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="fleet-sim-collector",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.filter = f"{prefix}/+/results/#"
        self.port = port

    def start(self) -> Collector:
        self.client.connect(HOST, self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(30):
            raise RuntimeError("the collector got no SUBACK")
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: object, *args: object) -> None:
        # The session keeps the subscription; subscribing again on every connect is harmless.
        client.subscribe(self.filter, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            message_id = json.loads(msg.payload)["id"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            self.counts[message_id] = self.counts.get(message_id, 0) + 1
            self.received += 1
            self.last_at = time.monotonic()

    def quiet_for(self) -> float:
        with self._lock:
            return time.monotonic() - self.last_at
