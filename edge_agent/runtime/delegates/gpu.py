"""TFLite GPU delegate (OpenCL / OpenGL ES). No prebuilt Linux binary: build it for the board."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge_agent.runtime.delegates.base import DelegateConfig


class GpuConfig(DelegateConfig):
    name: Literal["gpu"] = "gpu"
    library: str = Field(
        "libtensorflowlite_gpu_delegate.so", description="GPU delegate shared library."
    )
