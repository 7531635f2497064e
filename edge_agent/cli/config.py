"""`edge-agent config validate FILE`: every problem on its own line, with key and line.
`edge-agent config show [--config FILE] [--origin]`: the settings the agent would run, and
where each value came from. `edge-agent config reference`: every key, as docs/config.md.
`edge-agent config init [PATH]`: the packaged default config, written where `run` finds it."""

from __future__ import annotations

import argparse
import contextlib
import os
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
        "checkout, ~/.config/edge-agent/agent.toml unless root, /etc/edge-agent/agent.toml)",
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
    init = actions.add_parser(
        "init",
        help="write the packaged default config, every section documented, its paths made "
        "absolute: the model installed with the package, a synthetic source, the state in "
        "STATE_DIR",
    )
    init.add_argument(
        "path",
        nargs="?",
        type=Path,
        help="where to write it (default: /etc/edge-agent/agent.toml as root, else "
        "~/.config/edge-agent/agent.toml: where `edge-agent run` looks)",
    )
    init.add_argument(
        "--state-dir",
        type=Path,
        help="the agent's state: outbox, journals, model store (default: /var/lib/edge-agent "
        "as root, else ~/.local/state/edge-agent)",
    )
    init.add_argument("--force", action="store_true", help="replace an existing file")
    init.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    from edge_agent.config import packaged
    from edge_agent.durable import fsync_dir, write_synced
    from edge_agent.errors import UserError

    path: Path = args.path or packaged.default_init_path()
    state_dir: Path = args.state_dir or packaged.default_state_dir()
    data = packaged.render(state_dir).encode()
    if path.is_dir():
        raise UserError(f"{path}: is a folder; name the file, e.g. {path / 'agent.toml'}")
    if path.exists() and not args.force:
        raise UserError(f"{path}: exists; --force replaces it")
    temporary = path.with_name(f".{path.name}.new")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synced(temporary, data)
        if args.force:
            os.replace(temporary, path)
        else:  # link, not rename: a file that appeared meanwhile is not replaced
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise UserError(f"{path}: exists; --force replaces it") from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and Path(exc.filename) != path else ""
        raise UserError(f"{path}: cannot write: {exc.strerror}{where}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    fsync_dir(path.parent)
    print(path.absolute())
    return 0


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
