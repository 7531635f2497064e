"""Where `edge-fleet` finds its broker and credentials: command-line flags, then the
environment (`EDGE_FLEET_*`), then a named profile in a TOML file, each key taken from the
first place that sets it.

    # ~/.config/edge-fleet/profiles.toml ($EDGE_FLEET_PROFILES to use another file)
    [default]                      # used when no --profile / $EDGE_FLEET_PROFILE is given
    broker = "mqtt.example.com:8883"
    username = "ops"
    password_file = "~/.config/edge-fleet/ops.password"
    ca = "ca.pem"                  # relative paths are relative to this file's folder

A password written in the file itself is refused unless only its owner can read the file."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import UserError, validation_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ENV_PREFIX = "EDGE_FLEET_"
PROFILE_ENV = "EDGE_FLEET_PROFILE"
PROFILES_ENV = "EDGE_FLEET_PROFILES"
DEFAULT_PROFILE = "default"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class Profile(BaseModel):
    """One named table of the profiles file (the environment uses the same keys)."""

    model_config = ConfigDict(extra="forbid")

    broker: str | None = Field(None, description="HOST[:PORT]; 1883, or 8883 with TLS.")
    prefix: str | None = Field(None, description="First topic level (edge).")
    username: str | None = Field(None, description="MQTT user name.")
    password: str | None = Field(None, description="MQTT password (file mode 0600 only).")
    password_file: Path | None = Field(None, description="File holding the MQTT password.")
    tls: bool | None = Field(None, description="TLS with the system's CAs, no file needed.")
    ca: Path | None = Field(None, description="CA certificate (PEM).")
    cert: Path | None = Field(None, description="Client certificate (PEM).")
    key: Path | None = Field(None, description="The client certificate's private key (PEM).")
    mqtt: Literal["auto", "5", "3.1.1"] | None = Field(
        None, description="Protocol (auto: 5, or 3.1.1 where the broker refuses 5)."
    )


_PATHS = ("password_file", "ca", "cert", "key")
FIELDS = tuple(Profile.model_fields)


@dataclass(frozen=True)
class Resolved:
    """The broker options after flags, environment and profile; where each came from."""

    values: dict[str, Any]
    sources: dict[str, str]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value


def profiles_path() -> Path:
    if os.environ.get(PROFILES_ENV):
        return Path(os.environ[PROFILES_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "edge-fleet" / "profiles.toml"


def resolve(args: argparse.Namespace) -> Resolved:
    """Raises UserError, naming every place it looked, when no broker is configured."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    flags = {key: getattr(args, key, None) for key in FIELDS}
    flags["tls"] = True if getattr(args, "tls", False) else None
    for key, value in flags.items():
        if value is not None:
            values[key], sources[key] = value, "--" + key.replace("_", "-")
    for key, value in _from_env().items():
        if key not in values:
            values[key], sources[key] = value, ENV_PREFIX + key.upper()
    name, named_by = _profile_name(args)
    path = profiles_path()
    profile = _load_profile(path, name, named_by)
    if profile is not None:
        for key, value in profile.model_dump(exclude_none=True).items():
            if key not in values:
                values[key], sources[key] = value, f"profile {name!r} ({path})"
    # A password from one place and its file from another: the more specific place wins.
    if "password" in values and "password_file" in values:
        ranked = [sources["password"], sources["password_file"]]
        drop = "password" if _rank(ranked[0]) > _rank(ranked[1]) else "password_file"
        del values[drop], sources[drop]
    if values.get("broker") is None:
        where = "no such file" if not path.is_file() else f"no broker in profile {name!r}"
        raise UserError(
            f"no broker configured: looked at --broker, ${ENV_PREFIX}BROKER and "
            f"profile {name!r} in {path} ({where})"
        )
    return Resolved(values, sources)


def _rank(source: str) -> int:
    return 0 if source.startswith("--") else 1 if source.startswith(ENV_PREFIX) else 2


def _profile_name(args: argparse.Namespace) -> tuple[str, str | None]:
    if getattr(args, "profile", None):
        return args.profile, "--profile"
    if os.environ.get(PROFILE_ENV):
        return os.environ[PROFILE_ENV], f"${PROFILE_ENV}"
    return DEFAULT_PROFILE, None


def _from_env() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in FIELDS:
        text = os.environ.get(ENV_PREFIX + key.upper())
        if text is None or (text == "" and key != "tls"):
            continue
        if key == "tls":
            lowered = text.strip().lower()
            if lowered not in _TRUE + _FALSE:
                raise UserError(f"${ENV_PREFIX}TLS {text!r}: use 1 or 0")
            found[key] = True if lowered in _TRUE else None
        elif key == "mqtt" and text not in ("auto", "5", "3.1.1"):
            raise UserError(f"${ENV_PREFIX}MQTT {text!r}: use auto, 5 or 3.1.1")
        elif key in _PATHS:
            found[key] = Path(text).expanduser()
        else:
            found[key] = text
    return found


def _load_profile(path: Path, name: str, named_by: str | None) -> Profile | None:
    """The profile, or None when the implicit default is not there; a profile asked for
    by name must exist."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if named_by is not None:
            raise UserError(f"{named_by} {name}: {path}: no such profiles file") from None
        return None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    table = data.get(name)
    if table is None:
        if named_by is not None:
            known = ", ".join(sorted(data)) or "none"
            raise UserError(f"{named_by} {name}: no [{name}] in {path} (profiles: {known})")
        return None
    if not isinstance(table, dict):
        raise UserError(f"{path}: {name}: must be a table ([{name}])")
    try:
        profile = Profile.model_validate(table)
    except ValidationError as exc:
        raise UserError(validation_lines(exc, f"{path} [{name}]")[0]) from None
    if profile.password is not None and path.stat().st_mode & 0o077:
        raise UserError(
            f"{path}: [{name}] holds a password but others may read the file; "
            f"chmod 600 {path} (or use password_file)"
        )
    folder = path.parent
    return profile.model_copy(
        update={
            key: (folder / value.expanduser())
            for key in _PATHS
            if isinstance(value := getattr(profile, key), Path)
        }
    )
