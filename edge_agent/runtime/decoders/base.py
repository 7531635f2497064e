"""What every decoder is: a class with a pydantic `Config`, built from that config and a
`DecoderContext`, called with one input's dequantized outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from edge_agent.runtime.model import TensorSpec
from edge_agent.runtime.preprocess import Geometry

Floats = npt.NDArray[np.float32]


class Options(BaseModel):
    """Base of a decoder's Config: unknown options are errors, so a typo is named."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DecoderContext:
    """What a decoder may know about its model, beside its options."""

    labels: list[str]
    input_size: tuple[int, int]  # (width, height) of the model input, in pixels
    outputs: Sequence[TensorSpec]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)


class Decoder(Protocol):
    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]: ...


class DecoderClass(Protocol):
    """A decoder class as the registry finds it (an entry point or `module:Class`)."""

    Config: ClassVar[type[BaseModel]]

    def __call__(self, config: Any, context: DecoderContext) -> Decoder: ...


def source_box(
    x1: float, y1: float, x2: float, y2: float, geometry: Geometry | None
) -> list[float]:
    """[x1, y1, x2, y2] in model-input pixels to source-image pixels, rounded for JSON."""
    if geometry is not None:
        x1, y1 = geometry.to_source(x1, y1)
        x2, y2 = geometry.to_source(x2, y2)
    return [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)]


def source_point(x: float, y: float, geometry: Geometry | None) -> list[float]:
    if geometry is not None:
        x, y = geometry.to_source(x, y)
    return [round(x, 2), round(y, 2)]
