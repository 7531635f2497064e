"""The base of every settings section (unknown keys are errors), and how a change to a
section takes effect in a running agent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# A name of a device, model, source, pipeline or topic level.
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Applies:
    """How a changed section takes effect in a running agent, declared beside the section
    in AgentSettings: `live`, by restarting a named `part` of the agent, or at the next
    `restart` of the process. Reload and set_config answer from this."""

    how: Literal["live", "part", "restart"]
    part: str = ""

    def describe(self) -> str:
        if self.how == "live":
            return "applies live"
        if self.how == "part":
            return f"restarts {self.part}"
        return "needs a restart of the agent"


LIVE = Applies("live")
NEEDS_RESTART = Applies("restart")


def restarts(part: str) -> Applies:
    return Applies("part", part)


def applies_of(metadata: list[Any]) -> Applies | None:
    """The declaration among a field's Annotated metadata, if any."""
    return next((m for m in metadata if isinstance(m, Applies)), None)
