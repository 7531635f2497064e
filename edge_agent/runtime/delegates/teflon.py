"""Mesa Teflon: open-source NPU driver (VeriSilicon Vivante, Rockchip) as a TFLite delegate."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


class TeflonConfig(DelegateConfig):
    name: Literal["teflon"] = "teflon"
    library: Annotated[str, LOCAL_ONLY] = Field(
        "/usr/lib/teflon/libteflon.so", description="Mesa Teflon library."
    )
