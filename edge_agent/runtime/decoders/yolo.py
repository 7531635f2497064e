"""YOLO heads as Ultralytics' TFLite exports give them: YOLOv8/v11 [1,4+C,N] (box, then
one score per class) and YOLOv5 [1,N,5+C] (box, objectness, class scores). Boxes are
centre x, y, width, height, normalised or in input pixels. Candidates under the threshold
are dropped before anything else is computed; class-aware NMS is OpenCV's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from edge_agent.errors import UserError
from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options, source_box
from edge_agent.runtime.decoders.nms import class_nms
from edge_agent.runtime.decoders.options import (
    DEFAULT_IOU_THRESHOLD,
    DEFAULT_MAX_DETECTIONS,
    IouThreshold,
    MaxDetections,
    ScoreThreshold,
)

if TYPE_CHECKING:
    from edge_agent.runtime.preprocess import Geometry

# Ultralytics' own default confidence for predictions.
YOLO_SCORE_THRESHOLD = 0.25
# A normalised box reaches a little past 1 at the image's edge; a box in pixels this
# small would be under two pixels wide, at the very corner.
NORMALISED_LIMIT = 1.5
# Most candidates handed to NMS (the best-scoring): a very low threshold on a busy frame
# must not make NMS, which is quadratic, cost more than the model.
MAX_NMS_CANDIDATES = 2000


class YoloConfig(Options):
    version: Literal["v5", "v8"] = Field(
        "v8",
        description="v8 (also v11): [1,4+C,N], no objectness; v5: [1,N,5+C], objectness at "
        "index 4 multiplies the class scores.",
    )
    boxes: Literal["auto", "normalised", "pixels"] = Field(
        "auto",
        description="Units of the box values; auto: normalised when none exceeds "
        f"{NORMALISED_LIMIT}, else input pixels (decided on the first frame with boxes).",
    )
    score_threshold: ScoreThreshold = YOLO_SCORE_THRESHOLD
    iou_threshold: IouThreshold = DEFAULT_IOU_THRESHOLD
    max_detections: MaxDetections = DEFAULT_MAX_DETECTIONS
    agnostic: bool = Field(
        False, description="NMS across classes: a box suppresses overlapping boxes of any class."
    )


class YoloDecoder:
    Config = YoloConfig

    def __init__(self, config: YoloConfig, context: DecoderContext) -> None:
        self.config = config
        self.context = context
        if len(context.outputs) != 1:
            raise UserError(
                f"decoder yolo: expected one output, the model has {len(context.outputs)}"
            )
        shape = tuple(d for d in context.outputs[0].shape if d != 1) or (1,)
        fields = 5 if config.version == "v5" else 4
        if len(shape) != 2 or min(shape) <= fields:
            raise UserError(
                f"decoder yolo {config.version}: output {list(context.outputs[0].shape)} is not "
                f"[1,{fields}+C,N] or [1,N,{fields}+C]"
            )
        self.fields = fields
        # Candidates are the longer dimension: N (thousands) outnumbers 4 + C.
        self.candidates_last = shape[1] > shape[0]
        self.classes = min(shape) - fields
        self.size = np.array(context.input_size * 2, np.float32)  # (w, h, w, h)
        self.scale: Literal["normalised", "pixels"] | None = (
            None if config.boxes == "auto" else config.boxes
        )

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        out = outputs[0].reshape(-1, outputs[0].shape[-1]) if outputs[0].ndim > 2 else outputs[0]
        # Rows of values per candidate, as a view: (N, fields + C).
        pred = out.T if self.candidates_last else out
        keep, scores, classes = self._candidates(pred)
        if keep.size == 0:
            return {"detections": []}
        boxes = self._boxes(pred[keep, :4])
        classes_for_nms = np.zeros_like(classes) if self.config.agnostic else classes
        kept = class_nms(
            boxes, scores, classes_for_nms, self.config.iou_threshold, self.config.max_detections
        )
        return {
            "detections": [
                {
                    "class_id": int(classes[i]),
                    "label": self.context.label(int(classes[i])),
                    "score": round(float(scores[i]), 6),
                    "box": source_box(
                        float(boxes[i, 0]),
                        float(boxes[i, 1]),
                        float(boxes[i, 2]),
                        float(boxes[i, 3]),
                        geometry,
                    ),
                }
                for i in kept
            ]
        }

    def _candidates(
        self, pred: Floats
    ) -> tuple[np.ndarray[Any, Any], Floats, np.ndarray[Any, np.dtype[np.int32]]]:
        """Indices of candidates over the threshold, their best class score and class."""
        threshold = self.config.score_threshold
        class_scores = pred[:, self.fields :]
        if self.fields == 5:
            objectness = pred[:, 4]
            # A class score times objectness never exceeds objectness: filter on it first.
            keep = np.flatnonzero(objectness >= threshold)
            scores_all = class_scores[keep] * objectness[keep, None]
        else:
            # The best score of every candidate in one pass over the (C, N) block; the
            # class of the few that pass comes after.
            best = class_scores.max(axis=1)
            keep = np.flatnonzero(best >= threshold)
            scores_all = class_scores[keep]
        classes = scores_all.argmax(axis=1).astype(np.int32)
        scores = scores_all[np.arange(keep.size), classes].astype(np.float32)
        passing = scores >= threshold
        keep, scores, classes = keep[passing], scores[passing], classes[passing]
        if keep.size > MAX_NMS_CANDIDATES:
            top = np.argpartition(-scores, MAX_NMS_CANDIDATES - 1)[:MAX_NMS_CANDIDATES]
            keep, scores, classes = keep[top], scores[top], classes[top]
        return keep, scores, classes

    def _boxes(self, xywh: Floats) -> Floats:
        """Centre boxes to [x1, y1, x2, y2] in model-input pixels."""
        if self.scale is None:
            self.scale = "normalised" if float(np.abs(xywh).max()) <= NORMALISED_LIMIT else "pixels"
        xywh = xywh.astype(np.float32, copy=True)
        if self.scale == "normalised":
            xywh *= self.size
        half = xywh[:, 2:4] / 2
        return np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
