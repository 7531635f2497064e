"""remote.toml: the changes set_config made, kept in the state directory and merged over the
operator's file (tables key by key, the overlay's value wins; the environment stays above
both). The operator's file is never rewritten. A `null` in set_config removes a key or a
table from the overlay, so the operator's value (or the default) applies again; deleting
remote.toml undoes every remote change at the next reload."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import tomli_w

from edge_agent.durable import fsync_dir, write_synced

REMOTE_FILE = "remote.toml"


def overlay_path(state_dir: Path) -> Path:
    return state_dir / REMOTE_FILE


def read_overlay(path: Path) -> str | None:
    """The overlay's text; None when there is none. Raises ValueError saying why it cannot
    be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror}") from None


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (a list too) replaces; null removes the key.
    A table left empty is dropped: it would add nothing, and an entry of nothing (a pipeline
    with no source) would no longer validate once the operator's file stops naming it."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
            continue
        if isinstance(value, dict):
            current = out.get(key)
            value = merge(current if isinstance(current, dict) else {}, value)
            if not value:
                out.pop(key, None)
                continue
        out[key] = value
    return out


def render(data: dict[str, Any]) -> str:
    """The overlay as TOML; raises ValueError naming what TOML cannot hold."""
    try:
        return tomli_w.dumps(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot be written as TOML: {exc}") from None


def write_overlay(path: Path, text: str) -> None:
    """Puts the overlay in place atomically; an empty one is removed."""
    if not text.strip():
        if path.exists():
            path.unlink()
            fsync_dir(path.parent)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(f".{path.name}.new")
    write_synced(candidate, text.encode())
    os.replace(candidate, path)
    fsync_dir(path.parent)


def set_aside(path: Path) -> Path:
    """Renames an unusable overlay beside itself (`remote.toml.corrupt-<UTC time>`), so it
    is not met again and is kept for a look."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, aside)
    fsync_dir(path.parent)
    return aside
