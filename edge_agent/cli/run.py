"""`edge-agent run [--config FILE]`: the daemon."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("run", help="run the agent (the daemon)")
    parser.add_argument(
        "--config",
        type=Path,
        help="agent TOML file (default: $EDGE_AGENT_CONFIG, configs/agent.toml in a "
        "checkout, ~/.config/edge-agent/agent.toml unless root, /etc/edge-agent/agent.toml; "
        "`edge-agent config init` writes one)",
    )
    parser.set_defaults(handler=run)


# EX_CONFIG: a config or credential problem that a restart cannot fix. The unit names it
# in RestartPreventExitStatus=, so systemd does not restart into the same error.
EXIT_CONFIG = 78


def run(args: argparse.Namespace) -> int:
    from edge_agent.agent import Agent
    from edge_agent.config.load import (
        ConfigError,
        config_candidates,
        default_config_path,
        load_layers,
    )
    from edge_agent.errors import SettingError, UserError
    from edge_agent.logs import setup_logging
    from edge_agent.service import Service, report_left_out
    from edge_agent.systemd import Notifier

    setup_logging("auto", "debug" if args.debug else "info")
    log = logging.getLogger("edge_agent")
    notifier = Notifier()
    path = default_config_path(args.config)
    if args.config is None and not os.environ.get("EDGE_AGENT_CONFIG") and not path.exists():
        # No file anywhere: say where it looked and how to make one, rather than run a
        # default nobody chose (under systemd that would be a toy model on a real device).
        looked = " or ".join(str(candidate) for candidate in config_candidates())
        problem = f"no config file ({looked}): write one with `edge-agent config init`"
        log.error("cannot start: %s", problem)
        notifier.send(STATUS=f"cannot start: {problem}", ERRNO=EXIT_CONFIG)
        return EXIT_CONFIG
    try:
        layers = load_layers(path, set_aside=True)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("cannot start: %s", problem)
        notifier.send(STATUS=f"cannot start: {exc.problems[0]}", ERRNO=EXIT_CONFIG)
        return EXIT_CONFIG
    settings = layers.settings
    setup_logging(settings.logging.format, "debug" if args.debug else settings.logging.level)
    log.info("config %s, device %s", path, settings.device.id)
    try:
        agent = Agent(settings, config_path=path)
    except SettingError as exc:  # a TLS file that is missing; a full disk stays exit 2
        log.error("cannot start: %s", exc)
        notifier.send(STATUS=f"cannot start: {exc}", ERRNO=EXIT_CONFIG)
        return EXIT_CONFIG
    report_left_out(agent, layers)
    try:
        return Service(agent, path, notifier).run()
    except UserError as exc:  # a model that cannot load, a state dir that cannot be written
        log.error("cannot start: %s", exc)
        notifier.send(STATUS=f"cannot start: {exc}", ERRNO=EXIT_CONFIG)
        return EXIT_CONFIG
