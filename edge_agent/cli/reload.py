"""`edge-agent reload --pid PID`: a synchronous reload, the unit's ExecReload=.

It sends SIGHUP and returns once the agent has applied the config file, or refused it (exit 2
with the agent's one-line reason), so `systemctl reload edge-agent && ...` sees the new
settings. The agent leaves each reload's outcome in its state directory (reload.json, written
atomically, with the CLOCK_MONOTONIC time the reload began); the command watches that folder
with inotify (edge_agent.watch) and takes the first outcome of that process that began after
the signal. The wait is also woken once a second to notice an agent that has exited."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

from edge_agent.errors import UserError

# Loading models again can take a while on a slow board; the unit's TimeoutStartSec=, which
# also bounds ExecReload=, is 120 s.
DEFAULT_TIMEOUT_S = 90.0
# How often a wait without news checks that the agent still runs.
_ALIVE_CHECK_S = 1.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "reload",
        help="make a running agent reload its config and wait until it has",
        description="Sends SIGHUP to the agent and waits until it has applied its config "
        "file (exit 0) or refused it, keeping the old settings (exit 2, with its reason).",
    )
    parser.add_argument("--pid", type=int, required=True, help="the agent's process id")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="the agent's state directory (default: $EDGE_AGENT_DEVICE__STATE_DIR, else "
        "device.state_dir of --config)",
    )
    parser.add_argument("--config", type=Path, help="the agent's config file, for its state_dir")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for the agent (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    parser.set_defaults(handler=reload)


def reload(args: argparse.Namespace) -> int:
    from edge_agent.systemd import ReloadOutcome
    from edge_agent.watch import DirectoryWatcher

    state_dir = _state_dir(args)
    if not state_dir.is_dir():
        raise UserError(f"{state_dir}: no such state directory")
    with DirectoryWatcher(state_dir) as watcher:
        sent = time.monotonic()
        try:
            os.kill(args.pid, signal.SIGHUP)
        except ProcessLookupError:
            raise UserError(f"no process {args.pid}") from None
        except PermissionError:
            raise UserError(f"process {args.pid}: not allowed to signal it") from None
        deadline = sent + args.timeout
        while True:
            outcome = ReloadOutcome.read(state_dir)
            if outcome is not None and outcome.pid == args.pid and outcome.started >= sent:
                if outcome.ok:
                    return 0
                raise UserError(outcome.message)
            if not _alive(args.pid):
                raise UserError(f"the agent (pid {args.pid}) exited before it had reloaded")
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError(
                    f"the agent (pid {args.pid}) has not finished reloading in "
                    f"{args.timeout:.0f} s (see its log)"
                )
            watcher.wait(min(left, _ALIVE_CHECK_S))


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    from_env = os.environ.get("EDGE_AGENT_DEVICE__STATE_DIR")
    if from_env:
        return Path(from_env)
    from edge_agent.config.load import ConfigError, default_config_path, load_settings

    path = default_config_path(args.config)
    try:
        return load_settings(path).device.state_dir
    except ConfigError as exc:
        raise UserError(
            f"{path}: cannot read the state directory from it ({exc.problems[0]}); give --state-dir"
        ) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
