"""Any other delegate: a library exporting tflite_plugin_create_delegate, with its options."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.runtime.delegates.base import DelegateConfig


def _scalar(value: Any) -> Any:
    # One plain message instead of one per member of a str | int | float | bool union.
    if not isinstance(value, str | int | float | bool):
        raise ValueError("must be a string, a number or a boolean")
    return value


OptionValue = Annotated[str | int | float | bool, BeforeValidator(_scalar)]


class ExternalConfig(DelegateConfig):
    name: Literal["external"] = "external"
    library: Annotated[str, LOCAL_ONLY] = Field(description="Path of the delegate library.")
    label: str = Field("", description="Name shown in reports; defaults to the library's name.")
    options_: dict[str, OptionValue] = Field(
        default_factory=dict, alias="options", description="Options passed to the library."
    )

    def options(self) -> dict[str, str]:
        return {
            key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in self.options_.items()
        }
