"""Wall time of `edge-agent models inspect MODEL` beside `python -c 'import edge_agent'`, in
the same run: the command must answer in under 1 s.

    .venv/bin/python scripts/bench_inspect.py [MODEL ...] [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = [
    ROOT / "models" / "mobilenet_v2_int8.tflite",
    ROOT / "models" / "digits_int8.tflite",
]
LIMIT_S = 1.0


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def median_wall(command: list[str], runs: int) -> float:
    wall(command)  # page cache and .pyc warm, as on a device after the first call
    return statistics.median(wall(command) for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    baseline = median_wall([python, "-c", "import edge_agent"], args.runs)
    print(f"python -c 'import edge_agent': {baseline * 1000:.0f} ms (median of {args.runs})")
    worst = 0.0
    for model in args.models:
        for extra in ([], ["--json"]):
            command = [python, "-m", "edge_agent", "models", "inspect", str(model), *extra]
            took = median_wall(command, args.runs)
            worst = max(worst, took)
            size = model.stat().st_size
            print(
                f"models inspect {model.name} {' '.join(extra)}".rstrip()
                + f" ({size:,} B): {took * 1000:.0f} ms"
            )
    verdict = "under" if worst < LIMIT_S else "OVER"
    print(f"slowest {worst * 1000:.0f} ms: {verdict} the {LIMIT_S:.0f} s limit")
    return 0 if worst < LIMIT_S else 1


if __name__ == "__main__":
    sys.exit(main())
