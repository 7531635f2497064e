"""Coral Edge TPU (USB, PCIe, M.2). Needs a model compiled by edgetpu_compiler."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


class EdgeTpuConfig(DelegateConfig):
    name: Literal["edgetpu"] = "edgetpu"
    library: Annotated[str, LOCAL_ONLY] = Field(
        "libedgetpu.so.1", description="libedgetpu shared library."
    )
    device: str = Field(
        "",
        pattern=r"^(|:\d+|usb(:\d+)?|pci(:\d+)?)$",
        description='Which Edge TPU: "" (first found), ":N", "usb", "usb:N", "pci", "pci:N".',
    )

    def options(self) -> dict[str, str]:
        return {"device": self.device} if self.device else {}
