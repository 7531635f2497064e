"""GPU through LiteRT 2's CompiledModel (WebGPU, OpenCL or Metal, whichever LiteRT finds):
no delegate library to build, the accelerator ships inside ai-edge-litert."""

from __future__ import annotations

from typing import ClassVar, Literal

from edge_agent.runtime.delegates.base import LiteRtAcceleratorConfig


class LiteRtGpuConfig(LiteRtAcceleratorConfig):
    name: Literal["litert_gpu"] = "litert_gpu"
    accelerator: ClassVar[str] = "GPU"
