"""Delegate registry: one module per delegate, each a config model naming its library and
options. A chain of these, ending on the CPU, is what the loader tries in order."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from edge_agent.runtime.delegates.armnn import ArmNnConfig
from edge_agent.runtime.delegates.base import DelegateConfig
from edge_agent.runtime.delegates.cpu import CpuConfig
from edge_agent.runtime.delegates.edgetpu import EdgeTpuConfig
from edge_agent.runtime.delegates.external import ExternalConfig
from edge_agent.runtime.delegates.gpu import GpuConfig
from edge_agent.runtime.delegates.qnn import QnnConfig
from edge_agent.runtime.delegates.teflon import TeflonConfig
from edge_agent.runtime.delegates.vx import VxConfig

REGISTRY: dict[str, type[DelegateConfig]] = {
    "edgetpu": EdgeTpuConfig,
    "gpu": GpuConfig,
    "vx": VxConfig,
    "teflon": TeflonConfig,
    "armnn": ArmNnConfig,
    "qnn": QnnConfig,
    "external": ExternalConfig,
    "cpu": CpuConfig,
}


def _name_as_entry(value: Any) -> Any:
    # `delegates = ["edgetpu", "cpu"]` is shorthand for tables with only a name.
    return {"name": value} if isinstance(value, str) else value


DelegateEntry = Annotated[
    ArmNnConfig
    | CpuConfig
    | EdgeTpuConfig
    | ExternalConfig
    | GpuConfig
    | QnnConfig
    | TeflonConfig
    | VxConfig,
    Field(discriminator="name"),
    BeforeValidator(_name_as_entry),
]

__all__ = ["REGISTRY", "CpuConfig", "DelegateConfig", "DelegateEntry"]
