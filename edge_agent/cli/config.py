"""`edge-agent config validate FILE`: every problem on its own line, with key and line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("config", help="check a config file")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser("validate", help="validate a config file")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from edge_agent.config.load import ConfigError, load_settings

    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    print(
        f"{args.file}: valid ({len(settings.pipelines)} pipeline(s), "
        f"{len(settings.models)} model(s), {len(settings.sources)} source(s))"
    )
    return 0
