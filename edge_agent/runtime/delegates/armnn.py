"""Arm NN: Mali GPU (GpuAcc) and Neon CPU (CpuAcc) backends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


class ArmNnConfig(DelegateConfig):
    name: Literal["armnn"] = "armnn"
    library: Annotated[str, LOCAL_ONLY] = Field(
        "libarmnnDelegate.so", description="Arm NN delegate shared library."
    )
    backends: str = Field(
        "GpuAcc,CpuAcc,CpuRef",
        pattern=r"^\w+(,\w+)*$",
        description="Arm NN backends in order of preference, comma separated.",
    )
    number_of_threads: int = Field(0, ge=0, description="CpuAcc threads; 0: Arm NN decides.")

    def options(self) -> dict[str, str]:
        options = {"backends": self.backends}
        if self.number_of_threads:
            options["number-of-threads"] = str(self.number_of_threads)
        return options
