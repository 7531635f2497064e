"""Any other delegate: a library exporting tflite_plugin_create_delegate, with its options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from edge_agent.runtime.delegates.base import DelegateConfig


class ExternalConfig(DelegateConfig):
    name: Literal["external"] = "external"
    library: str = Field(description="Path of the delegate library.")
    label: str = Field("", description="Name shown in reports; defaults to the library's name.")
    options_: dict[str, StrictStr | StrictInt | StrictFloat | StrictBool] = Field(
        default_factory=dict, alias="options", description="Options passed to the library."
    )

    def options(self) -> dict[str, str]:
        return {
            key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in self.options_.items()
        }
