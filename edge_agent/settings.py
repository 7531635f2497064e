"""Agent settings: one TOML file, overridden by `EDGE_AGENT_...` environment variables
(`__` between nested keys). Unknown keys are errors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent.errors import UserError, validation_lines
from edge_agent.runtime.backend import BackendName
from edge_agent.runtime.delegates import CpuConfig, DelegateEntry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


def _cpu() -> DelegateEntry:
    return CpuConfig()


class RuntimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: BackendName = Field(
        "auto",
        description="Interpreter package: auto (LiteRT, else tflite-runtime), litert or "
        "tflite-runtime.",
    )
    threads: int | None = Field(
        None, ge=1, le=64, description="CPU threads per interpreter; empty: one per core."
    )
    delegates: list[DelegateEntry] = Field(
        default_factory=lambda: [_cpu()],
        description="Delegates to try in order; the CPU is always the last resort.",
    )


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGE_AGENT_", env_nested_delimiter="__", extra="forbid"
    )

    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment wins over them.
        return env_settings, init_settings


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None


def load_settings(path: Path | None) -> AgentSettings:
    """Settings from `path` (or the defaults) with the environment on top."""
    data = read_toml(path) if path is not None else {}
    try:
        return AgentSettings(**data)
    except ValidationError as exc:
        raise UserError(validation_lines(exc, str(path or "settings"))[0]) from None
