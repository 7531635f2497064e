"""What a remote change (set_config, kept in remote.toml) may set. Three local settings
decide, read from the device's own file and environment and never from the overlay:

- `commands.remote_keys`: patterns of ordinary keys (the default is in settings.py);
- `commands.remote_paths`: keys whose file path or library may come from the network;
- `commands.allow_remote_security_changes`: whom to trust, where and how to connect.

The state directory and those three settings are never set remotely. The same check runs
when set_config builds a new overlay and when the agent loads one, so what was accepted
live is accepted at the next start, unless the device's own file has narrowed it since."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from edge_agent.config.local_only import LocalOnly, local_values, matches
from edge_agent.errors import UserError

if TYPE_CHECKING:
    from edge_agent.config.settings import AgentSettings, CommandsSettings

Key = tuple[str, ...]

# Who is trusted, how the device proves itself, where it connects and whether it does.
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
    "http.enabled",  # who may reach the status page and from where
    "http.host",
    "http.port",
)
STATE_DIR = "device.state_dir"
POLICY_KEYS = (
    "commands.remote_keys",
    "commands.remote_paths",
    "commands.allow_remote_security_changes",
)
_STATE_DIR_WHY = "the outbox, journals and installed models live there"
_POLICY_WHY = "the device's own file decides what a remote change may set"


class RemoteRefused(UserError):
    """A remote change no local setting allows; the text names the key and the setting."""


def never_remote(key: str) -> str | None:
    """Why `key` is never set remotely, or None."""
    if key == STATE_DIR:
        return f"{STATE_DIR} is never set remotely ({_STATE_DIR_WHY})"
    if key in POLICY_KEYS:
        return f"{key} is never set remotely ({_POLICY_WHY})"
    return None


def covers(pattern: str, key: Key) -> bool:
    """`models.*.batch` covers `models.a.batch` and `models.a.batch.max_batch`: a pattern
    names a key or a table, `*` stands for one level."""
    want = pattern.split(".")
    return len(want) <= len(key) and all(w in ("*", h) for w, h in zip(want, key, strict=False))


def leaf_keys(data: dict[str, Any], prefix: Key = ()) -> list[Key]:
    """Every key that holds a value (a list is one value), tables walked into."""
    found: list[Key] = []
    for name, value in data.items():
        if isinstance(value, dict) and value:
            found += leaf_keys(value, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


def check(local: AgentSettings, merged: AgentSettings, keys: Iterable[Key]) -> None:
    """Raises RemoteRefused unless the overlay that turned `local` (the device's file and
    environment) into `merged`, setting `keys`, is allowed by `local`'s own policy.

    Judged twice: on the settings the loader makes (so letter case or a table removed and
    added again change nothing), and key by key on what the overlay sets."""
    policy = local.commands
    for dotted in (STATE_DIR, *POLICY_KEYS):
        if _value(local, dotted) != _value(merged, dotted):
            raise RemoteRefused(never_remote(dotted))
    if not policy.allow_remote_security_changes:
        touched = [k for k in SECURITY_KEYS if _value(local, k) != _value(merged, k)]
        if touched:
            raise RemoteRefused(_security(", ".join(touched)))
    introduced = sorted(local_values(merged) - local_values(local))
    refused = [
        f"{key} = {value}"
        for key, value in introduced
        if not any(matches(allowed, key) for allowed in policy.remote_paths)
    ]
    if refused:
        raise RemoteRefused(_paths(", ".join(refused)))
    for key in keys:
        _check_key(merged, key, policy)


def _check_key(merged: AgentSettings, key: Key, policy: CommandsSettings) -> None:
    dotted = ".".join(key)
    why = never_remote(dotted)
    if why is not None:
        raise RemoteRefused(why)
    if any(covers(pattern, key) for pattern in SECURITY_KEYS):
        if not policy.allow_remote_security_changes:
            raise RemoteRefused(_security(dotted))
        return
    if _is_local_only(merged, key):
        if not any(covers(pattern, key) for pattern in policy.remote_paths):
            raise RemoteRefused(_paths(dotted))
        return
    if not any(covers(pattern, key) for pattern in policy.remote_keys):
        raise RemoteRefused(
            f"{dotted} is not in commands.remote_keys on the device "
            "(a pattern there naming it, or its table, allows it)"
        )


def _security(keys: str) -> str:
    return (
        f"{keys}: security settings, set remotely only with "
        "commands.allow_remote_security_changes = true on the device"
    )


def _paths(values: str) -> str:
    return (
        f"{values}: a file path or library, set remotely only where "
        "commands.remote_paths on the device names its key"
    )


def _is_local_only(settings: AgentSettings, key: Key) -> bool:
    """Whether the field at `key` is marked LOCAL_ONLY, found through the loaded settings
    (so a source's or delegate's own config counts as declared)."""
    node: Any = settings
    for part in key[:-1]:
        if isinstance(node, BaseModel):
            node = getattr(node, part, None)
        elif isinstance(node, dict):
            node = node.get(part)
        else:
            return False
    if not isinstance(node, BaseModel):
        return False
    field = type(node).model_fields.get(key[-1])
    return field is not None and any(isinstance(m, LocalOnly) for m in field.metadata)


def _value(settings: AgentSettings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    if isinstance(value, BaseModel):
        return value.model_dump()
    # A secret compares by what it holds, not by its masked text.
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value
