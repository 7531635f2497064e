"""Qualcomm AI Engine Direct (QNN): Hexagon NPU (htp), GPU or DSP."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


class QnnConfig(DelegateConfig):
    name: Literal["qnn"] = "qnn"
    library: Annotated[str, LOCAL_ONLY] = Field(
        "libQnnTFLiteDelegate.so", description="QNN TFLite delegate library."
    )
    backend_type: Literal["htp", "gpu", "dsp"] = Field("htp", description="QNN backend.")

    def options(self) -> dict[str, str]:
        return {"backend_type": self.backend_type}
