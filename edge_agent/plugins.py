"""Configs found through an entry-point group, and the tagged union a settings field takes
them in. Ours are registered in pyproject.toml the way a user's package registers its own:
each entry names a pydantic config class whose tag field (a source's `kind`, a delegate's
`name`) is a Literal of the entry's name."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, Field

C = TypeVar("C", bound=BaseModel)


@dataclass(frozen=True)
class Registered(Generic[C]):
    """The usable configs of one group by name, and why the others are left out."""

    group: str
    tag: str  # the field that picks the config
    noun: str  # how a message names one: "source kind", "delegate"
    configs: dict[str, type[C]]
    broken: dict[str, str]  # name -> why it cannot be used

    def known(self) -> str:
        return ", ".join(sorted(self.configs)) or "none: is edge-agent installed?"

    def check(self, value: Any) -> Any:
        """Before the union: a missing or unknown tag is one line naming the known ones
        (pydantic's own message would not say where a plugin comes from)."""
        if not isinstance(value, dict):
            return value
        if self.tag not in value:
            raise ValueError(f"{self.tag} is missing: one of {self.known()}")
        name = value[self.tag]
        if isinstance(name, str) and name in self.configs:
            return value
        if isinstance(name, str) and name in self.broken:
            raise ValueError(f"{self.noun} {name!r} cannot be used: {self.broken[name]}")
        raise ValueError(
            f"unknown {self.noun} {name!r} (known: {self.known()}; a plugin adds its own "
            f"through the entry-point group {self.group})"
        )

    def union(self, base: type[C], before: Callable[[Any], Any] | None = None) -> Any:
        """`Annotated[A | B | ..., discriminator]` for a settings field; `before` runs
        ahead of the check (a shorthand spelling of an entry)."""
        check = self.check if before is None else lambda v: self.check(before(v))
        if not self.configs:  # nothing registered: every entry fails the check
            return Annotated[base, BeforeValidator(check)]
        members = functools.reduce(operator.or_, self.configs.values())
        return Annotated[members, Field(discriminator=self.tag), BeforeValidator(check)]


def discover(group: str, base: type[C], tag: str, noun: str) -> Registered[C]:
    """Loads every entry of `group`. One that does not import, is not a `base`, or whose
    tag is not `Literal[<its entry name>]` is kept out, with its reason for the message a
    config naming it gets."""
    configs: dict[str, type[C]] = {}
    broken: dict[str, str] = {}
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        where = f"{entry.name} = {entry.value}"
        if entry.name in configs or entry.name in broken:
            # Two packages claim one name: which one a config meant cannot be told.
            configs.pop(entry.name, None)
            broken[entry.name] = f"registered by more than one package ({where} among them)"
            continue
        try:
            loaded = entry.load()
        except Exception as exc:  # a plugin's import can fail any way it likes
            broken[entry.name] = f"{where}: cannot import: {type(exc).__name__}: {exc}"
            continue
        problem = _misfit(loaded, base, tag, entry.name)
        if problem:
            broken[entry.name] = f"{where}: {problem}"
        else:
            configs[entry.name] = loaded
    return Registered(group, tag, noun, configs, broken)


def _misfit(loaded: Any, base: type[BaseModel], tag: str, name: str) -> str | None:
    if not (isinstance(loaded, type) and issubclass(loaded, base)):
        return f"not a {base.__name__} subclass"
    field = loaded.model_fields.get(tag)
    annotation = field.annotation if field is not None else None
    if get_origin(annotation) is not Literal or get_args(annotation) != (name,):
        return f"its {tag} field must be Literal[{name!r}]"
    return None
