"""The CPU through LiteRT 2's CompiledModel (XNNPACK) instead of the Interpreter: the
same kernels by the other API, to compare the two paths and to check that a model runs
on CompiledModel before an accelerator entry is trusted with it."""

from __future__ import annotations

from typing import ClassVar, Literal

from edge_agent.runtime.delegates.base import LiteRtAcceleratorConfig


class LiteRtCpuConfig(LiteRtAcceleratorConfig):
    name: Literal["litert_cpu"] = "litert_cpu"
    accelerator: ClassVar[str] = "CPU"
