"""`edge-agent run [--config FILE]`: the daemon."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("run", help="run the agent (the daemon)")
    parser.add_argument(
        "--config",
        type=Path,
        help="agent TOML file (default: $EDGE_AGENT_CONFIG, configs/agent.toml in a "
        "checkout, /etc/edge-agent/agent.toml)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config.load import default_config_path, load_settings
    from edge_agent.service import Service

    path = default_config_path(args.config)
    settings = load_settings(path)
    if not args.debug:
        logging.getLogger().setLevel(settings.logging.level.upper())
    logging.getLogger(__name__).info("config %s, device %s", path, settings.device.id)
    agent = Agent(settings, config_path=path)
    return Service(agent, path).run()
