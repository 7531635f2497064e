"""Raw: every output tensor, dequantized, keyed by tensor name (as `infer --json` shows
them), for models no rule reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options
from edge_agent.runtime.preprocess import Geometry


class RawDecoder:
    class Config(Options):
        pass

    def __init__(self, config: Config, context: DecoderContext) -> None:
        self.names = context.output_names

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        return {
            "outputs": {
                name: value.tolist() for name, value in zip(self.names, outputs, strict=True)
            }
        }
