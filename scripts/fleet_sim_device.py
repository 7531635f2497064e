"""The device side of scripts/fleet_sim.py: many simulated devices in one process, each a
real `edge_agent.agent.Agent` with its own state folder (outbox.db, commands.db, model
store) and no pipeline. Results are put into each agent's own outbox writer at a set rate,
shaped like the agent's results but without a model behind them. Everything after that
hand-off is the agent's own code: writer, outbox, sender, link, command dispatcher and
updater (download, verification, install, activation, commit).

One part is left out: staging an update runs the new model on the runtime, which is
model inference; here it reports a fixed figure instead.

A worker process runs `worker_main`, answering the orchestrator's requests on a pipe."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from edge_agent.agent import Agent
from edge_agent.config.settings import AgentSettings
from edge_agent.payloads import ModelRef, ResultPayload
from edge_agent.runtime.backend import Backend
from edge_agent.updates.manifest import UpdateManifest
from edge_agent.updates.staging import StageReport

PIPELINE = "sim"
_TOP5 = [
    {"index": 281, "label": "tabby", "score": 0.71},
    {"index": 282, "label": "tiger cat", "score": 0.12},
    {"index": 285, "label": "Egyptian cat", "score": 0.09},
    {"index": 287, "label": "lynx", "score": 0.02},
    {"index": 728, "label": "plastic bag", "score": 0.01},
]


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process runs: devices `first` .. `first + count - 1`."""

    index: int
    first: int
    count: int
    state_root: Path
    host: str
    port: int
    protocol: str  # "5" or "3.1.1"
    trusted_key: str  # base64 public key the devices trust for updates
    model_path: Path  # the [models.NAME] file; never loaded (no pipeline runs it)
    model_name: str
    group_size: int  # the first this many devices of the fleet are in group "canary"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    inflight: int = 500
    drain_rate: float = 0.0
    resend_acked_within_s: float = 2.0  # mqtt.resend_acked_within_s
    # How long the sender gathers acknowledgements before writing them to the outbox;
    # None: the agent's own (link/sender.py's _SETTLE_S, 50 ms). Longer: fewer writes per
    # busy device, so more of them share two cores.
    marks_every_s: float | None = None


def device_id(number: int) -> str:
    return f"sim-{number:05d}"


def _no_runtime(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("the fleet simulation runs no model")


NO_BACKEND = Backend(
    name="none",
    version="0",
    interpreter_class=_no_runtime,
    load_delegate=_no_runtime,
    without_default_delegates=None,
)


def _staged(manifest: UpdateManifest) -> StageReport:
    """Staging without inference: the update passes with a fixed figure."""
    return StageReport(delegate="cpu", golden_agreement=None, latency_ms=1.0, baseline_ms=None)


@dataclass
class SimDevice:
    """One agent, and when its link went up and down (wall clock, for the orchestrator)."""

    number: int
    agent: Agent
    ups: list[float] = field(default_factory=list)
    downs: list[float] = field(default_factory=list)
    produced: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, spec: WorkerSpec, number: int) -> SimDevice:
        name = device_id(number)
        state = spec.state_root / name
        groups = ["canary"] if number < spec.group_size else []
        settings = AgentSettings.model_validate(
            {
                "device": {"id": name, "state_dir": state, "groups": groups},
                "models": {spec.model_name: {"path": spec.model_path}},
                "mqtt": {
                    "enabled": True,
                    "host": spec.host,
                    "port": spec.port,
                    "protocol": spec.protocol,
                    "reconnect_min_s": spec.reconnect_min_s,
                    "reconnect_max_s": spec.reconnect_max_s,
                    "inflight": spec.inflight,
                    "drain_rate": spec.drain_rate,
                    "resend_acked_within_s": spec.resend_acked_within_s,
                },
                "updates": {
                    "trusted_keys": {"ops": spec.trusted_key},
                    "health_window_s": 0,
                },
            }
        )
        agent = Agent(settings, backend=NO_BACKEND)
        # The one step replaced: staging would run the new model.
        agent.updater._stage = _staged  # type: ignore[method-assign]
        device = cls(number, agent)
        assert agent.link is not None
        agent.link.add_connection_listener(device._on_connection)
        return device

    def _on_connection(self, up: bool) -> None:
        (self.ups if up else self.downs).append(time.time())

    def produce(self) -> None:
        """One result into the agent's outbox writer, as a pipeline hands it over."""
        envelope = self.agent.envelope
        seq = envelope.next_seq()
        payload = ResultPayload(
            id=envelope.new_id(),
            seq=seq,
            ts=time.time(),
            boot_id=envelope.boot_id,
            device=envelope.device,
            pipeline=PIPELINE,
            source={"name": "camera", "frame": seq},
            model=ModelRef(name="mobilenet", version="1.0.0", sha256="0" * 64),
            delegate="cpu",
            latency_ms={"decode": 3.0, "preprocess": 0.4, "infer": 2.0, "decode_output": 0.1},
            result={"top": _TOP5},
        )
        self.produced.append(payload.id)
        self.agent.writer.put(payload)

    @property
    def connected(self) -> bool:
        link = self.agent.link
        return link is not None and link.connected.is_set()


class Producer:
    """One thread per process puts results into every device's outbox at `rate` per
    device per second, the devices' turns spread evenly over each interval."""

    def __init__(self, devices: list[SimDevice]) -> None:
        self.devices = devices
        self.rate = 0.0
        self._changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self._thread.start()

    def set_rate(self, rate: float) -> None:
        with self._changed:
            self.rate = rate
            self._changed.notify_all()

    def stop(self) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        self._thread.join(5)

    def _run(self) -> None:
        turn = 0
        due = time.monotonic()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stop or self.rate > 0)
                if self._stop:
                    return
                step = 1.0 / (self.rate * len(self.devices))
            wait = due - time.monotonic()
            if wait > 0:
                with self._changed:
                    if self._changed.wait_for(lambda: self._stop, wait):
                        return
            self.devices[turn % len(self.devices)].produce()
            turn += 1
            due = max(due + step, time.monotonic() - 1.0)  # never more than 1 s of catch-up


def raise_fd_limit() -> tuple[int, int]:
    """The soft limit on open files up to the hard one; the limits after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def process_usage(pid: int | str = "self") -> dict[str, float]:
    """RSS and private (anonymous) memory in MB, open files, threads and CPU seconds."""
    usage: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                usage[key] = int(value.split()[0]) / 1024
            elif key == "Threads":
                usage["threads"] = int(value)
        usage["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        usage["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return usage


def worker_main(conn: Connection, spec: WorkerSpec) -> None:
    """Builds and starts the devices, then answers requests until told to stop."""
    fd_limits = raise_fd_limit()
    if spec.marks_every_s is not None:
        from edge_agent.link import sender

        sender._SETTLE_S = spec.marks_every_s
    spec.state_root.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=spec.state_root / f"worker-{spec.index}.log",
        level=logging.WARNING,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    parent = os.getppid()
    threading.Thread(target=_orphan_watch, args=(parent,), name="orphan-watch", daemon=True).start()
    base = process_usage()
    devices = [SimDevice.build(spec, spec.first + i) for i in range(spec.count)]
    for device in devices:
        device.agent.start()
    producer = Producer(devices)
    conn.send({"ready": True, "base": base, "fd_limits": fd_limits})
    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "status": lambda _: _status(devices),
        "rate": lambda request: producer.set_rate(float(request["rate"])),
        "report": lambda _: _report(devices),
        "usage": lambda _: process_usage(),
    }
    while True:
        request = conn.recv()
        if request["op"] == "stop":
            break
        # Each answer names its request: one the orchestrator gave up on is told apart.
        conn.send({"n": request.get("n"), "answer": handlers[request["op"]](request)})
    producer.stop()
    for device in devices:
        device.agent.stop(timeout=1.0)
    conn.send({"n": request.get("n"), "answer": {"stopped": True}})


def _orphan_watch(parent: int) -> None:
    """Ends this worker when the orchestrator is gone (killed, not stopped)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _status(devices: list[SimDevice]) -> dict[str, Any]:
    pending = 0
    for device in devices:
        pending += int(device.agent.outbox.stats()["pending"])
    return {
        "connected": sum(device.connected for device in devices),
        "pending": pending,
        "produced": sum(len(device.produced) for device in devices),
    }


def _report(devices: list[SimDevice]) -> dict[str, Any]:
    return {
        device_id(d.number): {
            "ups": d.ups,
            "downs": d.downs,
            "produced": d.produced,
            # Acknowledged rows sent again after a drop (mqtt.resend_acked_within_s).
            "put_back": d.agent.sender.counts["put_back"] if d.agent.sender else 0,
        }
        for d in devices
    }
