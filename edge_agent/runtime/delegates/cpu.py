"""The CPU: built-in kernels, with XNNPACK unless it is turned off or refuses the graph."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


class CpuConfig(DelegateConfig):
    name: Literal["cpu"] = "cpu"
    library: Annotated[str, LOCAL_ONLY] = Field(
        "", description="Unused: the CPU kernels are built in."
    )
    xnnpack: bool = Field(True, description="Use XNNPACK, the runtime's fast CPU kernels.")
