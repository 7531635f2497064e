"""set_config: a partial change merged into the TOML file and validated as a whole, checked
against what a remote change may touch, applied, and only then written atomically with the
previous file kept beside it (`agent.toml.prev`).

What the change may touch is judged on the settings the loader makes of the merged file, not
on the keys as sent, so letter case or a table removed and added again change nothing."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import tomli_w
from pydantic import BaseModel

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

from edge_agent.commands.handlers import CommandError
from edge_agent.config.load import ConfigError, load_settings
from edge_agent.config.local_only import local_values, matches
from edge_agent.config.settings import AgentSettings, CommandsSettings
from edge_agent.durable import fsync_dir, fsync_path, write_synced

# Keys a remote change may not touch unless commands.allow_remote_security_changes: who is
# trusted, how the device proves itself, where it connects and whether it does.
SECURITY_KEYS = (
    "updates.trusted_keys",
    "updates.allow_unsigned",
    "commands",
    "mqtt.enabled",
    "mqtt.host",
    "mqtt.port",
    "mqtt.topic_prefix",
    "mqtt.username",
    "mqtt.password",
    "mqtt.password_file",
    "mqtt.tls",
    "mqtt.client_id",
    "mqtt.transport",
    "mqtt.websocket_path",
    "device.id",
)
# Never from the network: the outbox, the journals and the installed models live there.
STATE_DIR = "device.state_dir"


@dataclass
class Edit:
    """A change that passed every check, waiting to be applied and then kept."""

    path: Path
    candidate: Path  # the merged file, beside the config
    settings: AgentSettings

    def keep(self) -> Path:
        """Puts the merged file in place; returns where the previous one was kept."""
        previous = self.path.with_name(self.path.name + ".prev")
        kept = self.path.with_name(f".{self.path.name}.prev.new")
        shutil.copyfile(self.path, kept)
        fsync_path(kept)
        os.replace(kept, previous)
        os.replace(self.candidate, self.path)
        fsync_dir(self.path.parent)
        return previous

    def discard(self) -> None:
        self.candidate.unlink(missing_ok=True)


def prepare(path: Path, changes: dict[str, Any], running: AgentSettings) -> Edit:
    """Merges `changes` into the file at `path` and checks the result against the running
    settings; nothing is in place until `Edit.keep()`."""
    _check_keys(AgentSettings, changes, "")
    try:
        current = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"{path}: cannot read the current config: {exc}") from exc
    merged = _merge(current, changes)
    candidate = path.with_name(f".{path.name}.new")
    try:
        write_synced(candidate, tomli_w.dumps(merged).encode())
    except (TypeError, ValueError) as exc:
        raise CommandError(f"changes cannot be written as TOML: {exc}") from exc
    edit = Edit(path, candidate, running)
    try:
        edit.settings = load_settings(candidate)
        _check_reach(running, edit.settings, running.commands)
    except ConfigError as exc:
        edit.discard()
        raise CommandError("invalid config, nothing changed: " + "; ".join(exc.problems)) from exc
    except CommandError:
        edit.discard()
        raise
    return edit


def _check_keys(cls: type[BaseModel], changes: dict[str, Any], prefix: str) -> None:
    """Key names as the schema spells them (the loader would take `COMMANDS` for `commands`),
    and no null for a table: a section is changed key by key, never removed."""
    fields = cls.model_fields
    lower = {name.lower(): name for name in fields}
    for key, value in changes.items():
        name = f"{prefix}{key}"
        if key not in fields:
            if key.lower() in lower:
                raise CommandError(f"{name}: keys are lower case, write {lower[key.lower()]}")
            continue  # an unknown key: validation names it
        annotation = fields[key].annotation
        section = _model_of(annotation)
        if value is None and (section is not None or get_origin(annotation) is dict):
            raise CommandError(f"{name}: null would remove the whole table; change its keys")
        if section is not None and isinstance(value, dict):
            _check_keys(section, value, name + ".")
        entry = _entry_model_of(annotation)
        if entry is not None and isinstance(value, dict):
            for entry_name, entry_value in value.items():
                if isinstance(entry_value, dict):
                    _check_keys(entry, entry_value, f"{name}.{entry_name}.")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field typed `Model` or `Model | None`."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    for candidate in (annotation, *members):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _entry_model_of(annotation: Any) -> type[BaseModel] | None:
    """The model of each entry of a `dict[Name, Model]` field (models, pipelines)."""
    if get_origin(annotation) is not dict:
        return None
    return _model_of(get_args(annotation)[1])


def _check_reach(old: AgentSettings, new: AgentSettings, policy: CommandsSettings) -> None:
    """Security keys only when allowed; a file path or library only where a local setting
    names its key; the state directory never."""
    if _value(old, STATE_DIR) != _value(new, STATE_DIR):
        raise CommandError(
            f"set_config may not move {STATE_DIR} (the outbox, journals and installed models "
            "live there): edit the file on the device"
        )
    if not policy.allow_remote_security_changes:
        touched = [k for k in SECURITY_KEYS if _value(old, k) != _value(new, k)]
        if touched:
            raise CommandError(
                f"set_config may not change {', '.join(touched)} "
                "(commands.allow_remote_security_changes is false)"
            )
    introduced = sorted(local_values(new) - local_values(old))
    refused = [
        f"{key} = {value}"
        for key, value in introduced
        if not any(matches(allowed, key) for allowed in policy.remote_paths)
    ]
    if refused:
        raise CommandError(
            f"set_config may not set a file path or library: {', '.join(refused)} "
            "(allowed only for keys named in commands.remote_paths on the device)"
        )


def _value(settings: AgentSettings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    if isinstance(value, BaseModel):
        return value.model_dump()
    # A secret compares by what it holds, not by its masked text.
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value replaces; null removes the key."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
