"""Private NATS and RabbitMQ brokers for the tests, beside tests/mqtt_fixtures' Mosquitto.

Each instance listens on free 127.0.0.1 ports, keeps its data in its own folder and is
never the machine's own service (Mosquitto 1883, RabbitMQ 5672/25672, NATS 4222). Both
speak MQTT 3.1.1 only, so ``protocol`` says what a test client must use. They have the
surface of mqtt_fixtures.Broker a test needs: ``host``, ``port``, ``start()``, ``stop()``,
``kill()``, ``restart()`` (same ports, data kept), ``running`` and ``log_text()``, so a
TcpProxy and the Probe clients work with them alike.

NATS 2.9 serves MQTT from JetStream: the config needs ``server_name``, a ``jetstream
{ store_dir }`` block and ``mqtt { listen }``; sessions and retained messages live in the
store folder and survive a restart. It starts in well under a second.

RabbitMQ 3.10 with rabbitmq_mqtt takes about 10 s to start, so tests share one per session.
Its scripts drop to the ``rabbitmq`` user, which must own the node's folder (made under /tmp,
not pytest's 0700 tmp). Users, permissions and topic permissions are loaded from a
definitions file at boot: rabbitmqctl needs half a minute per call on this kind of machine.
The node is stopped by SIGTERM to its Erlang VM (what ``rabbitmqctl stop`` asks for).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from paho.mqtt.enums import MQTTProtocolVersion

from tests.mqtt_fixtures import HOST, free_port

RABBIT_DIST_PORT = 25672  # the machine's own node's distribution port: never ours


def find(binary: str) -> Path | None:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin")
    return Path(found) if found else None


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        if _listening(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def _quiet_port() -> int:
    """A free port below Linux's ephemeral range (32768 up) and away from the machine's
    RabbitMQ ports: RabbitMQ binds its listeners seconds after it starts, and a port the
    kernel handed out for that moment (free_port) may meanwhile become the local port of
    some outgoing connection."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        if port in (RABBIT_DIST_PORT, RABBIT_DIST_PORT - 20000):
            continue
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
        return port


def _send(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _alive(pids: list[int]) -> list[int]:
    """Those of `pids` that still exist and are not zombies."""
    living = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            living.append(pid)
    return living


def _descendants(root: int) -> list[int]:
    """Every living process below `root`, by /proc's parent links."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class _Process:
    """One broker process with its log file; started and stopped by the subclasses."""

    name = "broker"
    protocol = MQTTProtocolVersion.MQTTv311
    start_timeout = 10.0

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = 0
        self.log_path = directory / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Pick the ports (the first time only) and write the config."""
        raise NotImplementedError

    def start(self) -> _Process:
        if self.running:
            return self
        self._prepare()
        args, env = self._command()
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.directory,
        )
        try:
            _wait_listening(self.port, self._proc, self.start_timeout, f"{self.name}")
        except RuntimeError as exc:
            self.kill()
            raise RuntimeError(f"{exc}:\n{self.log_text()[-3000:]}") from None
        return self

    def _pids(self) -> list[int]:
        """The process we started and everything below it (RabbitMQ's `su` puts the Erlang
        VM in a session of its own, out of reach of a process-group signal)."""
        if self._proc is None:
            return []
        return [self._proc.pid, *_descendants(self._proc.pid)]

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to each of its processes, SIGKILL to those still there after `timeout`."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL to each of its processes, as a crash (or a power cut) would."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> None:
        pids = self._pids()
        _send(pids, sig)
        deadline = time.monotonic() + timeout
        while _alive(pids) and time.monotonic() < deadline:
            if self._proc is not None:
                self._proc.poll()  # reaps it, so it stops counting as alive
            time.sleep(0.05)
        if _alive(pids):
            _send(pids, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(10)
        self._proc = None
        self._close_log()

    def restart(self) -> _Process:
        self.stop()
        return self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> _Process:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.host}:{self.port}, {self.directory})"


class NatsBroker(_Process):
    """``nats-server -c FILE`` with JetStream and an MQTT listener."""

    name = "nats"

    def __init__(self, directory: Path, *, max_payload: int | None = None) -> None:
        super().__init__(directory)
        binary = find("nats-server")
        if binary is None:
            raise FileNotFoundError("nats-server is not installed")
        self.binary = binary
        self.max_payload = max_payload
        self.client_port = 0
        self.config_path = directory / "nats.conf"

    def _prepare(self) -> None:
        if not self.port:
            self.port, self.client_port = free_port(), free_port()
        lines = [
            f"server_name: edge-test-{self.port}",
            f"listen: {HOST}:{self.client_port}",
            f'jetstream {{ store_dir: "{self.directory / "jetstream"}" }}',
            f"mqtt {{ listen: {HOST}:{self.port} }}",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        return [str(self.binary), "-c", str(self.config_path)], None


@dataclass(frozen=True)
class RabbitUser:
    """A RabbitMQ user; `write` is the regular expression of the routing keys (MQTT topics
    with `.` for `/`) it may publish to on amq.topic."""

    password: str
    write: str = ".*"


def _password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


class RabbitBroker(_Process):
    """A private RabbitMQ node (``NAME@localhost``) with the MQTT plugin. Anonymous MQTT
    clients are the ``guest`` user, who may do anything; `users` adds more."""

    name = "rabbitmq"
    start_timeout = 60.0

    def __init__(
        self, directory: Path | None = None, *, users: Mapping[str, RabbitUser] | None = None
    ) -> None:
        # Under /tmp, traversable by the rabbitmq user (pytest's tmp folders are 0700).
        folder = directory or Path(tempfile.mkdtemp(prefix="edge-rabbit-"))
        super().__init__(folder)
        binary = find("rabbitmq-server")
        if binary is None:
            raise FileNotFoundError("rabbitmq-server is not installed")
        self.binary = binary
        self.users = {"guest": RabbitUser("guest"), **(users or {})}
        self.node = f"edge-test-{secrets.token_hex(4)}@localhost"
        self.amqp_port = 0
        self.dist_port = 0
        self.log_path = folder / "server.log"

    def _prepare(self) -> None:
        if not self.port:
            self.port, self.amqp_port, self.dist_port = (_quiet_port() for _ in range(3))
        d = self.directory
        definitions = {
            "vhosts": [{"name": "/"}],
            "users": [
                {
                    "name": name,
                    "password_hash": _password_hash(user.password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": "",
                }
                for name, user in self.users.items()
            ],
            "permissions": [
                {"user": name, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
                for name in self.users
            ],
            "topic_permissions": [
                {
                    "user": name,
                    "vhost": "/",
                    "exchange": "amq.topic",
                    "write": u.write,
                    "read": ".*",
                }
                for name, u in self.users.items()
            ],
        }
        (d / "definitions.json").write_text(json.dumps(definitions))
        (d / "rabbit.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = {HOST}:{self.amqp_port}",
                    f"mqtt.listeners.tcp.default = {HOST}:{self.port}",
                    "mqtt.allow_anonymous = true",
                    "loopback_users = none",
                    f"load_definitions = {d / 'definitions.json'}",
                ]
            )
            + "\n"
        )
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        rabbit = pwd.getpwnam("rabbitmq")
        for path in [d, *d.rglob("*")]:
            if path != self.log_path:
                os.chown(path, rabbit.pw_uid, rabbit.pw_gid)

    def _command(self) -> tuple[list[str], dict[str, str] | None]:
        d = self.directory
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbit"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "HOME": str(d),
        }
        return [str(self.binary)], env

    def start(self) -> RabbitBroker:
        """Started once the node itself logs its MQTT listener (a bare connect could reach
        a port some other socket holds)."""
        super().start()
        ready = f"started MQTT TCP listener on {HOST}:{self.port}"
        deadline = time.monotonic() + self.start_timeout
        while ready not in self.node_log():
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.node}: no {ready!r} in its log")
            time.sleep(0.1)
        return self

    def node_log(self) -> str:
        """The node's own log (connections, authorization failures)."""
        path = self.directory / "log" / f"{self.node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        """Stops the node (by SIGKILL: its data goes too) and deletes its folder."""
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)
