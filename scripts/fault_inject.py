#!/usr/bin/env python3
"""Fault injection against the real agent process and real Mosquitto brokers.

    .venv/bin/python scripts/fault_inject.py kill9 [--rounds 10]
    .venv/bin/python scripts/fault_inject.py drain [--count 100000]

kill9: the agent is killed with SIGKILL `rounds` times at random moments while it makes
results with the broker down; then the broker comes up and the agent starts once more.
drain: a backlog of `count` results is drained through a TCP proxy; the broker is restarted
a third of the way in and the connection cut at two thirds.
Both print what was stored, delivered, lost (must be 0) and duplicated (bounded by the
in-flight window at each fault), and exit 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults import Report, drain_through_faults, kill_while_offline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    kill9 = scenarios.add_parser("kill9", help="SIGKILL the agent repeatedly while offline")
    kill9.add_argument("--rounds", type=int, default=10)
    kill9.add_argument("--seed", type=int, default=0, help="for the random kill moments")
    drain = scenarios.add_parser("drain", help="broker restart and cut mid-drain")
    drain.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report: Report
        if args.scenario == "kill9":
            report = kill_while_offline(Path(tmp), args.rounds, args.seed)
        else:
            report = drain_through_faults(Path(tmp), args.count)
    print(f"{args.scenario}: " + "\n  ".join(report.lines()))
    return 1 if report.lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
