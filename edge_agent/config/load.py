"""Finding, reading and validating the config. Problems come back one line each, naming
the key path and, where the file has it, the line.

Precedence, lowest first: the defaults, the operator's file, the remote overlay
(`remote.toml` in the state directory, written by set_config; config/overlay.py), the
environment (`EDGE_AGENT_<SECTION>__<KEY>`). An overlay that is not TOML, does not validate
over the file, or sets a key the file's own `[commands]` policy does not allow remotely
(config/remote.py) is left out with one log line, and the operator's settings run."""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.config import overlay, packaged, remote
from edge_agent.config.settings import AgentSettings
from edge_agent.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

INSTALLED_CONFIG = packaged.SYSTEM_CONFIG
CHECKOUT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "agent.toml"

log = logging.getLogger(__name__)


class ConfigError(UserError):
    """An invalid config: one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Layers:
    """The settings and what they were made of. `local` is the operator's file with the
    environment over it and no overlay: the device's own say, which judges remote changes."""

    settings: AgentSettings
    local: AgentSettings
    path: Path | None = None
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    remote_path: Path | None = None
    remote_text: str = ""  # empty: no overlay in use
    remote: dict[str, Any] = field(default_factory=dict)
    left_out: str | None = None  # why an overlay on disk is not in use


def default_config_path(explicit: Path | None = None) -> Path:
    """--config, else $EDGE_AGENT_CONFIG, else the first of `config_candidates()` that
    exists, else /etc/edge-agent/agent.toml."""
    if explicit is not None:
        return explicit
    if os.environ.get("EDGE_AGENT_CONFIG"):
        return Path(os.environ["EDGE_AGENT_CONFIG"])
    candidates = config_candidates()
    return next((path for path in candidates if path.exists()), candidates[-1])


def config_candidates() -> list[Path]:
    """Where a config is looked for, in order: configs/agent.toml in a checkout, then for
    root /etc/edge-agent/agent.toml, for anyone else ~/.config/edge-agent/agent.toml
    ($XDG_CONFIG_HOME) then /etc/edge-agent/agent.toml."""
    found = [CHECKOUT_CONFIG] if CHECKOUT_CONFIG.exists() else []
    if not packaged.is_root():
        found.append(packaged.user_config())
    return [*found, INSTALLED_CONFIG]


def load_settings(path: Path | None, *, set_aside: bool = False) -> AgentSettings:
    """Settings from `path` (or the defaults alone) with its remote overlay and the
    environment on top; relative paths are taken from the file's folder. `set_aside`, for
    the running agent: an unusable overlay is also renamed beside itself."""
    return load_layers(path, set_aside=set_aside).settings


def load_layers(path: Path | None, *, set_aside: bool = False) -> Layers:
    """As load_settings, keeping each layer. Raises ConfigError for the operator's file;
    an unusable overlay is left out (Layers.left_out says why), never an error."""
    if path is None:
        defaults = AgentSettings()
        return Layers(defaults, defaults)
    text = _read(path)
    data = _parse(path, text)
    local = _build(data, path, [(path, text)])
    base = Layers(local, local, path, text, data, overlay.overlay_path(local.device.state_dir))
    assert base.remote_path is not None
    try:
        remote_text = overlay.read_overlay(base.remote_path)
    except ValueError as exc:
        return _left_out(base, str(exc), set_aside)
    if remote_text is None:
        return base
    try:
        changes = _parse(base.remote_path, remote_text)
        settings = with_overlay(base, changes, remote_text)
    except ConfigError as exc:
        return _left_out(base, "; ".join(exc.problems), set_aside)
    except remote.RemoteRefused as exc:
        return _left_out(base, str(exc), set_aside)
    return replace(base, settings=settings, remote_text=remote_text, remote=changes)


def _left_out(base: Layers, problem: str, set_aside: bool) -> Layers:
    """The operator's settings alone, with one log line naming the overlay and why."""
    path = base.remote_path
    assert path is not None
    if not set_aside:
        log.warning("%s left out, the operator's settings apply: %s", path, problem)
    else:
        try:
            aside = overlay.set_aside(path)
        except OSError as exc:
            log.error(
                "%s not usable and cannot be set aside (%s), the operator's settings run: %s",
                path,
                exc.strerror,
                problem,
            )
        else:
            log.error(
                "%s set aside as %s, the operator's settings run: %s", path, aside.name, problem
            )
    return replace(base, left_out=problem)


def with_overlay(base: Layers, changes: dict[str, Any], remote_text: str) -> AgentSettings:
    """The operator's file of `base` with `changes` over it (the environment over both).
    Raises ConfigError when the result is invalid, RemoteRefused when the file's own
    policy keeps a key it sets local."""
    assert base.path is not None and base.remote_path is not None
    _lower_case_sections(changes, base.remote_path, remote_text)
    sources = [(base.remote_path, remote_text), (base.path, base.text)]
    settings = _build(overlay.merge(base.data, changes), base.path, sources)
    remote.check(base.local, settings, remote.leaf_keys(changes))
    return settings


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    _lower_case_sections(data, path, text)
    return data


def _build(data: dict[str, Any], path: Path, sources: list[tuple[Path, str]]) -> AgentSettings:
    """Validated settings (the environment over `data`), problems located in the first of
    `sources` (file, text) that has a line for them."""
    try:
        settings = AgentSettings(**data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc, sources)) from None
    return _resolve_paths(settings, path.resolve().parent)


def _lower_case_sections(data: dict[str, Any], path: Path, text: str) -> None:
    """The settings class would take `[MQTT]` for `[mqtt]` (and both at once, one silently
    winning); a file spells its sections as documented."""
    fields = {name.lower(): name for name in AgentSettings.model_fields}
    wrong = [key for key in data if key not in fields.values() and key.lower() in fields]
    if wrong:
        raise ConfigError(
            [
                f"{path}:{line_of(text, [key]) or '?'}: {key}: sections are lower case, "
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


def _problems(exc: ValidationError, sources: list[tuple[Path, str]]) -> list[str]:
    lines = []
    for problem in exc.errors():
        loc = [str(part) for part in problem["loc"]]
        message = problem["msg"].removeprefix("Value error, ")
        if not loc and ": " in message:
            # Cross-section checks name their key at the start of the message.
            key, message = message.split(": ", 1)
            loc = key.split(".")
        where = str(sources[0][0])
        for path, text in sources:
            line = line_of(text, loc)
            if line:
                where = f"{path}:{line}"
                break
        lines.append(f"{where}: {'.'.join(loc) or '(top level)'}: {message}")
    return lines


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-.\"']+)\s*=")


def line_of(text: str, loc: list[str]) -> int | None:
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
