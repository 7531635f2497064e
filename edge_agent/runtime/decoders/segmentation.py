"""Segmentation: one output [1,H,W,K] of per-pixel class scores (K = 1: a foreground
probability). The result gives each class's share of the image; the class mask stays on
the decoder (`last_mask`) for snapshots to draw, since it is too big for every result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field

from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options

if TYPE_CHECKING:
    from edge_agent.runtime.preprocess import Geometry

# A class covering less than this share of the pixels is left out of the result.
DEFAULT_MIN_AREA = 0.001


class SegmentationConfig(Options):
    foreground_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="One-channel output: a pixel above this is foreground (class 1).",
    )
    min_area: float = Field(
        DEFAULT_MIN_AREA, ge=0, le=1, description="Smallest share of the image reported."
    )


class SegmentationDecoder:
    Config = SegmentationConfig

    def __init__(self, config: SegmentationConfig, context: DecoderContext) -> None:
        self.config = config
        self.context = context
        self.last_mask: npt.NDArray[np.uint8] | None = None

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        h, w, k = outputs[0].shape[-3:]
        scores = outputs[0].reshape(h, w, k)
        if k == 1:
            mask = (scores[..., 0] > self.config.foreground_threshold).astype(np.uint8)
            classes = 2
            names = ["background", self.context.label(0) if self.context.labels else "foreground"]
        else:
            mask = np.argmax(scores, axis=-1).astype(
                np.uint8 if scores.shape[-1] <= 256 else np.uint16
            )
            classes = k
            names = [self.context.label(i) for i in range(classes)]
        self.last_mask = mask
        areas = np.bincount(mask.ravel(), minlength=classes) / mask.size
        return {
            "areas": [
                {"class_id": int(i), "label": names[i], "area": round(float(areas[i]), 6)}
                for i in np.argsort(-areas, kind="stable")
                if areas[i] >= self.config.min_area and areas[i] > 0
            ],
            "mask_size": [int(mask.shape[1]), int(mask.shape[0])],
        }
