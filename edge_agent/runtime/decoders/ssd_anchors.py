"""Anchor-based SSD heads without post-processing (MediaPipe BlazeFace, palm and pose
detectors): regressors [1,N,4+2k] and scores [1,N,1] over a fixed grid of anchors.

Each anchor is a cell centre; its regressors hold the box centre offset, the box size and
k keypoints, in input pixels (MediaPipe's x/y/w/h scale is the input size)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from edge_agent.errors import UserError
from edge_agent.runtime.decoders.base import (
    DecoderContext,
    Floats,
    Options,
    source_box,
    source_point,
)
from edge_agent.runtime.decoders.nms import weighted_nms
from edge_agent.runtime.decoders.options import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_SCORE_THRESHOLD,
    IouThreshold,
    MaxDetections,
    ScoreThreshold,
)
from edge_agent.runtime.preprocess import Geometry

# MediaPipe's detectors suppress at IoU 0.3 (min_suppression_threshold in their graphs).
MEDIAPIPE_IOU = 0.3
# Logits are clipped before the sigmoid, as MediaPipe does (score_clipping_thresh).
LOGIT_CLIP = 100.0

Positive = Annotated[int, Field(gt=0)]


class SsdAnchorsConfig(Options):
    strides: list[Positive] = Field(
        min_length=1,
        description="Stride of each feature map, in input pixels (BlazeFace short range: "
        "[8, 16]). Layers of equal stride are one grid: give it once, with their anchors "
        "added up in anchors_per_cell.",
    )
    anchors_per_cell: list[Positive] = Field(
        min_length=1, description="Anchors in each cell of each feature map ([2, 6])."
    )
    offset: float = Field(0.5, ge=0, le=1, description="Anchor centre within its cell.")
    input_width: int | None = Field(
        None, gt=0, description="Width the layout is laid on; empty: the model's input width."
    )
    input_height: int | None = Field(
        None, gt=0, description="Height the layout is laid on; empty: the model's input height."
    )
    box_scale: float | None = Field(
        None,
        gt=0,
        description="Regressors are in units of input/box_scale; empty: the model's input "
        "size (MediaPipe's x_scale/y_scale/w_scale/h_scale).",
    )
    score_threshold: ScoreThreshold = DEFAULT_SCORE_THRESHOLD
    iou_threshold: IouThreshold = MEDIAPIPE_IOU
    nms: Literal["weighted", "regular"] = Field(
        "weighted",
        description="weighted: average overlapping boxes (MediaPipe); regular: keep the best.",
    )
    max_detections: MaxDetections = DEFAULT_MAX_DETECTIONS
    label: str | None = Field(
        None, description="Name of what it finds; empty: the first label, else '0'."
    )

    @model_validator(mode="after")
    def _one_count_per_stride(self) -> SsdAnchorsConfig:
        if len(self.strides) != len(self.anchors_per_cell):
            raise ValueError(
                f"{len(self.strides)} strides but {len(self.anchors_per_cell)} "
                "anchors_per_cell values: give one per stride"
            )
        return self


def anchor_centres(
    width: int, height: int, strides: Sequence[int], per_cell: Sequence[int], offset: float
) -> Floats:
    """(N, 2) anchor centres, normalised, in MediaPipe's order: grid by grid, row by row,
    the anchors of one cell together."""
    parts = []
    for stride, count in zip(strides, per_cell, strict=True):
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid(
            (np.arange(rows) + offset) / rows, (np.arange(cols) + offset) / cols, indexing="ij"
        )
        centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
        parts.append(np.repeat(centres, count, axis=0))
    return np.concatenate(parts).astype(np.float32)


@dataclass(frozen=True)
class KnownLayout:
    """A MediaPipe model's anchor layout, applied only when its anchor count and values per
    anchor match the model's exactly."""

    name: str
    size: tuple[int, int]
    strides: tuple[int, ...]
    anchors_per_cell: tuple[int, ...]
    keypoints: int
    label: str

    @property
    def count(self) -> int:
        w, h = self.size
        return sum(
            math.ceil(w / s) * math.ceil(h / s) * a
            for s, a in zip(self.strides, self.anchors_per_cell, strict=True)
        )

    @property
    def values(self) -> int:
        return 4 + 2 * self.keypoints

    def options(self) -> dict[str, Any]:
        return {
            "strides": list(self.strides),
            "anchors_per_cell": list(self.anchors_per_cell),
            "input_width": self.size[0],
            "input_height": self.size[1],
            "label": self.label,
        }


# From MediaPipe's graphs (face_detection_short_range.pbtxt and the like): SSD anchor
# options with equal-stride layers merged and interpolated aspect ratios counted.
KNOWN_LAYOUTS = (
    KnownLayout("MediaPipe BlazeFace short range", (128, 128), (8, 16), (2, 6), 6, "face"),
    KnownLayout("MediaPipe BlazeFace full range", (192, 192), (4,), (1,), 6, "face"),
    KnownLayout("MediaPipe palm detection", (192, 192), (8, 16), (2, 6), 7, "palm"),
    KnownLayout("MediaPipe pose detection", (224, 224), (8, 16, 32), (2, 2, 6), 4, "person"),
)


class SsdAnchorsDecoder:
    Config = SsdAnchorsConfig

    def __init__(self, config: SsdAnchorsConfig, context: DecoderContext) -> None:
        self.config = config
        model_w, model_h = context.input_size
        self.regressors, self.scores, count, values = _roles(context)
        width = config.input_width or model_w
        height = config.input_height or model_h
        self.anchors = anchor_centres(
            width, height, config.strides, config.anchors_per_cell, config.offset
        )
        if self.anchors.shape[0] != count:
            raise UserError(
                f"decoder ssd_anchors: the anchor layout ({width}x{height}, strides "
                f"{config.strides}, anchors per cell {config.anchors_per_cell}) gives "
                f"{self.anchors.shape[0]} anchors, but the model has {count}"
            )
        self.keypoints = (values - 4) // 2
        self.size = np.array([model_w, model_h], np.float32)
        # Regressor units to input pixels.
        scale = config.box_scale
        self.unit = self.size / scale if scale else np.ones(2, np.float32)
        self.min_logit = _logit(config.score_threshold)
        self.label = config.label or context.label(0)

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        logits = outputs[self.scores].reshape(-1)
        # Comparing logits first: the sigmoid runs on the few candidates, not on all N.
        candidates = np.nonzero(logits >= self.min_logit)[0]
        if candidates.size == 0:
            return {"detections": []}
        raw = outputs[self.regressors].reshape(logits.size, -1)[candidates]
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits[candidates], -LOGIT_CLIP, LOGIT_CLIP)))
        anchors = self.anchors[candidates] * self.size  # input pixels
        centre = anchors + raw[:, 0:2] * self.unit
        half = raw[:, 2:4] * self.unit / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        points = raw[:, 4 : 4 + 2 * self.keypoints].reshape(-1, self.keypoints, 2)
        points = anchors[:, None, :] + points * self.unit
        clusters = weighted_nms(
            boxes,
            points,
            scores.astype(np.float32),
            self.config.iou_threshold,
            self.config.max_detections,
            weighted=self.config.nms == "weighted",
        )
        return {
            "detections": [
                {
                    "class_id": 0,
                    "label": self.label,
                    "score": round(c.score, 6),
                    "box": source_box(*_floats4(c.box), geometry),
                    "keypoints": [source_point(float(x), float(y), geometry) for x, y in c.points],
                }
                for c in clusters
            ]
        }


def _roles(context: DecoderContext) -> tuple[int, int, int, int]:
    """Indices of the regressors and scores outputs, the anchor count, values per anchor."""
    shapes = [tuple(o.shape) for o in context.outputs]
    scores = [i for i, s in enumerate(shapes) if len(s) >= 2 and s[-1] == 1]
    regressors = [
        i for i, s in enumerate(shapes) if len(s) >= 2 and s[-1] >= 4 and (s[-1] - 4) % 2 == 0
    ]
    if len(shapes) != 2 or len(scores) != 1 or len(regressors) != 1:
        shown = ", ".join(str(list(s)) for s in shapes)
        raise UserError(
            f"decoder ssd_anchors: expected outputs [1,N,4+2k] (regressors) and [1,N,1] "
            f"(scores), got {shown}"
        )
    count = int(np.prod(shapes[scores[0]]))
    values = shapes[regressors[0]][-1]
    if int(np.prod(shapes[regressors[0]])) != count * values:
        raise UserError(
            f"decoder ssd_anchors: regressors {list(shapes[regressors[0]])} and scores "
            f"{list(shapes[scores[0]])} do not have the same number of anchors"
        )
    return regressors[0], scores[0], count, values


def _logit(p: float) -> float:
    if p <= 0:
        return -math.inf
    if p >= 1:
        return math.inf
    return math.log(p / (1 - p))


def _floats4(box: Floats) -> tuple[float, float, float, float]:
    return float(box[0]), float(box[1]), float(box[2]), float(box[3])
