"""Fault scenarios run against the real agent process and real Mosquitto brokers: used by
tests/test_reliability.py with small counts and by scripts/fault_inject.py with large ones.

What "lost" means here: a result the agent committed to its outbox that never reached a
subscriber (in the disk-full scenario: one the agent made that neither reached a subscriber
nor was counted as dropped). The broker keeps a persistent session for the subscriber
(persistence on), so a broker restart does not itself lose what it had acknowledged. Every
agent also writes the JSON-lines copy; it must hold nothing the outbox lacks."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
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

[output]
jsonl = "{copy}"

[logging]
status_interval_s = 0
"""

COPY = "results.jsonl"


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
    copy_extra: int | None = None  # results in the JSON-lines copy the outbox lacks
    notes: list[str] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)  # the agent's RSS, sampled
    # Acknowledged rows the agent sent again after a drop (mqtt.resend_acked_within_s),
    # as its log says: each one arrives twice from a broker that lost nothing.
    put_back: int = 0

    def lines(self) -> list[str]:
        out = [
            f"stored {self.stored}, delivered {self.delivered}, lost {self.lost}, "
            f"duplicates {self.duplicates} ({self.put_back} put back after a drop), "
            f"{self.seconds:.1f} s"
        ]
        if self.copy_extra is not None:
            out.append(f"results in the JSON-lines copy but not in the outbox: {self.copy_extra}")
        if self.rss_mb:
            out.append(
                f"agent RSS while draining: start {self.rss_mb[0]:.1f} MB, "
                f"peak {max(self.rss_mb):.1f} MB, end {self.rss_mb[-1]:.1f} MB"
            )
        return out + self.notes


def stored_results(state: Path, column: str, where: str = "1") -> list[Any]:
    """One column (id, payload, ...) of every result row in the agent's outbox (or those
    matching `where`, "state=0": pending), read beside the running agent."""
    path = state / "outbox.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        query = f"SELECT {column} FROM messages WHERE class='result' AND {where}"
        return [row[0] for row in db.execute(query)]
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


def write_config(work: Path, port: int, fps: int, more: str = "") -> Path:
    config = work / "agent.toml"
    body = AGENT_BODY.format(port=port, fps=fps, copy=work / COPY) + more
    config.write_text(config_text(work / "state", body))
    return config


def agent_process(
    config: Path, log: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """The agent as a real process; its log appended to `log`, if given."""
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    err = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(command, cwd=ROOT, stderr=err, env=env)
    finally:
        if log is not None:
            err.close()  # type: ignore[union-attr]


def stop_agent(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, and the exit status (killed after 10 s: then not 0)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        return -9


def copied_ids(work: Path) -> set[str]:
    """The ids in the JSON-lines copy (a line cut short by a kill is left out)."""
    path = work / COPY
    ids = set()
    if path.exists():
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                ids.add(json.loads(line)["id"])
    return ids


def kill_while_offline(
    work: Path, rounds: int, seed: int = 0, commit_interval_ms: float | None = None
) -> Report:
    """Kill -9 the agent `rounds` times while it produces results with the broker down;
    then bring the broker up, start the agent once more and check every stored result
    arrives. A longer commit interval keeps more results waiting for their commit at
    each kill (the JSON-lines copy must not have them)."""
    rng = random.Random(seed)
    broker = persistent_broker(work / "broker").start()
    port = broker.port
    broker.stop()
    more = f"\n[outbox]\ncommit_interval_ms = {commit_interval_ms}\n" if commit_interval_ms else ""
    config = write_config(work, port, fps=100, more=more)
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
        report.copy_extra = len(copied_ids(work) - committed)
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
    log = work / "agent.log"
    proc = agent_process(config, log)
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
    report.put_back = _put_back(log)
    got = subscriber.received()
    report.delivered = len(backlog & got)
    report.lost = len(backlog - got)
    report.duplicates = subscriber.duplicates()
    report.seconds = time.monotonic() - started
    return report


def chaos_under_load(
    work: Path, kills: int, restarts: int, cuts: int, seed: int = 0, fps: int = 100
) -> Report:
    """The agent makes results online, through a proxy, while it is killed with SIGKILL
    `kills` times, the broker restarted `restarts` times and the connection cut `cuts`
    times, in a random order at random moments. Then it is stopped with SIGTERM and run
    once more to drain: every result ever stored must arrive, and the JSON-lines copy must
    hold nothing the outbox lacks."""
    rng = random.Random(seed)
    broker = persistent_broker(work / "broker").start()
    proxy = TcpProxy(broker).start()
    config = write_config(work, proxy.port, fps=fps)
    state = work / "state"
    log = work / "agent.log"
    subscriber = DurableSubscriber(broker.port).start()
    faults = ["kill"] * kills + ["broker restart"] * restarts + ["cut"] * cuts
    rng.shuffle(faults)
    report = Report()
    started = time.monotonic()
    proc = agent_process(config, log)
    try:
        for fault in faults:
            _making_results(state)
            time.sleep(rng.uniform(0.0, 1.0))  # at a random point of its work
            if fault == "kill":
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = agent_process(config, log)
            elif fault == "broker restart":
                broker.restart()
            else:
                proxy.cut()
        copied = copied_ids(work)  # read before the outbox: a copy comes after its commit
        committed = stored_result_ids(state)
        report.copy_extra = len(copied - committed)
        _making_results(state)  # a SIGTERM during start-up would end it before its handler
        statuses = [stop_agent(proc)]
        committed = stored_result_ids(state)
        report.stored = len(committed)
        proc = agent_process(config, log)  # sends what was still pending at the stop
        wait_until(
            lambda: committed <= subscriber.received(), timeout=120, what="every stored result"
        )
        _making_results(state)
        statuses.append(stop_agent(proc))
    finally:
        if proc.poll() is None:
            stop_agent(proc)
        subscriber.stop()
        proxy.stop()
        broker.stop()
    report.put_back = _put_back(log)
    got = subscriber.received()
    report.delivered = len(committed & got)
    report.lost = len(committed - got)
    report.duplicates = subscriber.duplicates()
    report.seconds = time.monotonic() - started
    report.notes.append(
        f"faults: {kills} SIGKILL, {restarts} broker restarts, {cuts} connection cuts, at"
        f" {fps} results/s, random order and moments (seed {seed})"
    )
    report.notes.append(f"exit status at SIGTERM: {statuses}; {_tracebacks(log)} traceback(s)")
    return report


def _put_back(log: Path) -> int:
    """The acknowledged rows the agent sent again after drops, as its log says."""
    said = re.findall(r"mqtt: (\d+) message\(s\) acknowledged in the last", log.read_text())
    return sum(int(n) for n in said)


def _making_results(state: Path, more: int = 20) -> None:
    """Returns once `more` new results are committed: the agent is up and working."""
    before = len(stored_result_ids(state))
    wait_until(
        lambda: len(stored_result_ids(state)) > before + more,
        timeout=60,
        what="new results committed",
    )


def _tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback") if log.exists() else 0


# The disk-full run --------------------------------------------------------------------------

_SUMMARY = re.compile(
    r"outbox: taken (?P<taken>[^;]*); stored (?P<stored>[^;]*); dropped (?P<dropped>[^;]*);"
    r" WAL peak (?P<peak>\d+) kB \(bound (?P<bound>\d+) kB\)"
)


def writer_summaries(log: Path) -> list[dict[str, Any]]:
    """The outbox writer's line at each stop: counts by class (or class:reason), WAL peak."""

    def counts(text: str) -> Counter[str]:
        found: Counter[str] = Counter()
        for part in text.split(", "):
            if part != "none":
                key, count = part.rsplit(" ", 1)
                found[key] = int(count)
        return found

    return [
        {
            "taken": counts(m["taken"]),
            "stored": counts(m["stored"]),
            "dropped": counts(m["dropped"]),
            "wal_peak_kb": int(m["peak"]),
            "wal_bound_kb": int(m["bound"]),
        }
        for m in _SUMMARY.finditer(log.read_text(errors="replace"))
    ]


class WalWatch:
    """Samples the size of the outbox's WAL every few milliseconds; `peak` is the largest."""

    def __init__(self, state: Path, every_s: float = 0.005) -> None:
        self.path = state / "outbox.db-wal"
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wal-watch", daemon=True)

    def start(self) -> WalWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.path.stat().st_size)


@dataclass
class DiskFullReport(Report):
    made: int = 0  # results the agent made (its writer's count), over every run
    dropped: int = 0  # results counted as dropped
    wal_peak_kb: int = 0  # the agent's own figure, taken after every commit
    wal_sampled_kb: int = 0  # the file's size, sampled from outside
    wal_bound_kb: int = 0
    budget_kb: int = 0
    watchdog_gap_s: float = 0.0  # the longest time without a watchdog ping
    unhealthy: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"made {self.made}, delivered {self.delivered}, stored (still to go) {self.stored},"
            f" dropped and counted {self.dropped}, lost {self.lost},"
            f" duplicates {self.duplicates}, {self.seconds:.1f} s",
            f"results in the JSON-lines copy but not in the outbox: {self.copy_extra}",
            f"WAL peak {self.wal_peak_kb} kB by the agent, {self.wal_sampled_kb} kB sampled;"
            f" bound {self.wal_bound_kb} kB, counted in the outbox budget of"
            f" {self.budget_kb} kB",
            f"watchdog: longest gap between pings {self.watchdog_gap_s:.1f} s, unhealthy"
            f" reports {len(self.unhealthy)}{': ' + self.unhealthy[0] if self.unhealthy else ''}",
            f"exit status at SIGTERM: {self.statuses}",
            *self.notes,
        ]


def disk_full(work: Path, cycles: int = 3, fps: int = 100, size: str = "3m") -> DiskFullReport:
    """The agent's state on a real tmpfs of `size` (root only). `cycles` times: online, the
    link goes down, the disk fills up, the link comes back while the disk is still full,
    then space returns. The agent is stopped (SIGTERM), run once more to drain, and then
    stopped while the disk is full, so what it holds in memory is counted at the stop.
    Every result made must have arrived, be stored, or be counted as dropped; the
    watchdog pings (which stop when a thread dies) must go on throughout."""
    from tests.test_systemd import NotifySocket

    report = DiskFullReport()
    started = time.monotonic()
    state = work / "state"
    log = work / "agent.log"
    broker = persistent_broker(work / "broker").start()
    proxy = TcpProxy(broker).start()
    subscriber = DurableSubscriber(broker.port).start()
    notify = NotifySocket(work / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    # Results held, not dropped, while the disk is full: what this scenario watches for.
    outbox = '\n[outbox]\ndurability = "normal"\nresults = { when_full = "reject_new" }\n'
    config = write_config(work, proxy.port, fps=fps, more=outbox)
    proc: subprocess.Popen[bytes] | None = None
    try:
        with tmpfs(state, size):
            wal = WalWatch(state).start()
            report.budget_kb = int(0.5 * shutil.disk_usage(state).total) // 1024
            proc = agent_process(config, log, env)
            wait_until(lambda: bool(notify.having("READY")), 30, "READY=1")
            for _ in range(cycles):
                time.sleep(2.0)  # online
                proxy.refuse()
                proxy.cut()
                time.sleep(2.0)  # a backlog builds
                offset = log.stat().st_size
                filler = fill_disk(state)
                # Delivered rows give their space to new ones: results are held in memory
                # once that is used up too.
                wait_until(lambda o=offset: _holding(_log_since(log, o)), 60, "results held")
                time.sleep(1.0)
                proxy.accept()
                time.sleep(3.0)  # the backlog goes; its marks may not be written yet
                filler.unlink()
                time.sleep(3.0)  # space returns
            report.statuses.append(stop_agent(proc))
            watched = _watchdog_gaps(notify)
            stored = stored_result_ids(state)
            offset = log.stat().st_size
            proc = agent_process(config, log, env)
            wait_until(lambda: len(notify.having("READY")) == 2, 30, "READY=1 again")
            wait_until(lambda: stored <= subscriber.received(), 60, "every stored result")
            # A stop while the disk is full: what is held in memory is counted and logged.
            fill_disk(state)
            wait_until(lambda: _holding(_log_since(log, offset)), 30, "results held")
            report.statuses.append(stop_agent(proc))
            proc = None
            wal.stop()
            report.wal_sampled_kb = wal.peak // 1024
            pending = set(stored_results(state, "id", "state=0"))
            every = set(stored_results(state, "id"))
        copied = copied_ids(work)
    finally:
        if proc is not None and proc.poll() is None:
            stop_agent(proc)
        subscriber.stop()
        notify.close()
        proxy.stop()
        broker.stop()
    summaries = writer_summaries(log)
    got = subscriber.received()
    report.made = sum(s["taken"]["result"] for s in summaries)
    report.dropped = sum(
        n for s in summaries for k, n in s["dropped"].items() if k.startswith("result:")
    )
    report.delivered = len(got)
    report.stored = len(pending - got)
    report.lost = report.made - report.dropped - len(got | every)
    report.duplicates = subscriber.duplicates()
    report.copy_extra = len(copied - got - every)  # delivered rows give way to new ones
    report.wal_peak_kb = max(s["wal_peak_kb"] for s in summaries)
    report.wal_bound_kb = max(s["wal_bound_kb"] for s in summaries)
    report.watchdog_gap_s, report.unhealthy = watched
    text = log.read_text(errors="replace")
    report.notes += [
        f"cycles: {cycles} of link down, disk filled, link up while full, space back;"
        f" {fps} results/s on a {size} tmpfs",
        f"writes failed on the full disk (results held): {text.count('message(s) in memory')}"
        f" times; refused for room (results held): {text.count('until there is room')} times;"
        f" marks kept in memory and retried: {text.count('acknowledgement(s) kept in memory')}"
        f" times; lost-at-stop lines: {text.count('lost at stop')};"
        f" tracebacks: {text.count('Traceback')}",
        f"writer at each stop: {[dict(s['dropped']) for s in summaries]}",
    ]
    report.seconds = time.monotonic() - started
    return report


def _holding(text: str) -> bool:
    """The writer says it holds results in memory: writes fail, or find no room."""
    return "message(s) in memory" in text or "held in memory until there is room" in text


def _log_since(log: Path, offset: int) -> str:
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _watchdog_gaps(notify: Any) -> tuple[float, list[str]]:
    """The longest time between two watchdog pings, and every unhealthy STATUS=."""
    pings = [t for t, _ in notify.having("WATCHDOG")]
    gap = max((b - a for a, b in itertools.pairwise(pings)), default=float("inf"))
    unhealthy = [m["STATUS"] for _, m in notify.messages if "unhealthy" in m.get("STATUS", "")]
    return gap, unhealthy


# A real small filesystem ------------------------------------------------------------------


class CannotMount(Exception):
    """No tmpfs could be mounted here (not root, or no mount namespace)."""


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("3m") mounted on `mount` (root only), unmounted after."""
    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        raise CannotMount(proc.stderr.decode().strip() or f"mount exited {proc.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(folder: Path, leave: int = 0) -> Path:
    """A file that takes every free byte of `folder`'s filesystem but `leave`."""
    filler = folder / "filler"
    chunk = b"\0" * 65536
    with filler.open("ab", buffering=0) as f:
        while True:
            room = _free(folder) - leave
            if room <= 0:
                break
            try:
                f.write(chunk[: min(len(chunk), room)])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


def _free(folder: Path) -> int:
    return shutil.disk_usage(folder).free
