"""NXP i.MX 8 NPU through the VX delegate. The first load compiles the graph (up to a
minute); the cache options keep that compilation for the next start."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


class VxConfig(DelegateConfig):
    name: Literal["vx"] = "vx"
    library: Annotated[str, LOCAL_ONLY] = Field(
        "libvx_delegate.so", description="NXP VX delegate shared library."
    )
    cache_file_path: Annotated[str, LOCAL_ONLY] = Field(
        "", description="Where to keep the compiled graph; empty: none."
    )

    def options(self) -> dict[str, str]:
        if not self.cache_file_path:
            return {}
        return {"allowed_cache_mode": "true", "cache_file_path": self.cache_file_path}
