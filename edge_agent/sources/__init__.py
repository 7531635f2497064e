"""Source registry: one module per kind, each a config model and a Source class. A
`[sources.NAME]` table picks its kind with `kind = "..."`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from edge_agent.sources.base import (
    EndOfStream,
    Frame,
    Source,
    SourceConfig,
    SourceError,
    SourceState,
    SourceUnusable,
)
from edge_agent.sources.camera import CameraConfig, CameraSource
from edge_agent.sources.iio import IioConfig, IioSource
from edge_agent.sources.image_dir import ImageDirConfig, ImageDirSource
from edge_agent.sources.lines import LinesConfig, LinesSource
from edge_agent.sources.synthetic import SyntheticConfig, SyntheticSource

SourceEntry = Annotated[
    CameraConfig | ImageDirConfig | IioConfig | LinesConfig | SyntheticConfig,
    Field(discriminator="kind"),
]

REGISTRY: dict[str, type[Source]] = {
    "camera": CameraSource,
    "image_dir": ImageDirSource,
    "iio": IioSource,
    "lines": LinesSource,
    "synthetic": SyntheticSource,
}

CONFIGS: dict[str, type[SourceConfig]] = {
    "camera": CameraConfig,
    "image_dir": ImageDirConfig,
    "iio": IioConfig,
    "lines": LinesConfig,
    "synthetic": SyntheticConfig,
}


def create_source(name: str, config: SourceConfig, state_dir: Path) -> Source:
    """The source for one `[sources.NAME]` entry; `state_dir` is where it may keep state."""
    try:
        cls, config_cls = REGISTRY[config.kind], CONFIGS[config.kind]
    except KeyError:
        raise ValueError(f"sources.{name}: unknown kind {config.kind!r}") from None
    if not isinstance(config, config_cls):
        raise TypeError(f"sources.{name}: a {config.kind} source needs a {config_cls.__name__}")
    return cls(name, config, state_dir)


__all__ = [
    "CONFIGS",
    "REGISTRY",
    "CameraConfig",
    "EndOfStream",
    "Frame",
    "IioConfig",
    "ImageDirConfig",
    "LinesConfig",
    "Source",
    "SourceConfig",
    "SourceEntry",
    "SourceError",
    "SourceState",
    "SourceUnusable",
    "SyntheticConfig",
    "create_source",
]
