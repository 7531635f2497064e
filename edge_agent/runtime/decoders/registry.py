"""Finds a decoder class by name: an entry point of the group `edge_agent.decoders` (the
built-ins are registered there too, in pyproject.toml), or `module:Class`."""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from pydantic import BaseModel

from edge_agent.errors import UserError
from edge_agent.runtime.decoders.base import DecoderClass

GROUP = "edge_agent.decoders"


class DecoderImportError(UserError):
    """The decoder is named and registered, but its code does not import (a broken or
    half-installed plugin). The agent reports it once and runs the other pipelines."""


def registered() -> dict[str, EntryPoint]:
    """Every decoder the installed packages register, by name. Read at each model load
    (milliseconds), so a plugin installed since the start is found at the next reload."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def decoder_class(task: str) -> DecoderClass:
    """The class behind a decoder name or `module:Class`; UserError when there is none."""
    if ":" in task:
        module_name, _, attr = task.partition(":")
        where = task
        target = _import(task, lambda: getattr(importlib.import_module(module_name), attr))
    else:
        entry = registered().get(task)
        if entry is None:
            known = ", ".join(sorted(registered())) or "none: is edge-agent installed?"
            raise UserError(
                f"decoder {task!r}: no such decoder (registered: {known}); a plugin is "
                f"found through the entry-point group {GROUP} or as module:Class"
            )
        where = f"{task} ({entry.value})"
        target = _import(where, entry.load)
    config = getattr(target, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)) or not callable(target):
        raise UserError(
            f"decoder {where}: not a decoder class (it needs a pydantic Config and to be "
            "callable with (config, context))"
        )
    return cast(DecoderClass, target)


def _import(where: str, load: Any) -> Any:
    try:
        return load()
    except Exception as exc:  # a plugin's import can fail any way it likes
        raise DecoderImportError(
            f"decoder {where}: cannot import: {type(exc).__name__}: {exc}"
        ) from None
