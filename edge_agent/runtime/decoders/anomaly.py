"""Anomaly: the model's first output value is the score; above `threshold` is anomalous."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options
from edge_agent.runtime.decoders.options import AnomalyThreshold
from edge_agent.runtime.preprocess import Geometry


class AnomalyDecoder:
    class Config(Options):
        threshold: AnomalyThreshold | None = None

    def __init__(self, config: Config, context: DecoderContext) -> None:
        self.threshold = config.threshold

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        score = float(outputs[0].reshape(-1)[0])
        result: dict[str, Any] = {"score": round(score, 6)}
        if self.threshold is not None:
            result["threshold"] = self.threshold
            result["anomalous"] = score > self.threshold
        return result
