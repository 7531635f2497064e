"""The packaged default config (configs/agent.toml, edge_agent/data) made to run where
`edge-agent config init` writes it: its relative paths name a checkout's folders, so each one
is rewritten, comments and all kept.

- `state_dir = "../var"`: the state directory, absolute (`default_state_dir`);
- a model at `../models/NAME`: the copy installed with the package, when the package ships
  it; otherwise the model and the pipelines that run it are commented out and named at the
  top of the file;
- the JSON-lines copy of the results: commented out, as scripts/install.sh does on a device
  (the outbox keeps every result; `edge-agent results` reads them).

The result is checked against the same edits made to the parsed file, so a layout this
module cannot rewrite is an error here, never a config that means something else."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from edge_agent import __version__
from edge_agent.data import DEFAULT_CONFIG, MODELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

SYSTEM_CONFIG = Path("/etc/edge-agent/agent.toml")
SYSTEM_STATE = Path("/var/lib/edge-agent")

_HEADER = re.compile(r"^\s*\[\s*([^\]\s]+)\s*\]\s*(#.*)?$")
_VALUE = re.compile(r'^(\s*)([A-Za-z0-9_]+)(\s*=\s*)"([^"]*)"(.*)$')


def is_root() -> bool:
    return os.geteuid() == 0


def user_config() -> Path:
    """$XDG_CONFIG_HOME/edge-agent/agent.toml (~/.config/edge-agent/agent.toml)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "edge-agent" / "agent.toml"


def default_init_path() -> Path:
    """Where `config init` writes, and where `run` looks after a checkout's own file:
    /etc/edge-agent/agent.toml for root, the user's config folder for anyone else."""
    return SYSTEM_CONFIG if is_root() else user_config()


def default_state_dir() -> Path:
    """/var/lib/edge-agent for root, else $XDG_STATE_HOME/edge-agent (~/.local/state)."""
    if is_root():
        return SYSTEM_STATE
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "edge-agent"


def render(state_dir: Path) -> str:
    """The packaged default config with absolute paths: the models installed with the
    package, the state in `state_dir`. Raises RuntimeError when the packaged file has a
    layout the line edits cannot follow (a test runs this on every change to the file)."""
    text = DEFAULT_CONFIG.read_text()
    data = tomllib.loads(text)
    shipped = {path.name for path in MODELS.glob("*.tflite")}
    state = state_dir.absolute()

    models: dict[str, str] = {}  # name -> new path
    dropped: set[str] = set()  # "models.NAME" and "pipelines.NAME" tables
    for name, model in data.get("models", {}).items():
        path = PurePosixPath(model["path"])
        if path.is_absolute():
            continue
        if path.parent == PurePosixPath("../models") and path.name in shipped:
            models[name] = str(MODELS / path.name)
        else:
            dropped.add(f"models.{name}")
    for name, pipeline in data.get("pipelines", {}).items():
        if f"models.{pipeline.get('model')}" in dropped:
            dropped.add(f"pipelines.{name}")

    lines = []
    table = ""
    in_dropped = False
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            table = header.group(1)
            in_dropped = table in dropped
        elif not line.strip():
            in_dropped = False
        if in_dropped:
            lines.append(f"# {line}")
            continue
        lines.append(_rewrite(line, table, models, state))
    names = sorted(dropped)
    preface = [
        f"# Written by `edge-agent config init` (edge-agent {__version__}) from the packaged",
        "# default: models from the installed package, state in",
        f"# {state}.",
    ]
    if names:
        preface.append(
            "# Commented out, their models not installed with the package: " + ", ".join(names)
        )
    rendered = "\n".join([*preface, "#", *lines]) + "\n"
    _check(rendered, data, models, dropped, state)
    return rendered


def _rewrite(line: str, table: str, models: dict[str, str], state: Path) -> str:
    value = _VALUE.match(line)
    if not value:
        return line
    indent, key, equals, old, rest = value.groups()
    if table == "device" and key == "state_dir":
        return f'{indent}{key}{equals}"{state}"{rest}'
    if table.startswith("models.") and key == "path" and table[7:] in models:
        return f'{indent}{key}{equals}"{models[table[7:]]}"{rest}'
    if table == "output" and key == "jsonl" and old.startswith("../"):
        copy = state / PurePosixPath(old).name
        return f'{indent}# {key}{equals}"{copy}"{rest}'
    return line


def _check(
    rendered: str, data: dict[str, Any], models: dict[str, str], dropped: set[str], state: Path
) -> None:
    expected = {section: dict(values) for section, values in data.items()}
    for table in dropped:
        section, name = table.split(".", 1)
        expected[section] = {k: v for k, v in expected[section].items() if k != name}
        if not expected[section]:  # every [section.NAME] commented out: no section at all
            del expected[section]
    for name, path in models.items():
        expected["models"][name] = {**expected["models"][name], "path": path}
    if "state_dir" not in expected.get("device", {}):
        raise RuntimeError(f"{DEFAULT_CONFIG}: no [device] state_dir for config init to set")
    expected["device"] = {**expected["device"], "state_dir": str(state)}
    if str(expected.get("output", {}).get("jsonl", "")).startswith("../"):
        expected["output"] = {k: v for k, v in expected["output"].items() if k != "jsonl"}
    if tomllib.loads(rendered) != expected:
        raise RuntimeError(f"{DEFAULT_CONFIG}: its layout defeats the rewrite for config init")
    left = [line for line in rendered.splitlines() if '"../' in line.split("#", 1)[0]]
    if left:
        raise RuntimeError(f"{DEFAULT_CONFIG}: relative paths left: {left}")
