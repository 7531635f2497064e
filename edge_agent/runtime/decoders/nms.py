"""Non-maximum suppression: OpenCV's (class-aware) for YOLO, and MediaPipe's weighted
NMS, which averages a cluster of overlapping boxes instead of keeping only the best."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float32]
Indices = npt.NDArray[np.intp]


def class_nms(
    boxes: Floats, scores: Floats, classes: npt.NDArray[np.int32], iou: float, keep: int
) -> Indices:
    """Indices kept, best first: boxes [x1, y1, x2, y2] only suppress boxes of their class."""
    import cv2  # here, not at the top: a sensor-only agent never loads OpenCV

    if boxes.shape[0] == 0:
        return np.zeros(0, np.intp)
    xywh = boxes.copy()
    xywh[:, 2:] -= boxes[:, :2]
    # Lists: OpenCV converts them to its vectors several times faster than arrays. No
    # top_k: OpenCV applies it to the candidates before NMS, which would let one object's
    # boxes crowd out the others; the best `keep` are taken after.
    kept = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), classes.tolist(), 0.0, iou)
    return np.asarray(kept, np.intp).reshape(-1)[:keep]


def iou_one_to_many(box: Floats, others: Floats) -> Floats:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


@dataclass(frozen=True)
class Cluster:
    score: float  # of the best box
    box: Floats  # [x1, y1, x2, y2]
    points: Floats  # (k, 2)
    merged: int  # boxes averaged into it


def weighted_nms(
    boxes: Floats, points: Floats, scores: Floats, iou: float, keep: int, weighted: bool
) -> list[Cluster]:
    """Best box first; the boxes overlapping it by more than `iou` are averaged into it,
    weighted by score (MediaPipe's WEIGHTED), or dropped (regular NMS)."""
    order = np.argsort(-scores, kind="stable")
    clusters: list[Cluster] = []
    while order.size and len(clusters) < keep:
        best = order[0]
        overlap = iou_one_to_many(boxes[best], boxes[order])
        group = order[overlap > iou]
        group = group if group.size else order[:1]
        if weighted:
            w = scores[group]
            total = float(w.sum())
            box = (boxes[group] * w[:, None]).sum(0) / total
            pts = (points[group] * w[:, None, None]).sum(0) / total
        else:
            box, pts = boxes[best], points[best]
        clusters.append(Cluster(float(scores[best]), box, pts, int(group.size)))
        order = order[overlap <= iou]
        if best in order:  # a degenerate (zero-area) box overlaps nothing, itself included
            order = order[order != best]
    return clusters
