"""Finding, reading and validating the config file. Problems come back one line each,
naming the key path and, where the file has it, the line."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.config.settings import AgentSettings
from edge_agent.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

INSTALLED_CONFIG = Path("/etc/edge-agent/agent.toml")
CHECKOUT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "agent.toml"


class ConfigError(UserError):
    """An invalid config: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def default_config_path(explicit: Path | None = None) -> Path:
    """--config, else $EDGE_AGENT_CONFIG, else configs/agent.toml in a checkout, else
    /etc/edge-agent/agent.toml."""
    if explicit is not None:
        return explicit
    if os.environ.get("EDGE_AGENT_CONFIG"):
        return Path(os.environ["EDGE_AGENT_CONFIG"])
    return CHECKOUT_CONFIG if CHECKOUT_CONFIG.exists() else INSTALLED_CONFIG


def load_settings(path: Path | None) -> AgentSettings:
    """Settings from `path` (or the defaults alone) with the environment on top; relative
    paths in the file are taken from the file's folder."""
    if path is None:
        return AgentSettings()
    text = _read(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    _lower_case_sections(data, path, text)
    try:
        settings = AgentSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, path, text)) from None
    return _resolve_paths(settings, path.resolve().parent)


def _lower_case_sections(data: dict[str, Any], path: Path, text: str) -> None:
    """The settings class would take `[MQTT]` for `[mqtt]` (and both at once, one silently
    winning); a file spells its sections as documented."""
    fields = {name.lower(): name for name in AgentSettings.model_fields}
    wrong = [key for key in data if key not in fields.values() and key.lower() in fields]
    if wrong:
        raise ConfigError(
            [
                f"{path}:{_line_of(text, [key]) or '?'}: {key}: sections are lower case, "
                f"write {fields[key.lower()]}"
                for key in wrong
            ]
        )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{path}: cannot read config file: {reason}"]) from None


def _problems(exc: ValidationError, path: Path, text: str) -> list[str]:
    lines = []
    for problem in exc.errors():
        loc = [str(part) for part in problem["loc"]]
        message = problem["msg"].removeprefix("Value error, ")
        if not loc and ": " in message:
            # Cross-section checks name their key at the start of the message.
            key, message = message.split(": ", 1)
            loc = key.split(".")
        line = _line_of(text, loc)
        where = f"{path}:{line}" if line else str(path)
        lines.append(f"{where}: {'.'.join(loc) or '(top level)'}: {message}")
    return lines


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"']+)\s*=")


def _line_of(text: str, loc: list[str]) -> int | None:
    """The line that sets the longest prefix of `loc` (a table header or a key)."""
    best: tuple[int, int] | None = None  # (matched parts, line number)
    table: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            path = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            path = table + _split_key(key.group(1))
        matched = _common_prefix(path, loc)
        if matched == len(path) and matched and (best is None or matched > best[0]):
            best = (matched, number)
    return best[1] if best else None


def _split_key(key: str) -> list[str]:
    return [part.strip().strip("\"'") for part in key.split(".")]


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _resolve_paths(settings: AgentSettings, base: Path) -> AgentSettings:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    settings.device.state_dir = absolute(settings.device.state_dir)
    for model in settings.models.values():
        model.path = absolute(model.path)
    jsonl = settings.output.jsonl
    if jsonl and jsonl != "-":
        settings.output.jsonl = str(absolute(Path(jsonl)))
    for source in settings.sources.values():
        _resolve_source_paths(source, absolute)
    return settings


def _resolve_source_paths(source: Any, absolute: Any) -> None:
    # Source kinds that read files name them in `path` (image_dir, lines) or `device`
    # (camera, for a video file given relative to the config).
    path = getattr(source, "path", None)
    if isinstance(path, Path):
        source.path = absolute(path)
    elif isinstance(path, str) and path and "://" not in path:
        source.path = str(absolute(Path(path)))
    device = getattr(source, "device", None)
    if source.kind == "camera" and isinstance(device, str) and _looks_like_relative_file(device):
        source.device = str(absolute(Path(device)))


def _looks_like_relative_file(device: str) -> bool:
    return (
        "://" not in device and "!" not in device and not device.startswith("/") and "." in device
    )
