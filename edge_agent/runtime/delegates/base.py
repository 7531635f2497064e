"""What every delegate entry of the chain has: a library to load and string options."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edge_agent.config.local_only import LOCAL_ONLY


class DelegateConfig(BaseModel):
    """One entry of `runtime.delegates`. Subclasses add their own typed options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Which delegate this entry is.")
    library: Annotated[str, LOCAL_ONLY] = Field(
        description="Shared library to load: a file name or a path."
    )

    def options(self) -> dict[str, str]:
        """Options as `load_delegate` takes them: every value a string."""
        return {}
