"""`edge-agent results stats|tail|export|purge`: the local results, also while the agent
runs. Purge deletes stored messages a short transaction at a time (outbox/purge.py), so the
running agent's writer goes on and loses nothing it has not been asked to."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TIME_FORMS = "give 2026-11-26T10:00, 1795700000, or 15m / 2h / 7d"
# The classes by the names a user gives (plural, as in [outbox]) and as stored.
_CLASSES = {"results": "result", "events": "event", "telemetry": "telemetry"}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("results", help="read the results kept in the outbox")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, helptext in (
        ("stats", "counts, bytes and ages"),
        ("tail", "the latest results"),
        ("export", "results as JSON lines"),
    ):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("--config", type=Path, help="agent TOML file (for the state dir)")
        action.add_argument("--json", action="store_true", help="machine-readable output")
        if name != "stats":
            action.add_argument(
                "--since",
                help="only results from then on: ISO time, unix seconds, or 15m/2h/1d ago",
            )
        if name == "tail":
            action.add_argument("-n", type=int, default=10, help="how many (default 10)")
        action.set_defaults(handler=run)
    purge = actions.add_parser(
        "purge",
        help="delete stored messages (all states), also while the agent runs",
        description="Deletes stored messages, delivered or not, and gives their space back to "
        "the disk. Safe while the agent runs: what it stores meanwhile is kept, and it counts "
        "the undelivered messages purged in its drops.",
    )
    purge.add_argument("--config", type=Path, help="agent TOML file (for the state dir)")
    purge.add_argument(
        "--before",
        help="only messages made before then: ISO time, unix seconds, or 2h / 7d ago "
        "(default: whatever their age)",
    )
    purge.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="results, events or telemetry; may be given again (default: every class)",
    )
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(handler=run_purge)


def run(args: argparse.Namespace) -> int:
    from edge_agent.agent import outbox_path
    from edge_agent.config.load import default_config_path, load_settings
    from edge_agent.errors import UserError
    from edge_agent.outbox.database import iter_results, read_only

    settings = load_settings(default_config_path(args.config))
    path = outbox_path(settings)
    if not path.exists():
        raise UserError(f"{path}: no outbox yet (the agent has not stored a result)")
    db = read_only(path)
    if args.action == "stats":
        return _stats(db, args.json)
    since = parse_since(args.since) if args.since else None
    rows = iter_results(db, since, last=args.n if args.action == "tail" else None)
    for created, payload, state in rows:
        if args.json or args.action == "export":
            sys.stdout.write(payload.decode() + "\n")
        else:
            sys.stdout.write(_line(created, payload, state) + "\n")
    return 0


def parse_since(text: str) -> float:
    return parse_time(text, "--since")


def parse_time(text: str, option: str) -> float:
    """Unix seconds from an ISO time (local time unless it names a zone), unix seconds, or
    a duration ago; a UserError naming `option` otherwise."""
    from edge_agent.errors import UserError

    relative = _RELATIVE.match(text)
    if relative:
        return time.time() - float(relative.group(1)) * _UNIT_S[relative.group(2)]
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value == value and abs(value) != float("inf"):  # not nan or inf
            return value
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(f"{option} {text!r}: not a time ({_TIME_FORMS})") from None


def run_purge(args: argparse.Namespace) -> int:
    from edge_agent.agent import outbox_path
    from edge_agent.config.load import default_config_path, load_settings
    from edge_agent.errors import UserError
    from edge_agent.outbox.purge import purge

    before = None
    if args.before is not None:
        before = parse_time(args.before, "--before")
        if before > time.time():
            raise UserError(
                f"--before {args.before!r}: in the future; it would take messages the agent "
                "is storing now (give a time past, or leave it out for every message)"
            )
    classes = []
    for name in args.classes or _CLASSES:
        if name not in _CLASSES:
            raise UserError(f"--class {name!r}: not a class (give results, events or telemetry)")
        classes.append(_CLASSES[name])
    settings = load_settings(default_config_path(args.config))
    path = outbox_path(settings)
    if not path.exists():
        raise UserError(f"{path}: no outbox yet (the agent has not stored a result)")
    done = purge(path, before, tuple(dict.fromkeys(classes)), dry_run=args.dry_run)
    if args.json:
        sys.stdout.write(json.dumps({"dry_run": args.dry_run, **vars(done)}) + "\n")
        return 0
    verb = "would purge" if args.dry_run else "purged"
    detail = "; ".join(
        ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
        for counts in (done.by_class, done.by_state)
        if counts
    )
    line = f"{verb} {done.count} message(s), {_megabytes(done.bytes)}" + (
        f": {detail}" if detail else ""
    )
    if not args.dry_run:
        line += (
            f"; outbox files {_megabytes(done.file_bytes_before)} ->"
            f" {_megabytes(done.file_bytes_after)}"
        )
    sys.stdout.write(line + "\n")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def _stats(db: Any, as_json: bool) -> int:
    now = time.time()
    rows = db.execute(
        "SELECT class, state, COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM messages"
        " GROUP BY class, state"
    ).fetchall()
    names = {0: "pending", 1: "delivered", 2: "set_aside"}
    stats: dict[str, dict[str, Any]] = {}
    for cls, state, count, size, oldest in rows:
        stats.setdefault(cls, {})[names[state]] = {
            "count": count,
            "bytes": size,
            "oldest_age_s": round(now - oldest, 1) if oldest else None,
        }
    if as_json:
        sys.stdout.write(json.dumps(stats) + "\n")
        return 0
    if not stats:
        sys.stdout.write("outbox is empty\n")
    for cls, by_state in sorted(stats.items()):
        parts = [
            f"{state} {v['count']} ({v['bytes'] / 1e6:.2f} MB, oldest {v['oldest_age_s']:.0f} s)"
            for state, v in by_state.items()
        ]
        sys.stdout.write(f"{cls}: " + ", ".join(parts) + "\n")
    return 0


def _line(created: float, payload: bytes, state: int) -> str:
    record = json.loads(payload)
    when = datetime.fromtimestamp(created).isoformat(timespec="milliseconds")
    flag = {0: "pending", 1: "delivered", 2: "set aside"}[state]
    result = json.dumps(record.get("result"), separators=(",", ":"))
    if len(result) > 100:
        result = result[:97] + "..."
    return f"{when} {record.get('pipeline')} #{record.get('seq')} [{flag}] {result}"
