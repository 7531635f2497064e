"""`edge-agent models list|activate|rollback|remove`: the installed model versions and which
one runs, changed on the local store in the config's state dir. `models inspect|manifest`
look at one model file (cli/inspect.py)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.config.settings import AgentSettings
    from edge_agent.updates.store import ActiveRecord, ModelStore


def add_parser(commands: Any) -> None:
    from edge_agent.cli import inspect

    parser = commands.add_parser(
        "models", help="installed model versions and which one runs; inspect a model file"
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    list_ = actions.add_parser("list", help="every model: versions installed, which runs")
    activate = actions.add_parser("activate", help="run an installed version (on trial)")
    activate.add_argument("name", help="the model ([models.NAME] in the config)")
    activate.add_argument("version", help="an installed version")
    rollback = actions.add_parser("rollback", help="back to the previous version")
    rollback.add_argument("name", help="the model ([models.NAME] in the config)")
    remove = actions.add_parser(
        "remove", help="delete an installed version (not the active one or the rollback target)"
    )
    remove.add_argument("name", help="the model ([models.NAME] in the config)")
    remove.add_argument("version", help="an installed version")
    from edge_agent.cli import quantize  # the quantize subcommand lives in its own module

    quantize.add_parser(actions)
    for action in (list_, activate, rollback, remove):
        action.add_argument("--config", type=Path, help="agent TOML file (for the state dir)")
        action.add_argument("--json", action="store_true", help="machine-readable output")
        action.set_defaults(handler=run)
    inspect.add_actions(actions)


def open_store(settings: AgentSettings) -> ModelStore:
    from edge_agent.updates.store import ModelStore

    return ModelStore(settings.device.state_dir / "models", settings.updates.keep_versions)


def run(args: argparse.Namespace) -> int:
    from edge_agent.config.load import default_config_path, load_settings
    from edge_agent.errors import UserError

    settings = load_settings(default_config_path(args.config))
    store = open_store(settings)
    if args.action == "list":
        return _list(settings, store, args.json)
    if args.action == "remove":
        store.remove(args.name, args.version)
        left = store.versions(args.name)
        if args.json:
            sys.stdout.write(
                json.dumps({"name": args.name, "removed": args.version, "installed": left}) + "\n"
            )
        else:
            sys.stdout.write(
                f"{args.name}: removed {args.version}; installed: {', '.join(left) or 'none'}\n"
            )
        return 0
    before = store.active(args.name)
    if args.action == "activate":
        if args.name not in settings.models:
            known = ", ".join(sorted(settings.models)) or "none"
            raise UserError(f"model {args.name!r}: not in the config (models: {known})")
        after: ActiveRecord | None = store.activate(args.name, args.version)
    else:
        after = store.rollback(args.name)
    if args.json:
        sys.stdout.write(json.dumps({"name": args.name, **_record(after)}) + "\n")
        return 0
    was = before.version if before else "the config's file"
    if after is None:
        now = "the config's file"
        path = settings.models.get(args.name)
        if path is not None:
            now += f" ({path.path})"
    else:
        now = f"{after.version} ({after.state})"
    if before is not None and after is not None and before.version == after.version:
        sys.stdout.write(f"{args.name}: {now} was already active\n")
    else:
        sys.stdout.write(f"{args.name}: {was} -> {now}\n")
    return 0


def _list(settings: AgentSettings, store: ModelStore, as_json: bool) -> int:
    listing = store.list()
    # Models the config names but no update touched yet run the config's file.
    for name in settings.models:
        listing.setdefault(name, _record(None) | {"versions": []})
    for name, entry in listing.items():
        model = settings.models.get(name)
        entry["path"] = str(_running_path(store, name, model.path if model else None))
    if as_json:
        sys.stdout.write(json.dumps(listing, sort_keys=True) + "\n")
        return 0
    if not listing:
        sys.stdout.write("no models configured or installed\n")
    for name, entry in sorted(listing.items()):
        if entry["active"] is None:
            running = "config file"
        else:
            since = datetime.fromtimestamp(entry["since"]).isoformat(timespec="seconds")
            running = f"{entry['active']} ({entry['state']} since {since}"
            running += f", previous {entry['previous'] or 'config file'})"
        installed = ", ".join(entry["versions"]) or "none"
        sys.stdout.write(f"{name}: {running}; installed: {installed}; runs {entry['path']}\n")
    return 0


def _running_path(store: ModelStore, name: str, configured: Path | None) -> Path | str:
    path = store.model_path(name)
    if path is not None:
        return path
    return configured if configured is not None else "(not in the config)"


def _record(record: ActiveRecord | None) -> dict[str, Any]:
    if record is None:
        return {"active": None, "previous": None, "state": None, "since": None}
    return {
        "active": record.version,
        "previous": record.previous,
        "state": record.state,
        "since": record.since,
    }
