#!/usr/bin/env python3
"""The HTTP endpoint's cost, side by side in one run: the default agent (configs/agent.toml)
as a real `edge-agent run` process without the endpoint, and with it on and scraped ten
times a second on /metrics and ten times on /api/status, for the same duration.

    .venv/bin/python scripts/bench_http.py [--duration-s 30] [--repeats 2] [--fps 15]
    .venv/bin/python scripts/bench_http.py --fps 0 --together --duration-s 20 --repeats 3

Runs alternate (off, on, off, on, ...) so background load falls on both alike; each figure
is the median over its runs, printed beside its baseline:
- VmHWM and RssAnon of the agent process (/proc/PID/status) at the end of each run;
- throughput: results per second written (the JSON-lines copy), over the measured window;
- CPU seconds the agent process used in that window;
- the data's age as the client sees it: receive time minus the `ts` the status JSON was
  made at, and at worst that plus the page's poll period (500 ms);
- request latency of each scrape.
Targets: RSS growth <= 5 MB, throughput >= 0.99x, data <= 1 s old.
`--fps 0` runs the source unpaced, so the pipelines use every core and any CPU the
endpoint takes shows as lost throughput.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / ".venv" / "bin" / "edge-agent"
CONFIG = ROOT / "configs" / "agent.toml"
SCRAPES_PER_S = 10.0
PAGE_POLL_S = 0.5  # the page's own poll period (edge_agent/http/page.html POLL_MS)
WARMUP_S = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    http: bool
    rss_anon_kb: int = 0
    hwm_kb: int = 0
    results_per_s: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this script's scrapers, on the same cores
    ages_s: list[float] = field(default_factory=list)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    failures: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def scrape(port: int, path: str, run: Run, stop: threading.Event) -> None:
    """GET `path` SCRAPES_PER_S times a second on a fixed schedule, as Prometheus or the
    page would: a new connection each time."""
    period = 1.0 / SCRAPES_PER_S
    latencies = run.latencies_ms.setdefault(path, [])
    next_at = time.monotonic()
    while not stop.is_set():
        sent = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            conn.close()
            received_wall = time.time()
            latencies.append((time.perf_counter() - sent) * 1000)
            if response.status != 200:
                run.failures += 1
            elif path == "/api/status":
                run.ages_s.append(received_wall - json.loads(body)["ts"])
        except OSError:
            run.failures += 1
        next_at += period
        stop.wait(max(0.0, next_at - time.monotonic()))


def one_run(with_http: bool, duration_s: float, fps: float, folder: Path) -> Run:
    run = Run(with_http)
    state = folder / ("on" if with_http else "off")
    jsonl = state / "results.jsonl"
    port = free_port()
    env = {
        **os.environ,
        "EDGE_AGENT_DEVICE__STATE_DIR": str(state),
        "EDGE_AGENT_OUTPUT__JSONL": str(jsonl),
        "EDGE_AGENT_HTTP__ENABLED": "true" if with_http else "false",
        "EDGE_AGENT_HTTP__PORT": str(port),
    }
    if fps:
        env["EDGE_AGENT_SOURCES__PATTERN__FPS"] = str(fps)
    else:
        env["EDGE_AGENT_SOURCES__PATTERN__FPS"] = "100000"  # as fast as it goes
    log = (folder / f"agent-{'on' if with_http else 'off'}.log").open("ab")
    proc = subprocess.Popen(
        [str(AGENT), "run", "--config", str(CONFIG)], env=env, stdout=log, stderr=log
    )
    stop = threading.Event()
    scrapers: list[threading.Thread] = []
    try:
        deadline = time.monotonic() + 60
        while count_lines(jsonl) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the agent did not start: see {log.name}")
            time.sleep(0.2)
        if with_http:
            scrapers = [
                threading.Thread(target=scrape, args=(port, path, run, stop), daemon=True)
                for path in ("/metrics", "/api/status")
            ]
            for t in scrapers:
                t.start()
        time.sleep(WARMUP_S)
        lines0, cpu0, t0 = count_lines(jsonl), cpu_seconds(proc.pid), time.monotonic()
        client0 = time.process_time()
        time.sleep(duration_s)
        lines1, cpu1, t1 = count_lines(jsonl), cpu_seconds(proc.pid), time.monotonic()
        run.client_cpu_s = time.process_time() - client0
        memory = proc_status(proc.pid)
        run.rss_anon_kb, run.hwm_kb = memory["RssAnon"], memory["VmHWM"]
        run.results_per_s = (lines1 - lines0) / (t1 - t0)
        run.cpu_s = cpu1 - cpu0
    finally:
        stop.set()
        for t in scrapers:
            t.join(5)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    return run


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=2, help="off/on pairs")
    parser.add_argument(
        "--fps", type=float, default=15.0, help="source rate (the config's 15); 0: unpaced"
    )
    parser.add_argument(
        "--together",
        action="store_true",
        help="run each off/on pair at the same time, so both share whatever else loads the "
        "machine (with --fps 0 they also share the cores: the endpoint's cost shows as the "
        "share it takes from its twin)",
    )
    parser.add_argument("--json", action="store_true", help="also print the runs as JSON")
    args = parser.parse_args()

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        for i in range(args.repeats):
            order = (False, True) if i % 2 == 0 else (True, False)
            # A fresh state folder each run: the outbox starts empty every time.
            folders = [Path(tmp) / f"run{len(runs) + k}" for k in range(2)]
            for folder in folders:
                folder.mkdir()
            if args.together:
                with ThreadPoolExecutor(2) as pool:
                    pair = list(
                        pool.map(
                            lambda w, f: one_run(w, args.duration_s, args.fps, f), order, folders
                        )
                    )
            else:
                pair = [
                    one_run(w, args.duration_s, args.fps, f)
                    for w, f in zip(order, folders, strict=True)
                ]
            for run in pair:
                runs.append(run)
                with_http = run.http
                print(
                    f"  run {len(runs)}: endpoint {'on ' if with_http else 'off'} "
                    f"{run.results_per_s:7.2f} results/s, RssAnon {run.rss_anon_kb / 1024:6.1f}"
                    f" MB, VmHWM {run.hwm_kb / 1024:6.1f} MB, CPU {run.cpu_s:5.1f} s",
                    file=sys.stderr,
                )

    off = [r for r in runs if not r.http]
    on = [r for r in runs if r.http]
    rate = args.fps or "unpaced"
    print(
        f"edge-agent run, configs/agent.toml, source {rate} fps, {args.duration_s:.0f} s "
        f"measured after {WARMUP_S:.0f} s, {args.repeats} off/on pairs "
        f"{'run at the same time' if args.together else 'alternated'} (medians)"
    )
    print(f"{'':34}{'endpoint off':>14}{'on, scraped':>14}{'change':>12}")

    def row(name: str, base: float, value: float, unit: str, change: str) -> None:
        print(f"{name:34}{base:>11.2f} {unit:2}{value:>11.2f} {unit:2}{change:>12}")

    hwm = median([r.hwm_kb / 1024 for r in off]), median([r.hwm_kb / 1024 for r in on])
    anon = median([r.rss_anon_kb / 1024 for r in off]), median([r.rss_anon_kb / 1024 for r in on])
    rps = median([r.results_per_s for r in off]), median([r.results_per_s for r in on])
    cpu = (
        median([r.cpu_s / args.duration_s for r in off]),
        median([r.cpu_s / args.duration_s for r in on]),
    )
    row("VmHWM", *hwm, "MB", f"{hwm[1] - hwm[0]:+.1f} MB")
    row("RssAnon", *anon, "MB", f"{anon[1] - anon[0]:+.1f} MB")
    row("throughput (results/s)", *rps, "", f"{rps[1] / rps[0]:.3f}x")
    row("agent CPU (cores)", *cpu, "", f"{cpu[1] - cpu[0]:+.3f}")
    client = median([r.client_cpu_s / args.duration_s for r in on])
    print(f"{'scraper CPU, same cores (cores)':34}{'':14}{client:>11.3f}")
    print(f"{'agent CPU per result (ms)':34}", end="")
    per = [
        median([r.cpu_s / r.results_per_s / args.duration_s * 1000 for r in rs]) for rs in (off, on)
    ]
    print(f"{per[0]:>11.3f}   {per[1]:>11.3f}   {per[1] / per[0]:>10.3f}x")
    pairs = [
        on_run.results_per_s / off_run.results_per_s
        for off_run, on_run in zip(off, on, strict=False)
    ]
    print("throughput on/off by pair: " + ", ".join(f"{x:.3f}" for x in pairs))
    spread = (max(r.results_per_s for r in off) / min(r.results_per_s for r in off)) - 1
    print(f"spread between runs without the endpoint: {spread * 100:.1f} %")
    ages = [a for r in on for a in r.ages_s]
    print(
        f"status data age at the client: p50 {percentile(ages, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(ages, 0.99) * 1000:.1f} ms, max {max(ages, default=0) * 1000:.1f} ms; "
        f"on the page at worst {(max(ages, default=0) + PAGE_POLL_S) * 1000:.0f} ms "
        f"(that plus its {PAGE_POLL_S * 1000:.0f} ms poll)"
    )
    for path in ("/metrics", "/api/status"):
        lat = [x for r in on for x in r.latencies_ms.get(path, [])]
        print(
            f"{path}: {len(lat)} requests, p50 {percentile(lat, 0.5):.1f} ms, "
            f"p99 {percentile(lat, 0.99):.1f} ms"
        )
    failures = sum(r.failures for r in on)
    print(f"failed requests: {failures}")
    verdict = [
        ("RSS growth <= 5 MB", max(hwm[1] - hwm[0], anon[1] - anon[0]) <= 5.0),
        ("throughput >= 0.99x", rps[1] >= 0.99 * rps[0]),
        ("data <= 1 s old", max(ages, default=9) + PAGE_POLL_S <= 1.0),
    ]
    print("targets: " + ", ".join(f"{n}: {'met' if ok else 'MISSED'}" for n, ok in verdict))
    if args.json:
        print(json.dumps([r.__dict__ for r in runs]))
    return 0 if all(ok for _, ok in verdict) and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
