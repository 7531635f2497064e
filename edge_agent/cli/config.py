"""`edge-agent config validate FILE`: every problem on its own line, with key and line.
`edge-agent config show [--config FILE] [--origin]`: the settings the agent would run, and
where each value came from. `edge-agent config reference`: every key, as docs/config.md."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("config", help="check a config file, show the settings")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    validate = actions.add_parser("validate", help="validate a config file")
    validate.add_argument("file", type=Path)
    validate.set_defaults(handler=run_validate)
    show = actions.add_parser(
        "show",
        help="print the effective settings as TOML: defaults < the file < the remote "
        "overlay (remote.toml in the state directory) < EDGE_AGENT_* environment; "
        "secrets masked",
    )
    show.add_argument(
        "--config",
        type=Path,
        help="agent TOML file (default: $EDGE_AGENT_CONFIG, configs/agent.toml in a "
        "checkout, /etc/edge-agent/agent.toml)",
    )
    show.add_argument(
        "--origin",
        action="store_true",
        help="say after each value where it came from: default, FILE:LINE, "
        "remote.toml:LINE or env NAME",
    )
    show.set_defaults(handler=run_show)
    reference = actions.add_parser(
        "reference",
        help="print every section and key (type, default, description, how a change applies) "
        "as Markdown: docs/config.md",
    )
    reference.set_defaults(handler=run_reference)


def run_reference(args: argparse.Namespace) -> int:
    from edge_agent.config.reference import reference

    sys.stdout.write(reference())
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from edge_agent.config.load import ConfigError, load_layers

    try:
        layers = load_layers(args.file)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    settings = layers.local
    print(
        f"{args.file}: valid ({len(settings.pipelines)} pipeline(s), "
        f"{len(settings.models)} model(s), {len(settings.sources)} source(s))"
    )
    if layers.remote_text:
        print(f"{layers.remote_path}: remote changes over it, valid")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from edge_agent.config.load import ConfigError, default_config_path, load_layers
    from edge_agent.config.show import render

    try:
        layers = load_layers(default_config_path(args.config))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    sys.stdout.write(render(layers, origins=args.origin))
    return 0
