"""set_config: a partial change merged into the remote overlay (`remote.toml` in the state
directory, config/overlay.py), validated over the operator's file as a whole, checked
against what the device's own `[commands]` settings let a remote change set
(config/remote.py), applied, and only then written atomically. The operator's file is
never rewritten.

A `null` removes a key or a table from the overlay: the operator's value, or the default,
applies again. What the change may touch is judged on the settings the loader makes of
the merged layers, and key by key on the overlay, so letter case or a table removed and
added again change nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from edge_agent.config import overlay, remote
from edge_agent.config.load import ConfigError, load_layers, with_overlay
from edge_agent.config.settings import AgentSettings
from edge_agent.errors import CommandError


@dataclass
class Edit:
    """A change that passed every check, waiting to be applied and then kept."""

    path: Path  # remote.toml
    text: str  # its new content; empty: no remote change left, the file goes
    settings: AgentSettings
    keys: list[str]  # what the overlay now sets, dotted

    def keep(self) -> Path:
        """Puts the new overlay in place atomically; returns where it is."""
        overlay.write_overlay(self.path, self.text)
        return self.path

    def discard(self) -> None:
        """Nothing is written before keep()."""


def prepare(path: Path, changes: dict[str, Any]) -> Edit:
    """Merges `changes` into the overlay of the config at `path` and checks the result
    against the device's own file as it is now; nothing is in place until `Edit.keep()`."""
    _check_keys(AgentSettings, changes, "")
    try:
        layers = load_layers(path, set_aside=True)
    except ConfigError as exc:
        raise CommandError(
            "the device's own config does not load, nothing changed: " + "; ".join(exc.problems)
        ) from exc
    assert layers.remote_path is not None
    merged = overlay.merge(layers.remote, changes)
    try:
        text = overlay.render(merged)
    except ValueError as exc:
        raise CommandError(f"changes {exc}") from exc
    try:
        settings = with_overlay(layers, merged, text)
    except ConfigError as exc:
        raise CommandError("invalid config, nothing changed: " + "; ".join(exc.problems)) from exc
    except remote.RemoteRefused as exc:
        raise CommandError(f"refused, nothing changed: {exc}") from exc
    keys = sorted(".".join(key) for key in remote.leaf_keys(merged))
    return Edit(layers.remote_path, text, settings, keys)


def _check_keys(cls: type[BaseModel], changes: dict[str, Any], prefix: str) -> None:
    """Key names as the schema spells them (the loader would take `COMMANDS` for `commands`),
    and none that is never set remotely, not even to null."""
    fields = cls.model_fields
    lower = {name.lower(): name for name in fields}
    for key, value in changes.items():
        name = f"{prefix}{key}"
        why = remote.never_remote(name)
        if why is not None:
            raise CommandError(f"refused, nothing changed: {why}")
        if key not in fields:
            if key.lower() in lower:
                raise CommandError(f"{name}: keys are lower case, write {lower[key.lower()]}")
            continue  # an unknown key: validation names it
        annotation = fields[key].annotation
        section = _model_of(annotation)
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
