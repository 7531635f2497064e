"""Regression: the first output's values, as they are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options
from edge_agent.runtime.preprocess import Geometry


class RegressionDecoder:
    class Config(Options):
        pass

    def __init__(self, config: Config, context: DecoderContext) -> None:
        pass

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        return {"values": [round(float(v), 6) for v in outputs[0].reshape(-1)]}
