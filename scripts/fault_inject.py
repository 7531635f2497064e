#!/usr/bin/env python3
"""Fault injection against the real agent process and real Mosquitto brokers.

    .venv/bin/python scripts/fault_inject.py kill9 [--rounds 10]
    .venv/bin/python scripts/fault_inject.py drain [--count 100000]
    .venv/bin/python scripts/fault_inject.py chaos [--kills 30 --restarts 5 --cuts 5]
    sudo .venv/bin/python scripts/fault_inject.py diskfull [--cycles 3 --size 3m]

kill9: the agent is killed with SIGKILL `rounds` times at random moments while it makes
results with the broker down; then the broker comes up and the agent starts once more.
drain: a backlog of `count` results is drained through a TCP proxy; the broker is restarted
a third of the way in and the connection cut at two thirds.
chaos: the agent makes results online through a proxy while it is killed, the broker
restarted and the connection cut, in a random order at random moments.
diskfull (root: it mounts a tmpfs): the agent's state on a tiny disk that fills up while the
link is down and comes back while it is still full, then space returns; at the end a stop
while the disk is full. Checks that every result made arrived, is stored or was counted as
dropped, that the watchdog pings went on, and reports the WAL's peak beside its bound.
Each prints what was stored, delivered, lost (must be 0) and duplicated, and whether the
JSON-lines copy holds results the outbox lacks (must be 0); exit 1 if either is not 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults import (
    CannotMount,
    DiskFullReport,
    Report,
    chaos_under_load,
    disk_full,
    drain_through_faults,
    kill_while_offline,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    kill9 = scenarios.add_parser("kill9", help="SIGKILL the agent repeatedly while offline")
    kill9.add_argument("--rounds", type=int, default=10)
    kill9.add_argument("--seed", type=int, default=0, help="for the random kill moments")
    drain = scenarios.add_parser("drain", help="broker restart and cut mid-drain")
    drain.add_argument("--count", type=int, default=100_000)
    chaos = scenarios.add_parser("chaos", help="kills, broker restarts and cuts under load")
    chaos.add_argument("--kills", type=int, default=30)
    chaos.add_argument("--restarts", type=int, default=5)
    chaos.add_argument("--cuts", type=int, default=5)
    chaos.add_argument("--fps", type=int, default=100, help="results made per second")
    chaos.add_argument("--seed", type=int, default=0, help="for the order and moments")
    full = scenarios.add_parser("diskfull", help="a tiny disk that fills up (root)")
    full.add_argument("--cycles", type=int, default=3)
    full.add_argument("--size", default="3m", help="of the tmpfs (mount's size=)")
    full.add_argument("--fps", type=int, default=100, help="results made per second")
    parser.add_argument("--keep", type=Path, help="work in this new folder and keep it (logs)")
    args = parser.parse_args()
    # Short: the systemd notify socket lives here, and its path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        work = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep.resolve()
        report: Report
        if args.scenario == "kill9":
            report = kill_while_offline(work, args.rounds, args.seed)
        elif args.scenario == "drain":
            report = drain_through_faults(work, args.count)
        elif args.scenario == "chaos":
            report = chaos_under_load(
                work, args.kills, args.restarts, args.cuts, args.seed, args.fps
            )
        else:
            try:
                report = disk_full(work, args.cycles, args.fps, args.size)
            except CannotMount as exc:
                print(f"diskfull: cannot mount a tmpfs (run as root): {exc}", file=sys.stderr)
                return 2
    print(f"{args.scenario}: " + "\n  ".join(report.lines()))
    failed = bool(report.lost or report.copy_extra)
    if isinstance(report, DiskFullReport):
        failed = failed or bool(report.unhealthy) or any(report.statuses)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
