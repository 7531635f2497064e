"""Delegates, found through the entry-point group `edge_agent.delegates`: ours are registered
in pyproject.toml, a user's package registers its own the same way
(`npu = "my_delegates.npu:NpuConfig"`). An entry names a DelegateConfig whose `name` is
`Literal["<entry name>"]`, naming its library and options. A chain of these, ending on the
CPU, is what the loader tries in order."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edge_agent.plugins import discover

# Bound before the plugins load below: a plugin may import these from this package.
from edge_agent.runtime.delegates.base import DelegateConfig
from edge_agent.runtime.delegates.cpu import CpuConfig  # the loader's last resort

GROUP = "edge_agent.delegates"


def _name_as_entry(value: Any) -> Any:
    # `delegates = ["edgetpu", "cpu"]` is shorthand for tables with only a name.
    return {"name": value} if isinstance(value, str) else value


DELEGATES = discover(GROUP, DelegateConfig, "name", "delegate")
REGISTRY: dict[str, type[DelegateConfig]] = DELEGATES.configs

if TYPE_CHECKING:
    DelegateEntry = DelegateConfig
else:
    DelegateEntry = DELEGATES.union(DelegateConfig, before=_name_as_entry)

__all__ = ["DELEGATES", "GROUP", "REGISTRY", "CpuConfig", "DelegateConfig", "DelegateEntry"]
