#!/usr/bin/env python3
"""Runtime benchmark: the figures of the foundation issue, each beside its baseline.

    .venv/bin/python scripts/bench_runtime.py [--runs 2000] [--model MODEL.tflite]

- per-invoke overhead of `edge-agent bench` over the bare interpreter loop, 1 and 2 threads
  (target: at most 2%);
- model load plus first inference (target: under 100 ms);
- `edge-agent infer` on one image, wall time from the shell (target: under 1 s), beside a
  bare Python process that only imports numpy, OpenCV and LiteRT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )


def wall(command: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/mobilenet_v2_int8.tflite")
    parser.add_argument("--image", default="models/samples/detector_scene.png")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5, help="process starts to time")
    args = parser.parse_args()

    print(f"model {args.model}, {args.runs} timed invokes per thread count\n")
    print(f"{'figure':<38}{'agent':>12}{'baseline':>12}{'ratio':>9}  target")
    for threads in (1, 2):
        report = json.loads(
            agent(
                "bench", args.model, "--threads", str(threads), "--runs", str(args.runs), "--json"
            ).stdout
        )
        a, b = report["agent"], report["bare"]
        for stat in ("mean_ms", "p50_ms"):
            label = f"invoke {stat[:-3]}, {threads} thread(s) [ms]"
            print(f"{label:<38}{a[stat]:>12.3f}{b[stat]:>12.3f}{a[stat] / b[stat]:>9.3f}")
        # The verdict uses the median over alternating blocks: the steadiest figure here.
        ratio = 1 + report["overhead_block_median_pct"] / 100
        verdict = "ok" if ratio <= 1.02 else "MISSED"
        label = f"overhead (median of blocks), {threads} thr"
        print(f"{label:<38}{'':>12}{'':>12}{ratio:>9.3f}  <= 1.02 {verdict}")
        first = report["init_plus_first_ms"]
        verdict = "ok" if first < 100 else "MISSED"
        print(
            f"{f'load + first inference, {threads} thr [ms]':<38}{first:>12.1f}{'':>12}{'':>9}"
            f"  < 100 {verdict}"
        )
        label = f"  (delegate {report['delegate']}, peak RSS MB)"
        print(f"{label:<38}{report['peak_rss_mb']:>12.1f}")

    # The agent's own cost per call, in absolute terms: on a model whose invoke takes
    # microseconds, machine noise cannot hide it.
    tiny = json.loads(
        agent(
            "bench", "models/digits_int8.tflite", "--threads", "1", "--runs", "20000", "--json"
        ).stdout
    )
    extra_us = (tiny["agent"]["mean_ms"] - tiny["bare"]["mean_ms"]) * 1000
    share = extra_us / 1000 / report["bare"]["mean_ms"]
    print(
        f"{'agent cost per call (digits) [us]':<38}{tiny['agent']['mean_ms'] * 1000:>12.1f}"
        f"{tiny['bare']['mean_ms'] * 1000:>12.1f}{'':>9}  = {extra_us:.1f} us, "
        f"{share:.2%} of a 2-thread MobileNet invoke"
    )

    python = sys.executable
    floor = wall([python, "-c", "import numpy, cv2, ai_edge_litert.interpreter"], args.repeats)
    infer = wall([python, "-m", "edge_agent", "infer", args.model, args.image], args.repeats)
    verdict = "ok" if infer < 1.0 else "MISSED"
    print(
        f"{'infer on one image, wall [s]':<38}{infer:>12.3f}{floor:>12.3f}{infer / floor:>9.2f}"
        f"  < 1 s {verdict}"
    )
    print("  (baseline: a Python process importing numpy, cv2 and LiteRT, nothing else)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
