"""Mesa Teflon: open-source NPU driver (VeriSilicon Vivante, Rockchip) as a TFLite delegate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_agent.runtime.delegates.base import DelegateConfig


class TeflonConfig(DelegateConfig):
    name: Literal["teflon"] = "teflon"
    library: str = Field("/usr/lib/teflon/libteflon.so", description="Mesa Teflon library.")
