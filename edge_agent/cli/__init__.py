"""`edge-agent` command line. Each subcommand lives in its own module and imports what it
needs only when it runs, so `--help` and short commands start fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge_agent import __version__
from edge_agent.cli import bench, config, infer, models, reload, results, run
from edge_agent.errors import USAGE_ERROR, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="Run quantized TFLite models on edge devices."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.add_parser(commands)
    infer.add_parser(commands)
    bench.add_parser(commands)
    config.add_parser(commands)
    results.add_parser(commands)
    models.add_parser(commands)
    reload.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        # `run` sets up its own logging once it knows the config (journald, JSON or text).
        return run_command("edge-agent", args, "edge-agent: %(message)s")
    except ModuleNotFoundError as exc:
        # The base install is edge-fleet's; the agent's own dependencies are an extra.
        debug = "--debug" in (sys.argv[1:] if argv is None else argv)
        if (exc.name or "edge_agent").split(".")[0] == "edge_agent" or debug:
            raise
        print(
            f"edge-agent: needs the agent's dependencies (no module {exc.name!r}): "
            "pip install 'edge-agent[agent]'",
            file=sys.stderr,
        )
        return USAGE_ERROR
