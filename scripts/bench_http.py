#!/usr/bin/env python3
"""The HTTP endpoint's cost, side by side in one run: the default agent (configs/agent.toml)
as a real `edge-agent run` process without the endpoint, and with it on and scraped ten
times a second on /metrics and ten times on /api/status, for the same duration.

    .venv/bin/python scripts/bench_http.py [--duration-s 30] [--repeats 2] [--fps 15] [--page]
    .venv/bin/python scripts/bench_http.py --fps 0 --together --duration-s 20 --repeats 3
    .venv/bin/python scripts/bench_http.py --imports [--repeats 5]

Runs alternate (off, on, off, on, ...) so background load falls on both alike; each figure
is the median over its runs, printed beside its baseline:
- VmHWM, RssAnon and RssFile of the agent process (/proc/PID/status) at the end of each run;
- throughput: results per second written (the JSON-lines copy), over the measured window;
- CPU seconds the agent process used in that window;
- the data's age as the client sees it: receive time minus the `ts` the status JSON was
  made at, and at worst that plus the page's poll period (500 ms);
- with `--page`, the page itself open in a headless Chromium (/usr/bin/chromium through
  Playwright) beside the scrapers during each run with the endpoint on, sampled every
  73 ms through the measured window: the age of the data it shows (the wall clock minus
  the `ts` of the status on screen; browser and agent share this machine's clock) and the
  age its header shows, each as median, p95 and max;
- request latency of each scrape.
Targets: RSS growth <= 5 MB, throughput >= 0.99x, data <= 1 s old (read off the page with
`--page`; worked out from the client's figure and the poll period without it).
`--fps 0` runs the source unpaced, so the pipelines use every core and any CPU the
endpoint takes shows as lost throughput.

`--imports` measures instead what serving HTTP costs to load, each module in fresh Python
processes on top of what a default agent has loaded anyway (NumPy, OpenCV, LiteRT, paho,
pydantic, the agent's own modules): import time and the RssAnon it adds, median of
`--repeats` processes, for the standard library's servers, prometheus_client, the whole
endpoint, and the alternatives docs/http.md names (each "not installed" when it is not).
`--json` prints the figures as one JSON object on the last line (scripts/bench_performance.py
reads it); the exit status is then 0 unless a request failed.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / ".venv" / "bin" / "edge-agent"
sys.path.insert(0, str(ROOT))

from tests.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

CONFIG = ROOT / "configs" / "agent.toml"
SCRAPES_PER_S = 10.0
PAGE_POLL_S = 0.5  # the page's own poll period (edge_agent/http/page.html POLL_MS)
WARMUP_S = 5.0
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SAMPLE_MS = 73  # not a divisor of the page's 100 ms age tick nor of its 500 ms poll
# In the page: the age of the data on screen by the wall clock, and the age its header shows.
PAGE_SAMPLER = f"""() => {{
  window.__ages = [];
  const age = document.getElementById("age");
  window.__sampler = setInterval(() => {{
    if (age.dataset.ts) window.__ages.push(
      [Date.now() / 1000 - Number(age.dataset.ts), parseFloat(age.textContent)]);
  }}, {PAGE_SAMPLE_MS});
}}"""


@dataclass
class Run:
    http: bool
    rss_anon_kb: int = 0
    rss_file_kb: int = 0
    hwm_kb: int = 0
    results_per_s: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0  # this script's scrapers, on the same cores
    ages_s: list[float] = field(default_factory=list)
    page_ages_s: list[float] = field(default_factory=list)  # the data on the page, true age
    page_shown_s: list[float] = field(default_factory=list)  # the age the page's header shows
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    failures: int = 0
    load: float = 0.0  # the machine's 1-minute load average at the end of the window


SAMPLES = ("ages_s", "page_ages_s", "page_shown_s", "latencies_ms")  # left out of --json runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
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


class PageWatcher(threading.Thread):
    """The status page open in headless Chromium for one run: loaded before the measured
    window, sampled in the page through it. Playwright's sync API stays on this thread."""

    def __init__(self, port: int, run: Run) -> None:
        super().__init__(daemon=True, name="page")
        self.port, self.record = port, run
        self.loaded = threading.Event()
        self.measure = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
                )
                try:
                    page = browser.new_page()
                    page.goto(f"http://127.0.0.1:{self.port}/")
                    page.wait_for_function(
                        "document.getElementById('age').dataset.ts", timeout=30_000
                    )
                    self.loaded.set()
                    self.measure.wait()
                    page.evaluate(PAGE_SAMPLER)
                    self.stop.wait()
                    for true_age, shown in page.evaluate("window.__ages"):
                        self.record.page_ages_s.append(float(true_age))
                        self.record.page_shown_s.append(float(shown))
                finally:
                    browser.close()
        except BaseException as exc:  # reported by the run that started it
            self.error = exc
        finally:
            self.loaded.set()


def one_run(
    with_http: bool, duration_s: float, fps: float, folder: Path, with_page: bool = False
) -> Run:
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
    watcher = PageWatcher(port, run) if with_http and with_page else None
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
        if watcher is not None:
            watcher.start()
            watcher.loaded.wait(60)
            if watcher.error is not None or not watcher.loaded.is_set():
                raise SystemExit(f"the page did not load in Chromium: {watcher.error}")
        time.sleep(WARMUP_S)
        if watcher is not None:
            watcher.measure.set()
        lines0, cpu0, t0 = count_lines(jsonl), cpu_seconds(proc.pid), time.monotonic()
        client0 = time.process_time()
        time.sleep(duration_s)
        lines1, cpu1, t1 = count_lines(jsonl), cpu_seconds(proc.pid), time.monotonic()
        if watcher is not None:
            watcher.stop.set()
            watcher.join(30)
            if watcher.error is not None:
                raise SystemExit(f"the page in Chromium: {watcher.error}")
        run.client_cpu_s = time.process_time() - client0
        memory = proc_status(proc.pid)
        run.rss_anon_kb, run.hwm_kb = memory["RssAnon"], memory["VmHWM"]
        run.rss_file_kb = memory["RssFile"]
        run.load = os.getloadavg()[0]
        run.results_per_s = (lines1 - lines0) / (t1 - t0)
        run.cpu_s = cpu1 - cpu0
    finally:
        stop.set()
        if watcher is not None:
            watcher.measure.set()
            watcher.stop.set()
            watcher.join(30)
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


# --- what serving HTTP costs to load ------------------------------------------------------

# What a default agent (configs/agent.toml) has imported before its endpoint starts.
IMPORT_BASE = (
    "numpy",
    "cv2",
    "ai_edge_litert.interpreter",
    "paho.mqtt.client",
    "pydantic",
    "edge_agent.agent",
)
IMPORTS: tuple[tuple[str, str], ...] = (
    ("http.server", "`http.server` (the endpoint's server)"),
    ("wsgiref.simple_server", "`wsgiref.simple_server` (prometheus_client's own server)"),
    ("prometheus_client", "`prometheus_client` (the format, needed either way)"),
    ("edge_agent.http.endpoint", "the whole endpoint, `edge_agent.http.endpoint`"),
    ("asyncio", "`asyncio` (no HTTP server of its own)"),
    ("aiohttp.web", "aiohttp's server"),
    ("tornado.web", "Tornado"),
    ("uvicorn", "uvicorn (an ASGI server, before any framework)"),
)
IMPORT_PROBE = """
import importlib, json, sys, time
def anon_kb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
for name in sys.argv[2:]:
    importlib.import_module(name)
loaded = sys.argv[1] in sys.modules
kb0, t0 = anon_kb(), time.perf_counter()
importlib.import_module(sys.argv[1])
t1, kb1 = time.perf_counter(), anon_kb()
print(json.dumps({"ms": (t1 - t0) * 1000, "kb": kb1 - kb0, "already_loaded": loaded}))
"""


def import_cost(module: str, repeats: int, cache: Path) -> dict[str, Any] | None:
    """Median import time and RssAnon added, over `repeats` fresh processes after one that
    fills the bytecode cache (as pip leaves it on an install); None when not installed."""
    python = str(ROOT / ".venv" / "bin" / "python")
    found = subprocess.run(
        [python, "-c", f"import importlib.util as u; print(u.find_spec({module.split('.')[0]!r}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    if found.stdout.strip() == "None":
        return None
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    runs = []
    for _ in range(repeats + 1):
        out = subprocess.run(
            [python, "-c", IMPORT_PROBE, module, *IMPORT_BASE],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs = runs[1:]
    return {
        "ms": median([r["ms"] for r in runs]),
        "kb": median([r["kb"] for r in runs]),
        "already_loaded": runs[0]["already_loaded"],
    }


def imports(repeats: int, as_json: bool) -> int:
    figures: dict[str, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-pyc-") as cache:
        for module, _ in IMPORTS:
            figures[module] = import_cost(module, repeats, Path(cache))
    print(f"import cost on top of {', '.join(IMPORT_BASE)}; fresh processes, median of {repeats}")
    print(f"{'what is imported':58}{'import time':>14}{'RssAnon added':>16}")
    for module, label in IMPORTS:
        f = figures[module]
        if f is None:
            print(f"{label:58}{'not installed':>14}")
        elif f["already_loaded"]:
            print(f"{label:58}{'already loaded':>14}")
        else:
            print(f"{label:58}{f['ms']:>11.1f} ms{f['kb']:>13.0f} kB")
    if as_json:
        print(json.dumps({"base": IMPORT_BASE, "repeats": repeats, "imports": figures}))
    return 0


# --- the endpoint on and off ---------------------------------------------------------------


def summary(runs: list[Run], duration_s: float) -> dict[str, Any]:
    off = [r for r in runs if not r.http]
    on = [r for r in runs if r.http]

    def both(pick: Callable[[Run], float]) -> dict[str, float]:
        return {"off": median([pick(r) for r in off]), "on": median([pick(r) for r in on])}

    ages = [a for r in on for a in r.ages_s]
    page = [a for r in on for a in r.page_ages_s]
    shown = [a for r in on for a in r.page_shown_s]

    def spread_of(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        return {
            "p50": percentile(values, 0.5),
            "p95": percentile(values, 0.95),
            "p99": percentile(values, 0.99),
            "max": max(values),
            "samples": len(values),
        }

    return {
        "vmhwm_mb": both(lambda r: r.hwm_kb / 1024),
        "rss_anon_mb": both(lambda r: r.rss_anon_kb / 1024),
        "rss_file_mb": both(lambda r: r.rss_file_kb / 1024),
        "results_per_s": both(lambda r: r.results_per_s),
        "agent_cores": both(lambda r: r.cpu_s / duration_s),
        "agent_cpu_ms_per_result": both(lambda r: r.cpu_s / r.results_per_s / duration_s * 1000),
        "scraper_cores": median([r.client_cpu_s / duration_s for r in on]),
        "pairs_on_off": [b.results_per_s / a.results_per_s for a, b in zip(off, on, strict=False)],
        "spread_off": max(r.results_per_s for r in off) / min(r.results_per_s for r in off) - 1,
        "client_age_s": spread_of(ages),
        # Without the page: the client's worst plus the page's poll period.
        "page_age_bound_s": max(ages, default=9) + PAGE_POLL_S,
        "page_age_s": spread_of(page),
        "page_shown_age_s": spread_of(shown),
        "latency_ms": {
            path: spread_of([x for r in on for x in r.latencies_ms.get(path, [])])
            for path in ("/metrics", "/api/status")
        },
        "failures": sum(r.failures for r in on),
        "load_max": max(r.load for r in runs),
    }


def report(f: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, bool]]:
    rate = args.fps or "unpaced"
    print(
        f"edge-agent run, configs/agent.toml, source {rate} fps, {args.duration_s:.0f} s "
        f"measured after {WARMUP_S:.0f} s, {args.repeats} off/on pairs "
        f"{'run at the same time' if args.together else 'alternated'} (medians)"
        + ("; the page open in Chromium during the runs with the endpoint on" if args.page else "")
    )
    print(f"{'':34}{'endpoint off':>14}{'on, scraped':>14}{'change':>12}")

    def row(name: str, pair: dict[str, float], unit: str, change: str) -> None:
        print(f"{name:34}{pair['off']:>11.2f} {unit:2}{pair['on']:>11.2f} {unit:2}{change:>12}")

    hwm, anon, rps = f["vmhwm_mb"], f["rss_anon_mb"], f["results_per_s"]
    row("VmHWM", hwm, "MB", f"{hwm['on'] - hwm['off']:+.1f} MB")
    row("RssAnon", anon, "MB", f"{anon['on'] - anon['off']:+.1f} MB")
    files = f["rss_file_mb"]
    row("RssFile (mapped files)", files, "MB", f"{files['on'] - files['off']:+.1f} MB")
    row("throughput (results/s)", rps, "", f"{rps['on'] / rps['off']:.3f}x")
    cores = f["agent_cores"]
    row("agent CPU (cores)", cores, "", f"{cores['on'] - cores['off']:+.3f}")
    print(f"{'scraper CPU, same cores (cores)':34}{'':14}{f['scraper_cores']:>11.3f}")
    per = f["agent_cpu_ms_per_result"]
    row("agent CPU per result (ms)", per, "", f"{per['on'] / per['off']:.3f}x")
    print("throughput on/off by pair: " + ", ".join(f"{x:.3f}" for x in f["pairs_on_off"]))
    print(f"spread between runs without the endpoint: {f['spread_off'] * 100:.1f} %")
    ages = f["client_age_s"] or {"p50": 0, "p99": 0, "max": 0}
    print(
        f"status data age at the client: p50 {ages['p50'] * 1000:.1f} ms, "
        f"p99 {ages['p99'] * 1000:.1f} ms, max {ages['max'] * 1000:.1f} ms; "
        f"on the page at worst {f['page_age_bound_s'] * 1000:.0f} ms "
        f"(that plus its {PAGE_POLL_S * 1000:.0f} ms poll)"
    )
    for key, what in (
        ("page_age_s", "data on the page, by the wall clock"),
        ("page_shown_age_s", "age the page's header shows"),
    ):
        a = f[key]
        if a is not None:
            print(
                f"{what}: median {a['p50'] * 1000:.0f} ms, p95 {a['p95'] * 1000:.0f} ms, "
                f"max {a['max'] * 1000:.0f} ms ({a['samples']} samples)"
            )
    for path, lat in f["latency_ms"].items():
        if lat is not None:
            print(
                f"{path}: {lat['samples']} requests, p50 {lat['p50']:.1f} ms, "
                f"p99 {lat['p99']:.1f} ms"
            )
    print(f"failed requests: {f['failures']}")
    print(f"highest 1-minute load average at the end of a run: {f['load_max']:.1f} (2 cores)")
    page_age = f["page_age_s"]["max"] if f["page_age_s"] else f["page_age_bound_s"]
    verdict = [
        ("RSS growth <= 5 MB", max(hwm["on"] - hwm["off"], anon["on"] - anon["off"]) <= 5.0),
        ("throughput >= 0.99x", rps["on"] >= 0.99 * rps["off"]),
        ("data <= 1 s old" + (" (on the page)" if f["page_age_s"] else ""), page_age <= 1.0),
    ]
    print("targets: " + ", ".join(f"{n}: {'met' if ok else 'MISSED'}" for n, ok in verdict))
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument(
        "--repeats", type=int, default=None, help="off/on pairs (2); with --imports, processes (5)"
    )
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
    parser.add_argument(
        "--page",
        action="store_true",
        help=f"open the status page in headless Chromium ({CHROMIUM}, through Playwright) "
        "during the runs with the endpoint on, and read the data's age off it",
    )
    parser.add_argument(
        "--imports", action="store_true", help="measure what serving HTTP costs to import"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()
    if args.imports:
        return imports(args.repeats or 5, args.json)
    args.repeats = args.repeats or 2
    if args.page and not Path(CHROMIUM).exists():
        raise SystemExit(f"--page: {CHROMIUM} is not installed (apt-get install chromium)")

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
                            lambda w, f: one_run(w, args.duration_s, args.fps, f, args.page),
                            order,
                            folders,
                        )
                    )
            else:
                pair = [
                    one_run(w, args.duration_s, args.fps, f, args.page)
                    for w, f in zip(order, folders, strict=True)
                ]
            for run in pair:
                runs.append(run)
                print(
                    f"  run {len(runs)}: endpoint {'on ' if run.http else 'off'} "
                    f"{run.results_per_s:7.2f} results/s, RssAnon {run.rss_anon_kb / 1024:6.1f}"
                    f" MB, VmHWM {run.hwm_kb / 1024:6.1f} MB, CPU {run.cpu_s:5.1f} s, "
                    f"load average {run.load:.1f}",
                    file=sys.stderr,
                )

    figures = summary(runs, args.duration_s)
    verdict = report(figures, args)
    if args.json:
        figures["targets"] = {name: ok for name, ok in verdict}
        figures["runs"] = [{k: v for k, v in r.__dict__.items() if k not in SAMPLES} for r in runs]
        print(json.dumps(figures))
        return 1 if figures["failures"] else 0
    return 0 if all(ok for _, ok in verdict) and not figures["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
