#!/usr/bin/env python3
"""Every performance figure of the agent beside its baseline, each benchmark run --runs
times in turns, with the spread.

    .venv/bin/python scripts/bench_performance.py [--runs 3] [--out figures.json]

It runs the benchmarks that measure each part, as separate processes, each printing JSON:
  bench_pipeline.py      throughput against the naive loop, the `edge-agent run` process,
                         pre-made tensors against bare invoke(), p99 against the stages' p99s
  bench_decode_scale.py  the CPU ceiling with full and with reduced JPEG decode, and the
                         pipeline against each
  bench_memory.py        VmHWM and RssAnon of `edge-agent run` (demo, default, sensor-only)
                         and start to first result, beside a hand-written script
  bench_link.py          outbox drain against raw paho's best in-flight window; RSS through
                         a 100,000-row drain
  bench_lossless.py      on_full = "wait" against "drop_oldest" on a recording
  bench_http.py          the HTTP endpoint on and scraped 10+10 times a second, with the
                         status page open in headless Chromium where /usr/bin/chromium is,
                         against the same agent without it: RSS growth, throughput, the
                         age of the data on the page
Each figure is printed as the median of the runs with the lowest and highest beside it, and
how many runs met the target. About 9 minutes a round on 2 cores; `--only NAME...` runs
and reports a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python")

BENCHES: dict[str, list[str]] = {
    "pipeline": ["bench_pipeline.py", "--json"],
    "decode": ["bench_decode_scale.py", "--json", "--runs", "1"],
    "memory": ["bench_memory.py", "--json", "--seconds", "15"],
    "link": ["bench_link.py", "--json", "--repeats", "1"],
    "lossless": ["bench_lossless.py", "--json", "--repeats", "1"],
    # One off/on pair of 20 s each, the page open beside the scrapers when Chromium is here.
    "http": ["bench_http.py", "--json", "--repeats", "1", "--duration-s", "20"]
    + (["--page"] if shutil.which("chromium") or Path("/usr/bin/chromium").exists() else []),
}

Results = dict[str, Any]  # one run of every benchmark, by name
Pick = Callable[[Results], tuple[float, float | None]]  # (value, baseline) of one run


@dataclass(frozen=True)
class Row:
    bench: str  # the benchmark (BENCHES) it reads
    label: str
    pick: Pick
    target: str  # as printed
    met: Callable[[float, float | None], bool]  # (value, baseline) -> target held
    unit: str = ""


def _fig(name: str) -> Pick:
    def pick(r: Results) -> tuple[float, float | None]:
        f = r["pipeline"]["figures"][name]
        return f["value"], f["baseline"]

    return pick


def _memory(config: str, key: str) -> Pick:
    def pick(r: Results) -> tuple[float, float | None]:
        run = r["memory"][config]
        scale = 1.0 if key == "first_result_s" else 1 / 1024
        return run["agent"][key] * scale, run["naive"][key] * scale

    return pick


def _ratio_at_least(limit: float) -> Callable[[float, float | None], bool]:
    return lambda v, b: b is not None and v / b >= limit


def _ratio_at_most(limit: float) -> Callable[[float, float | None], bool]:
    return lambda v, b: b is not None and v / b <= limit


def _value_at_most(limit: float) -> Callable[[float, float | None], bool]:
    return lambda v, b: v <= limit


def _growth_at_most(limit: float) -> Callable[[float, float | None], bool]:
    return lambda v, b: b is not None and v - b <= limit


def _http(key: str) -> Pick:
    def pick(r: Results) -> tuple[float, float | None]:
        pair = r["http"][key]
        return pair["on"], pair["off"]

    return pick


def _page_age(r: Results) -> tuple[float, float | None]:
    """Read off the page in Chromium; without it, the client's worst plus the poll."""
    page = r["http"]["page_age_s"]
    return (page["max"] if page else r["http"]["page_age_bound_s"]), None


ROWS = [
    Row(
        "decode",
        "pipeline (full decode) vs CPU ceiling with full decode [fps]",
        lambda r: (r["decode"]["pipeline_fps"]["full"], r["decode"]["ceiling_fps"]["full"]),
        "ratio >= 0.95",
        _ratio_at_least(0.95),
    ),
    Row(
        "decode",
        "pipeline (reduced decode, default) vs CPU ceiling with full decode [fps]",
        lambda r: (r["decode"]["pipeline_fps"]["auto"], r["decode"]["ceiling_fps"]["full"]),
        "ratio > 1",
        _ratio_at_least(1.0),
    ),
    Row(
        "decode",
        "pipeline (reduced decode) vs CPU ceiling with reduced decode [fps]",
        lambda r: (r["decode"]["pipeline_fps"]["auto"], r["decode"]["ceiling_fps"]["auto"]),
        "ratio >= 0.95",
        _ratio_at_least(0.95),
    ),
    Row(
        "pipeline",
        "`edge-agent run` process vs naive cv2+interpreter loop [fps]",
        _fig("process_vs_naive"),
        "ratio >= 1.8",
        _ratio_at_least(1.8),
    ),
    Row(
        "pipeline",
        "in-process pipeline vs naive loop [fps]",
        _fig("pipeline_vs_naive"),
        "ratio >= 1.4",
        _ratio_at_least(1.4),
    ),
    Row(
        "pipeline",
        "pre-made tensors vs bare invoke(), 1 thread [fps]",
        _fig("tensors_vs_bare_1thr"),
        "ratio >= 0.97",
        _ratio_at_least(0.97),
    ),
    Row(
        "pipeline",
        "pre-made tensors vs bare invoke(), 2 threads [fps]",
        _fig("tensors_vs_bare_2thr"),
        "reported",
        lambda v, b: True,
    ),
    Row(
        "pipeline",
        "p99 read to hand-off at half load vs sum of stage p99s [ms]",
        _fig("p99_vs_stage_p99s"),
        "ratio <= 1.3",
        _ratio_at_most(1.3),
    ),
    Row(
        "memory",
        "start to first result, default config [s]",
        _memory("default", "first_result_s"),
        "<= 0.5",
        _value_at_most(0.5),
    ),
    Row(
        "memory",
        "start to first result, demo [s]",
        _memory("demo", "first_result_s"),
        "reported",
        lambda v, b: True,
    ),
    Row(
        "memory",
        "VmHWM, default config (2 models) [MB]",
        _memory("default", "VmHWM"),
        "<= 120",
        _value_at_most(120),
    ),
    Row(
        "memory",
        "RssAnon, default config [MB]",
        _memory("default", "RssAnon"),
        "reported",
        lambda v, b: True,
    ),
    Row(
        "memory",
        "VmHWM, demo (scripts/run.sh) [MB]",
        _memory("demo", "VmHWM"),
        "<= 120",
        _value_at_most(120),
    ),
    Row("memory", "RssAnon, demo [MB]", _memory("demo", "RssAnon"), "reported", lambda v, b: True),
    Row(
        "memory",
        "VmHWM, sensor-only config [MB]",
        _memory("sensor", "VmHWM"),
        "<= 64",
        _value_at_most(64),
    ),
    Row(
        "memory",
        "RssAnon, sensor-only config [MB]",
        _memory("sensor", "RssAnon"),
        "reported",
        lambda v, b: True,
    ),
    Row(
        "link",
        "outbox drain vs raw paho, best window of the sweep [msg/s]",
        lambda r: (r["link"]["agent_msg_s"], r["link"]["raw_best_msg_s"]),
        "ratio >= 0.9",
        _ratio_at_least(0.9),
    ),
    Row(
        "link",
        "RSS through a 100,000-row drain, peak vs start [MB]",
        lambda r: (r["link"]["rss_peak_mb"], r["link"]["rss_start_mb"]),
        "ratio <= 1.05",
        _ratio_at_most(1.05),
    ),
    Row(
        "lossless",
        'on_full = "wait" vs "drop_oldest" on a recording [results/s]',
        lambda r: (r["lossless"]["wait"], r["lossless"]["drop_oldest"]),
        "ratio >= 0.95",
        _ratio_at_least(0.95),
    ),
    Row(
        "http",
        "VmHWM, endpoint on (scraped 10+10/s, page open) vs off [MB]",
        _http("vmhwm_mb"),
        "growth <= 5 MB",
        _growth_at_most(5.0),
    ),
    Row(
        "http",
        "RssAnon, endpoint on vs off [MB]",
        _http("rss_anon_mb"),
        "growth <= 5 MB",
        _growth_at_most(5.0),
    ),
    Row(
        "http",
        "throughput, endpoint on vs off [results/s]",
        _http("results_per_s"),
        "ratio >= 0.99",
        _ratio_at_least(0.99),
    ),
    Row("http", "age of the data on the page, max [s]", _page_age, "<= 1", _value_at_most(1.0)),
]


def run_bench(name: str) -> Any:
    script, *args = BENCHES[name]
    started = time.monotonic()
    proc = subprocess.run(
        [PYTHON, str(ROOT / "scripts" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{script} failed (exit {proc.returncode})")
    print(f"  {script}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    def num(x: float) -> str:
        return f"{x:.2f}" if abs(x) < 10 else f"{x:.0f}"

    median = statistics.median(values)
    if len(values) == 1:
        return num(median)
    return f"{num(median)} ({num(min(values))}-{num(max(values))})"


def report(runs: list[Results]) -> None:
    print(f"{len(runs)} runs of each benchmark, in turns; median (lowest-highest)\n")
    print(f"{'figure':<74}{'agent':>22}{'baseline':>22}{'ratio':>20}  target, runs met")
    for row in ROWS:
        if row.bench not in runs[0]:
            continue  # not run (--only)
        picked = [row.pick(r) for r in runs]
        values = [v for v, _ in picked]
        baselines = [b for _, b in picked if b is not None]
        ratios = [v / b for v, b in picked if b]
        met = sum(row.met(v, b) for v, b in picked)
        print(
            f"{row.label:<74}{spread(values):>22}"
            f"{spread(baselines) if baselines else '':>22}"
            f"{spread(ratios) if ratios else '':>20}  {row.target}, {met} of {len(runs)}"
        )
    if "pipeline" not in runs[0]:
        return
    stages = [r["pipeline"]["latency_ms"] for r in runs]
    print("\np99 by stage at half load [ms], median of runs:")
    for stage in stages[0]:
        print(f"  {stage:<12}{statistics.median(s[stage]['p99'] for s in stages):>8.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--only", nargs="*", choices=list(BENCHES), help="run and report these only"
    )
    parser.add_argument("--out", type=Path, help="every run's JSON, for the record")
    args = parser.parse_args()
    names = args.only or list(BENCHES)
    runs: list[Results] = []
    for i in range(args.runs):
        print(f"round {i + 1} of {args.runs}", file=sys.stderr)
        runs.append({name: run_bench(name) for name in names})
        if args.out:
            args.out.write_text(json.dumps(runs, indent=1))
    report(runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
