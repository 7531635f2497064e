"""SSD-style post-processed detection: the four outputs of TFLite_Detection_PostProcess
(SSD MobileNet, EfficientDet-Lite) or a model shaped like them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edge_agent.errors import UserError
from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options, source_box
from edge_agent.runtime.decoders.options import (
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_SCORE_THRESHOLD,
    MaxDetections,
    ScoreThreshold,
)
from edge_agent.runtime.preprocess import Geometry


class DetectionDecoder:
    """SSD-style outputs (boxes, classes, scores, count) found by shape and meaning, since
    exports order them differently. Boxes are [ymin, xmin, ymax, xmax] normalised to the
    model input; results are [x1, y1, x2, y2] in source-image pixels."""

    class Config(Options):
        score_threshold: ScoreThreshold = DEFAULT_SCORE_THRESHOLD
        max_detections: MaxDetections = DEFAULT_MAX_DETECTIONS

    def __init__(self, config: Config, context: DecoderContext) -> None:
        self.threshold = config.score_threshold
        self.max_detections = config.max_detections
        self.context = context
        self.input_width, self.input_height = context.input_size
        self.names = context.output_names
        self._roles: tuple[int, int, int, int | None] | None = None

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        boxes_i, classes_i, scores_i, count_i = self._roles or self._find_roles(outputs)
        boxes = outputs[boxes_i].reshape(-1, 4)
        classes = outputs[classes_i].reshape(-1)
        scores = outputs[scores_i].reshape(-1)
        n = boxes.shape[0]
        if count_i is not None:
            n = _count(outputs[count_i], n)
        keep = np.nonzero(scores[:n] >= self.threshold)[0]
        keep = keep[np.argsort(-scores[keep], kind="stable")][: self.max_detections]
        detections = []
        for i in keep:
            class_id = round(float(classes[i]))
            detections.append(
                {
                    "class_id": class_id,
                    "label": self.context.label(class_id),
                    "score": round(float(scores[i]), 6),
                    "box": self._to_source(boxes[i], geometry),
                }
            )
        return {"detections": detections}

    def _to_source(self, box: Floats, geometry: Geometry | None) -> list[float]:
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        x1, y1 = xmin * self.input_width, ymin * self.input_height
        x2, y2 = xmax * self.input_width, ymax * self.input_height
        return source_box(x1, y1, x2, y2, geometry)

    def _find_roles(self, outputs: Sequence[Floats]) -> tuple[int, int, int, int | None]:
        boxes = [i for i, o in enumerate(outputs) if o.ndim >= 2 and o.shape[-1] == 4]
        if len(boxes) != 1:
            raise UserError(
                "detection model: expected exactly one output shaped [..., N, 4] (boxes)"
            )
        n = outputs[boxes[0]].reshape(-1, 4).shape[0]
        per_box = [i for i, o in enumerate(outputs) if i != boxes[0] and o.size == n]
        if len(per_box) == 3:
            # One detection: count, classes and scores all hold one value; count is the
            # one without the detections dimension.
            per_box.sort(key=lambda i: outputs[i].ndim)
            if outputs[per_box[0]].ndim < outputs[per_box[1]].ndim:
                per_box = per_box[1:]
        counts = [i for i, o in enumerate(outputs) if o.size == 1 and i not in per_box]
        if len(per_box) != 2:
            raise UserError(
                f"detection model: expected two outputs of {n} values (classes, scores), "
                f"found {len(per_box)}"
            )
        count_i = counts[0] if counts else None
        # TFLite_Detection_PostProcess leaves the entries past the count unwritten: only
        # the counted ones say anything.
        limit = n if count_i is None else _count(outputs[count_i], n)
        classes_i, scores_i, certain = self._classes_and_scores(
            [outputs[i].reshape(-1)[:limit] for i in range(len(outputs))], per_box
        )
        roles = (boxes[0], classes_i, scores_i, count_i)
        if certain:
            self._roles = roles
        return roles

    def _classes_and_scores(
        self, outputs: Sequence[Floats], pair: list[int]
    ) -> tuple[int, int, bool]:
        """Classes are whole numbers; scores are fractions in [0, 1]. When the values
        cannot tell (all 0s and 1s, say), the tensor names decide, for this frame only."""
        a, b = pair
        a_whole, b_whole = _whole(outputs[a]), _whole(outputs[b])
        if a_whole != b_whole:
            return (a, b, True) if a_whole else (b, a, True)
        # Scores never exceed 1; class ids often do.
        a_big, b_big = bool(np.any(outputs[a] > 1.001)), bool(np.any(outputs[b] > 1.001))
        if a_big != b_big:
            return (a, b, True) if a_big else (b, a, True)
        a_name, b_name = self.names[a].lower(), self.names[b].lower()
        if "score" in a_name or "class" in b_name:
            return b, a, False
        return a, b, False


def _count(count: Floats, most: int) -> int:
    value = float(count.reshape(-1)[0])
    return min(most, max(0, round(value))) if np.isfinite(value) else 0


def _whole(values: Floats) -> bool:
    # Tight: a saturated score (0.996, 0.0039) must not pass for a class id.
    return bool(np.all(np.abs(values - np.round(values)) < 1e-3))
