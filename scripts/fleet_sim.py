#!/usr/bin/env python3
"""A simulated fleet against a real local broker: N devices, each a real agent (its link,
outbox, sender, command dispatcher and updater; scripts/fleet_sim_device.py), many to a
worker process, each with its own state folder, producing results at a set rate. The
broker is a private one started here on a free port (scripts/fleet_sim_brokers.py).

What it measures, in this order:

1. start: all N devices connecting at once, until every one is online;
2. `edge-fleet cmd --all ping` (the CLI's own code, fleet/remote.py): replies and round
   trips (p50, p99, the last);
3. a broker restart while results flow: the time until every device is back, the peak
   connect rate, a histogram of the reconnects in time (the jitter at work); then, once
   production stops and every outbox is drained, results lost and duplicated, comparing
   every result id produced with what a durable subscriber received;
4. a signed model update pushed with `edge-fleet push` to the devices of group `canary`
   (the first --push-devices devices), over HTTP and then over MQTT chunks: total time
   and bytes per second through the broker (or the HTTP server).

Beside each phase: CPU used (workers, broker, this process, the whole machine), memory
and open files per device.

    .venv/bin/python scripts/fleet_sim.py --broker mosquitto --devices 1000
    .venv/bin/python scripts/fleet_sim.py --broker nats --devices 1000 --json out.json
    .venv/bin/python scripts/fleet_sim.py --quick          # 50 devices, a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from fleet_sim_brokers import Collector, SimBroker, make_broker  # noqa: E402
from fleet_sim_device import WorkerSpec, process_usage, raise_fd_limit, worker_main  # noqa: E402

MODELS = ROOT / "models"


@dataclass(frozen=True)
class Options:
    broker: str = "mosquitto"
    devices: int = 1000
    per_process: int = 100
    rate: float = 0.1  # results per device per second
    steady_s: float = 10.0  # producing before the ping and the restart
    down_s: float = 5.0  # the broker stays down this long
    push_devices: int = 100
    model: Path = MODELS / "mobilenet_v2_int8.tflite"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    inflight: int = 500
    drain_rate: float = 0.0
    resend_acked_within_s: float = 2.0
    marks_every_s: float | None = None  # None: the agent's own 50 ms
    phases: tuple[str, ...] = ("ping", "restart", "push")
    state_dir: Path | None = None  # default: a new folder under /dev/shm (else the tmp dir)
    keep: bool = False
    timeout_s: float = 120.0  # the longest any one wait may take
    ping_timeout_s: float = 60.0
    nats_stop: str = "term"  # how NATS is stopped for the restart: SIGTERM, or lame duck


# --- workers -------------------------------------------------------------------------------


class Worker:
    def __init__(self, spec: WorkerSpec) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.spec = spec
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, spec), daemon=True)
        self.ready: dict[str, Any] = {}


class Fleet:
    """The worker processes, asked together."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self._asked = 0

    def start(self) -> None:
        for worker in self.workers:
            worker.process.start()
        for worker in self.workers:
            worker.ready = _recv(worker.conn, 300, "a worker to start its devices")

    def ask(self, op: str, **fields: Any) -> list[Any]:
        self._asked += 1
        for worker in self.workers:
            worker.conn.send({"op": op, "n": self._asked, **fields})
        return [_answer(worker.conn, self._asked, op) for worker in self.workers]

    def status(self) -> dict[str, int]:
        total = {"connected": 0, "pending": 0, "produced": 0}
        for answer in self.ask("status"):
            for key in total:
                total[key] += answer[key]
        return total

    def stop(self) -> None:
        self._asked += 1
        for worker in self.workers:
            if worker.process.is_alive():
                with contextlib.suppress(OSError):
                    worker.conn.send({"op": "stop", "n": self._asked})
        for worker in self.workers:
            with contextlib.suppress(OSError, EOFError, WorkerTimeout):
                _answer(worker.conn, self._asked, "stop", 30)
            worker.process.join(10)
            if worker.process.is_alive():
                worker.process.kill()

    def pids(self) -> list[int]:
        return [w.process.pid for w in self.workers if w.process.pid is not None]


class WorkerTimeout(RuntimeError):
    pass


def _recv(conn: Connection, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise WorkerTimeout(f"no answer from a worker within {timeout:.0f} s ({what})")
    return conn.recv()


def _answer(conn: Connection, n: int, what: str, timeout: float = 120) -> Any:
    """The answer to request `n`; late answers to earlier ones are dropped."""
    while True:
        message = _recv(conn, timeout, what)
        if message.get("n") == n:
            return message["answer"]


def wait_for(check: Any, timeout: float, what: str, every: float = 0.2) -> float:
    """Polls `check()` until true; the seconds it took. TimeoutError names `what`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - started


# --- resources -----------------------------------------------------------------------------


def machine_cpu_s() -> float:
    """CPU seconds used by the whole machine since boot (others' work included)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # not idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used during one phase by the workers, the broker, this process and the
    machine, as cores (CPU seconds per second)."""

    def __init__(self, fleet: Fleet, broker: SimBroker) -> None:
        self.fleet = fleet
        self.broker = broker
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        workers = sum(process_usage(pid).get("cpu_s", 0.0) for pid in self.fleet.pids())
        pid = self.broker.pid
        broker = process_usage(pid).get("cpu_s", 0.0) if pid else 0.0
        return {
            "at": time.monotonic(),
            "broker_pid": float(pid or 0),
            "workers": workers,
            "broker": broker,
            "orchestrator": process_usage().get("cpu_s", 0.0),
            "machine": machine_cpu_s(),
        }

    def cores(self) -> dict[str, float]:
        end = self._sample()
        start = dict(self._start)
        if end["broker_pid"] != start["broker_pid"]:
            start["broker"] = 0.0  # restarted: its CPU since its own start
        wall = max(end["at"] - start["at"], 1e-6)
        return {
            key: round((end[key] - start[key]) / wall, 2)
            for key in end
            if key not in ("at", "broker_pid")
        }


# --- figures -------------------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = share * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def peak_rate(times: list[float], window: float = 1.0) -> int:
    """Most events inside any `window` seconds."""
    ordered = sorted(times)
    best = first = 0
    for last, at in enumerate(ordered):
        while at - ordered[first] > window:
            first += 1
        best = max(best, last - first + 1)
    return best


def histogram(delays: list[float], width: float = 1.0) -> list[int]:
    if not delays:
        return []
    counts = [0] * (int(max(delays) // width) + 1)
    for delay in delays:
        counts[int(delay // width)] += 1
    return counts


def reconnects(reports: dict[str, dict[str, Any]], up_at: float) -> dict[str, Any]:
    """Each device's first connect after the broker was back (wall clock `up_at`)."""
    delays = []
    missing = []
    for device, report in reports.items():
        after = [t for t in report["ups"] if t >= up_at - 0.5]
        if after:
            delays.append(max(0.0, min(after) - up_at))
        else:
            missing.append(device)
    return {
        "devices_back": len(delays),
        "not_back": missing[:20],
        "all_back_s": round(max(delays), 2) if delays else None,
        "p50_s": round(percentile(delays, 0.5), 2),
        "p99_s": round(percentile(delays, 0.99), 2),
        "peak_connects_per_s": peak_rate(delays),
        "histogram_1s": histogram(delays),
    }


# --- phases --------------------------------------------------------------------------------


def fleet_args(broker: SimBroker, *words: str) -> list[str]:
    return [*words, "--broker", f"127.0.0.1:{broker.port}", "--mqtt", broker.protocol]


def ping_all(broker: SimBroker, devices: int, timeout: float) -> dict[str, Any]:
    """`edge-fleet cmd ping --all --wait-for N`, through the CLI's own send()."""
    from edge_agent.fleet import cli, remote

    argv = fleet_args(broker, "cmd", "ping", "--all", "--wait-for", str(devices))
    args = cli.build_parser().parse_args([*argv, "--timeout", str(timeout)])
    started = time.monotonic()
    outcome = remote.send(args, "ping", {}, timeout)
    took = time.monotonic() - started
    trips = list(outcome.request.round_trip_ms.values())
    ok = sum(1 for reply in outcome.replies.values() if reply.get("status") == "ok")
    return {
        "known_from_status": len(outcome.known),
        "answered": len(outcome.replies),
        "ok": ok,
        "all_answered_ms": round(max(trips), 1) if trips else None,
        "p50_ms": round(percentile(trips, 0.5), 1),
        "p99_ms": round(percentile(trips, 0.99), 1),
        "command_wall_s": round(took, 2),
    }


def make_update(folder: Path, model: Path, version: str, key: Path) -> tuple[Path, int]:
    """`edge-fleet sign`: a signed update of `model` as model `sim`; its folder and size."""
    from edge_agent.fleet import cli

    out = folder / f"update-{version}"
    argv = ["sign", str(model), "--name", "sim", "--version", version, "--key", str(key)]
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main([*argv, "--out", str(out)])
    if code:
        raise RuntimeError(f"edge-fleet sign exited {code}")
    manifest = json.loads((out / "update.json").read_text())
    return out, sum(int(ref["size"]) for ref in manifest["files"].values())


def push(
    broker: SimBroker, update: Path, size: int, via: str, devices: int, log: Path, timeout: float
) -> dict[str, Any]:
    """`edge-fleet push DIR --group canary --via VIA --wait-for N`, its output kept in `log`."""
    from edge_agent.fleet import cli

    argv = fleet_args(broker, "push", str(update), "--group", "canary", "--via", via)
    argv += ["--wait-for", str(devices), "--timeout", str(timeout)]
    out = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = cli.main(argv)
    took = time.monotonic() - started
    text = out.getvalue()
    log.write_text(text)
    committed = sum(1 for line in text.splitlines() if ": ok committed " in line)
    total = size * devices
    return {
        "via": via,
        "exit": code,
        "committed": committed,
        "total_s": round(took, 2),
        "update_bytes": size,
        "delivered_mb": round(total / 1e6, 1),
        "mb_per_s": round(total / 1e6 / took, 1),
    }


def check_delivery(collector: Collector, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    produced: set[str] = set()
    for report in reports.values():
        produced.update(report["produced"])
    counts = dict(collector.counts)
    lost = produced - counts.keys()
    return {
        "produced": len(produced),
        "received_unique": len(produced & counts.keys()),
        "lost": len(lost),
        "lost_examples": sorted(lost)[:10],
        "duplicated": sum(n - 1 for n in counts.values()),
        "put_back": sum(report.get("put_back", 0) for report in reports.values()),
        "deliveries": sum(counts.values()),
    }


# --- the run -------------------------------------------------------------------------------


@contextlib.contextmanager
def state_folder(options: Options) -> Iterator[Path]:
    if options.state_dir is not None:
        options.state_dir.mkdir(parents=True, exist_ok=True)
        yield options.state_dir
        return
    # tmpfs: 1,000 devices' fsyncs on one shared disk would measure the disk, not the fleet.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    folder = Path(tempfile.mkdtemp(prefix="fleet-sim-", dir=base))
    try:
        yield folder
    finally:
        if not options.keep:
            shutil.rmtree(folder, ignore_errors=True)


def run(options: Options, say: Any = print) -> dict[str, Any]:
    """Runs the simulation; returns its figures (also said line by line with `say`)."""
    fd_limits = raise_fd_limit()  # the broker inherits it
    with state_folder(options) as root:
        return _run(options, root, fd_limits, say)


def _run(options: Options, root: Path, fd_limits: tuple[int, int], say: Any) -> dict[str, Any]:
    from edge_agent.updates.signing import generate_keypair

    result: dict[str, Any] = {
        "broker": options.broker,
        "devices": options.devices,
        "per_process": options.per_process,
        "rate_per_device": options.rate,
        "marks_every_s": options.marks_every_s,
        "resend_acked_within_s": options.resend_acked_within_s,
        "nats_stop": options.nats_stop,
        "cpus": os.cpu_count(),
        "fd_limits": list(fd_limits),
        "state_dir": str(root),
    }
    private_pem, public = generate_keypair()
    keys = root / "keys"
    keys.mkdir()
    (keys / "ops.pem").write_bytes(private_pem)
    broker = make_broker(options.broker, root / "broker", lame_duck=options.nats_stop == "ldm")
    broker.start()
    collector = Collector(broker.port).start()
    count = math.ceil(options.devices / options.per_process)
    spec = WorkerSpec(
        index=0,
        first=0,
        count=0,
        state_root=root / "devices",
        host="127.0.0.1",
        port=broker.port,
        protocol=broker.protocol,
        trusted_key=public,
        model_path=options.model,
        model_name="sim",
        group_size=options.push_devices,
        reconnect_min_s=options.reconnect_min_s,
        reconnect_max_s=options.reconnect_max_s,
        inflight=options.inflight,
        drain_rate=options.drain_rate,
        resend_acked_within_s=options.resend_acked_within_s,
        marks_every_s=options.marks_every_s,
    )
    workers = []
    for i in range(count):
        first = i * options.per_process
        size = min(options.per_process, options.devices - first)
        workers.append(Worker(replace(spec, index=i, first=first, count=size)))
    fleet = Fleet(workers)
    say(f"{options.broker} on port {broker.port}; {options.devices} devices in {count} processes")
    try:
        meter = CpuMeter(fleet, broker)
        started = time.monotonic()
        fleet.start()
        created = time.monotonic() - started
        wait_for(
            lambda: fleet.status()["connected"] == options.devices,
            options.timeout_s,
            "every device online at start",
        )
        online = time.monotonic() - started
        usage = [process_usage(pid) for pid in fleet.pids()]
        base_anon = sum(w.ready["base"].get("RssAnon", 0.0) for w in workers)
        base_rss = sum(w.ready["base"].get("VmRSS", 0.0) for w in workers)
        anon = sum(u.get("RssAnon", 0.0) for u in usage)
        rss = sum(u.get("VmRSS", 0.0) for u in usage)
        result["start"] = {
            "devices_built_and_started_s": round(created, 2),
            "all_online_s": round(online, 2),
            "cpu_cores": meter.cores(),
        }
        base_threads = sum(w.ready["base"].get("threads", 0) for w in workers)
        base_fds = sum(w.ready["base"].get("fds", 0) for w in workers)
        result["resources"] = {
            "worker_rss_mb": round(rss, 1),
            "worker_base_rss_mb": round(base_rss, 1),
            "private_mb_per_device": round((anon - base_anon) / options.devices, 3),
            "rss_mb_per_device": round((rss - base_rss) / options.devices, 3),
            "threads_per_device": round(
                (sum(u.get("threads", 0) for u in usage) - base_threads) / options.devices, 2
            ),
            "fds_per_device": round(
                (sum(u.get("fds", 0) for u in usage) - base_fds) / options.devices, 2
            ),
            "broker": process_usage(broker.pid) if broker.pid else {},
        }
        say(f"start: {json.dumps(result['start'])}")
        say(f"resources: {json.dumps(result['resources'])}")

        fleet.ask("rate", rate=options.rate)
        meter = CpuMeter(fleet, broker)
        time.sleep(options.steady_s)
        result["steady"] = {"cpu_cores": meter.cores(), "seconds": options.steady_s}
        say(f"steady: {json.dumps(result['steady'])}")

        if "ping" in options.phases:
            meter = CpuMeter(fleet, broker)
            result["ping"] = ping_all(broker, options.devices, options.ping_timeout_s)
            result["ping"]["cpu_cores"] = meter.cores()
            say(f"ping: {json.dumps(result['ping'])}")

        if "restart" in options.phases:
            result["restart"] = _restart(options, fleet, broker, collector, say)

        if "push" in options.phases and options.push_devices:
            key = keys / "ops.pem"
            updates = root / "updates"
            n = min(options.push_devices, options.devices)
            for version, via in (("1.1.0", "http"), ("1.2.0", "mqtt")):
                folder, size = make_update(updates, options.model, version, key)
                meter = CpuMeter(fleet, broker)
                figures = push(
                    broker, folder, size, via, n, root / f"push-{via}.log", options.timeout_s
                )
                figures["cpu_cores"] = meter.cores()
                result[f"push_{via}"] = figures
                say(f"push {via}: {json.dumps(figures)}")
        result["broker_at_end"] = process_usage(broker.pid) if broker.pid else {}
    finally:
        fleet.stop()
        collector.stop()
        broker.stop()
    return result


def _restart(
    options: Options, fleet: Fleet, broker: SimBroker, collector: Collector, say: Any
) -> dict[str, Any]:
    meter = CpuMeter(fleet, broker)
    down_at = time.time()
    broker.stop()
    stopped_s = time.time() - down_at
    time.sleep(options.down_s)
    broker.start()
    up_at = time.time()
    with contextlib.suppress(TimeoutError):
        wait_for(
            lambda: fleet.status()["connected"] == options.devices,
            options.timeout_s,
            "every device back after the restart",
        )
    reports: dict[str, dict[str, Any]] = {}
    for answer in fleet.ask("report"):
        reports.update(answer)
    figures: dict[str, Any] = {
        "down_s": options.down_s,
        "broker_stop_s": round(stopped_s, 2),
        "broker_start_s": round(up_at - down_at - stopped_s - options.down_s, 2),
        **reconnects(reports, up_at),
        "cpu_cores_until_back": meter.cores(),
    }
    say(f"restart: {json.dumps(figures)}")
    # Production stops; every outbox drains; the collector has everything or goes quiet.
    fleet.ask("rate", rate=0.0)
    meter = CpuMeter(fleet, broker)
    produced = fleet.status()["produced"]
    drained = wait_for(
        lambda: fleet.status()["pending"] == 0, options.timeout_s, "every outbox drained"
    )
    with contextlib.suppress(TimeoutError):
        wait_for(
            lambda: len(collector.counts) >= produced or collector.quiet_for() > 5.0,
            options.timeout_s,
            "the collector to catch up",
        )
    reports = {}
    for answer in fleet.ask("report"):
        reports.update(answer)
    delivery = check_delivery(collector, reports)
    delivery["drained_after_stop_s"] = round(drained, 2)
    delivery["cpu_cores_drain"] = meter.cores()
    figures["delivery"] = delivery
    say(f"delivery: {json.dumps(delivery)}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("mosquitto", "nats"), default="mosquitto")
    parser.add_argument("--devices", type=int, default=1000, help="simulated devices (1000)")
    parser.add_argument("--per-process", type=int, default=100, help="devices per worker (100)")
    parser.add_argument("--rate", type=float, default=0.1, help="results/s per device (0.1)")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds producing first")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the broker is down")
    parser.add_argument("--push-devices", type=int, default=100, help="devices updated (100)")
    parser.add_argument("--model", type=Path, default=Options.model, help="the pushed model")
    parser.add_argument("--reconnect-min", type=float, default=1.0, help="mqtt.reconnect_min_s")
    parser.add_argument("--reconnect-max", type=float, default=120.0, help="mqtt.reconnect_max_s")
    parser.add_argument("--inflight", type=int, default=500, help="mqtt.inflight (500)")
    parser.add_argument("--drain-rate", type=float, default=0.0, help="mqtt.drain_rate (0)")
    parser.add_argument(
        "--resend-acked-within",
        type=float,
        default=2.0,
        help="mqtt.resend_acked_within_s (2; 0: no put-back after a drop)",
    )
    parser.add_argument(
        "--marks-every",
        type=float,
        help="seconds between the sender's acknowledgement writes (default: the agent's 0.05)",
    )
    parser.add_argument(
        "--phases", default="ping,restart,push", help="any of ping,restart,push (all)"
    )
    parser.add_argument(
        "--nats-stop",
        choices=("term", "ldm"),
        default="term",
        help="stop NATS by SIGTERM (term) or in lame-duck mode (ldm: clients closed over 30 s)",
    )
    parser.add_argument("--quick", action="store_true", help="50 devices, 25 a process")
    parser.add_argument("--state-dir", type=Path, help="keep the devices' state here")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    # A kill from outside still stops the broker and the workers (the finally blocks).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    options = Options(
        broker=args.broker,
        devices=args.devices,
        per_process=args.per_process,
        rate=args.rate,
        steady_s=args.steady,
        down_s=args.down,
        push_devices=args.push_devices,
        model=args.model,
        reconnect_min_s=args.reconnect_min,
        reconnect_max_s=args.reconnect_max,
        inflight=args.inflight,
        drain_rate=args.drain_rate,
        resend_acked_within_s=args.resend_acked_within,
        marks_every_s=args.marks_every,
        phases=tuple(p for p in args.phases.split(",") if p),
        state_dir=args.state_dir,
        keep=args.state_dir is not None,
        nats_stop=args.nats_stop,
    )
    if args.quick:
        options = replace(options, devices=50, per_process=25, push_devices=10, steady_s=3.0)
        options = replace(options, down_s=2.0)
    figures = run(options)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    delivery = figures.get("restart", {}).get("delivery", {})
    return 1 if delivery.get("lost") else 0


if __name__ == "__main__":
    sys.exit(main())
