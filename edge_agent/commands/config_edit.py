"""set_config: a partial change merged into the TOML file, validated as a whole, then
written atomically with the previous file kept beside it (`agent.toml.prev`)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

from edge_agent.commands.handlers import CommandError
from edge_agent.config.load import ConfigError, load_settings
from edge_agent.durable import fsync_dir, fsync_path, write_synced

# Keys a remote change may not touch unless commands.allow_remote_security_changes: who is
# trusted, how the device proves itself, and where it connects.
SECURITY_KEYS = (
    "updates.trusted_keys",
    "updates.allow_unsigned",
    "commands",
    "mqtt.host",
    "mqtt.port",
    "mqtt.username",
    "mqtt.password",
    "mqtt.password_file",
    "mqtt.tls",
    "mqtt.client_id",
    "mqtt.transport",
    "mqtt.websocket_path",
    "device.id",
)


def write_changes(path: Path, changes: dict[str, Any], *, allow_security: bool) -> Path:
    """Merges `changes` into the file at `path`; returns where the previous file was kept.
    Nothing is written unless the merged file is valid."""
    if not allow_security:
        touched = sorted(k for k in _dotted(changes) if _is_security(k))
        if touched:
            raise CommandError(
                f"set_config may not change {', '.join(touched)} "
                "(commands.allow_remote_security_changes is false)"
            )
    try:
        current = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"{path}: cannot read the current config: {exc}") from exc
    merged = _merge(current, changes)
    candidate = path.with_name(f".{path.name}.new")
    try:
        write_synced(candidate, tomli_w.dumps(merged).encode())
    except (TypeError, ValueError) as exc:
        raise CommandError(f"changes cannot be written as TOML: {exc}") from exc
    try:
        load_settings(candidate)
    except ConfigError as exc:
        candidate.unlink(missing_ok=True)
        raise CommandError("invalid config, nothing changed: " + "; ".join(exc.problems)) from exc
    previous = path.with_name(path.name + ".prev")
    kept = path.with_name(f".{path.name}.prev.new")
    shutil.copyfile(path, kept)
    fsync_path(kept)
    os.replace(kept, previous)
    os.replace(candidate, path)
    fsync_dir(path.parent)
    return previous


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


def _dotted(changes: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in changes.items():
        name = f"{prefix}{key}"
        keys.append(name)
        if isinstance(value, dict):
            keys.extend(_dotted(value, name + "."))
    return keys


def _is_security(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in SECURITY_KEYS)
