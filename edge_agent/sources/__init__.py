"""Source kinds, found through the entry-point group `edge_agent.sources`: ours are
registered in pyproject.toml, a user's package registers its own the same way
(`ticker = "my_sources.ticker:TickerConfig"`). An entry names the kind's config class, a
SourceConfig whose `kind` is `Literal["<entry name>"]`; the Source class is the one that
config's module defines. A `[sources.NAME]` table picks its kind with `kind = "..."`."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.plugins import Registered, discover

# Bound before the plugins load below: a plugin may import these from this package.
from edge_agent.sources.base import (
    EndOfStream,
    Frame,
    Source,
    SourceConfig,
    SourceError,
    SourceState,
    SourceUnusable,
)

GROUP = "edge_agent.sources"


def _source_class(config: type[SourceConfig]) -> type[Source]:
    module = sys.modules[config.__module__]
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Source)
        and value.__module__ == module.__name__
        and not inspect.isabstract(value)
    ]
    if len(found) != 1:
        raise LookupError(
            f"{module.__name__} defines {len(found)} Source classes; a source kind's module "
            "defines exactly one"
        )
    return found[0]


def _discover() -> tuple[Registered[SourceConfig], dict[str, type[Source]]]:
    kinds = discover(GROUP, SourceConfig, "kind", "source kind")
    classes: dict[str, type[Source]] = {}
    for kind, config in list(kinds.configs.items()):
        try:
            classes[kind] = _source_class(config)
        except LookupError as exc:
            del kinds.configs[kind]
            kinds.broken[kind] = str(exc)
    return kinds, classes


KINDS, REGISTRY = _discover()
CONFIGS: dict[str, type[SourceConfig]] = KINDS.configs

if TYPE_CHECKING:
    SourceEntry = SourceConfig
else:
    SourceEntry = KINDS.union(SourceConfig)


def create_source(name: str, config: SourceConfig, state_dir: Path) -> Source:
    """The source for one `[sources.NAME]` entry; `state_dir` is where it may keep state."""
    try:
        cls, config_cls = REGISTRY[config.kind], CONFIGS[config.kind]
    except KeyError:
        raise ValueError(
            f"sources.{name}: unknown kind {config.kind!r} (known: {KINDS.known()})"
        ) from None
    if not isinstance(config, config_cls):
        raise TypeError(f"sources.{name}: a {config.kind} source needs a {config_cls.__name__}")
    return cls(name, config, state_dir)


__all__ = [
    "CONFIGS",
    "GROUP",
    "KINDS",
    "REGISTRY",
    "EndOfStream",
    "Frame",
    "Source",
    "SourceConfig",
    "SourceEntry",
    "SourceError",
    "SourceState",
    "SourceUnusable",
    "create_source",
]
