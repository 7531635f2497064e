"""Classification: one output of K scores; the best `top_k`, with labels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options
from edge_agent.runtime.decoders.options import DEFAULT_TOP_K, TopK
from edge_agent.runtime.preprocess import Geometry


class ClassificationDecoder:
    class Config(Options):
        top_k: TopK = DEFAULT_TOP_K

    def __init__(self, config: Config, context: DecoderContext) -> None:
        self.top_k = config.top_k
        self.context = context

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        scores = outputs[0].reshape(-1)
        k = min(self.top_k, scores.size)
        # argpartition then sort the k: cheaper than a full sort of 1,000 classes.
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return {
            "top": [
                {
                    "index": int(i),
                    "label": self.context.label(int(i)),
                    "score": round(float(scores[i]), 6),
                }
                for i in top
            ]
        }
