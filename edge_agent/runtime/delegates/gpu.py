"""TFLite GPU delegate (OpenCL / OpenGL ES). No prebuilt Linux binary: build it for the board."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


class GpuConfig(DelegateConfig):
    name: Literal["gpu"] = "gpu"
    library: Annotated[str, LOCAL_ONLY] = Field(
        "libtensorflowlite_gpu_delegate.so", description="GPU delegate shared library."
    )
