"""What every entry of the chain has: a library to load and string options, or, for an
entry run through LiteRT 2's CompiledModel, the accelerator it asks for."""

from __future__ import annotations

from typing import Annotated, ClassVar

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


class LiteRtAcceleratorConfig(DelegateConfig):
    """An entry run through LiteRT 2's CompiledModel instead of a delegate library:
    the accelerator is named, not loaded from a file."""

    library: Annotated[str, LOCAL_ONLY] = Field(
        "", description="Unused: LiteRT finds its accelerator itself."
    )
    cpu_for_other_ops: bool = Field(
        True,
        description="Let the CPU run the ops the accelerator cannot take; "
        "off: the entry is skipped unless the accelerator takes the whole model.",
    )

    # "CPU", "GPU" or "NPU": the HardwareAccelerator member this entry asks for.
    accelerator: ClassVar[str] = "CPU"

    def missing(self) -> str:
        """What must be installed before this entry can work, in one line; "" if nothing."""
        return ""

    def environment_paths(self) -> dict[str, str]:
        """Environment.create arguments (dispatch and compiler plugin directories)."""
        return {}
