"""The effective settings as TOML (secrets masked, unset keys left out) and, on request,
where each value came from: the default, the operator's file (with its line), the remote
overlay (with its line) or an environment variable."""

from __future__ import annotations

import os
import re
from typing import Any

import tomli_w

from edge_agent.config.environment import setting_key
from edge_agent.config.load import Layers, line_of
from edge_agent.config.remote import Key

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_PASSWORD, _PASSWORD_FILE = ("mqtt", "password"), ("mqtt", "password_file")


def render(layers: Layers, origins: bool = False) -> str:
    """TOML of `layers.settings`; with `origins`, each value's origin as a comment."""
    data = layers.settings.model_dump(mode="json")  # SecretStr dumps as "**********"
    environment = _environment(layers)
    out: list[str] = []
    _table(data, (), out, lambda key: origin(layers, key, environment) if origins else "")
    return "\n".join(out).strip() + "\n"


def origin(layers: Layers, key: Key, environment: dict[Key, str] | None = None) -> str:
    """Where the value at `key` came from, highest layer first."""
    environment = _environment(layers) if environment is None else environment
    if key == _PASSWORD and layers.settings.mqtt.password_file is not None:
        key = _PASSWORD_FILE  # read from the file it names
    for env_key, name in environment.items():
        lowered = tuple(part.lower() for part in key)
        if lowered[: len(env_key)] == env_key:
            return f"env {name}"
    for path, text, data in (
        (layers.remote_path, layers.remote_text, layers.remote),
        (layers.path, layers.text, layers.data),
    ):
        if path is not None and _holds(data, key):
            return f"{path}:{line_of(text, list(key)) or '?'}"
    return "default"


def _environment(layers: Layers) -> dict[Key, str]:
    """The settings' environment variables now set, by the key each one sets."""
    sections = set(type(layers.settings).model_fields)
    found: dict[Key, str] = {}
    for name in os.environ:
        key = setting_key(name)
        if key is not None and key[0] in sections:
            found[key] = name
    return found


def _holds(data: dict[str, Any], key: Key) -> bool:
    """Whether `data` sets `key`, or a value (a list, an inline table's key) above it."""
    node: Any = data
    for part in key:
        if not isinstance(node, dict):
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def _table(data: dict[str, Any], prefix: Key, out: list[str], note: Any) -> None:
    """Keys first, then sub-tables, as TOML wants; a table with no keys of its own gets no
    header."""
    leaves = [(k, v) for k, v in data.items() if v is not None and not _is_table(v)]
    if leaves:
        if prefix:
            out.append("")
            out.append(f"[{'.'.join(_key(part) for part in prefix)}]")
        for name, value in leaves:
            comment = note((*prefix, name))
            line = f"{_key(name)} = {_inline(value)}"
            out.append(f"{line}  # {comment}" if comment else line)
    for name, value in data.items():
        if value is not None and _is_table(value):
            _table(value, (*prefix, name), out, note)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else _inline(name)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_inline(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value if v is not None) + "]"
    # A scalar as tomli_w writes it: quoting, escapes, floats.
    return tomli_w.dumps({"v": value})[len("v = ") :].rstrip("\n")
