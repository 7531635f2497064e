"""What a snapshot shows on the frame: a segmentation mask tinted over it, then each
detection's box, label and keypoints, as the pipelines last saw them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.preprocess import Geometry

if TYPE_CHECKING:
    from edge_agent.sources.base import Frame

BOX_BGR = (0, 255, 0)
KEYPOINT_BGR = (0, 0, 255)
# Class colours for masks (BGR), class 0 being the background, left untinted.
MASK_BGR = ((255, 0, 255), (255, 255, 0), (0, 165, 255), (255, 0, 0), (0, 255, 255))
MASK_ALPHA = 0.45
_FONT_SCALE = 0.45
_LINE = 2
_KEYPOINT_RADIUS = 3

Image = npt.NDArray[np.uint8]


class Drawn(Protocol):
    """What a pipeline keeps for snapshots."""

    last_result: Any
    last_mask: tuple[npt.NDArray[Any], Geometry | None] | None


def draw(image: Image, pipelines: Iterable[Drawn]) -> dict[str, int]:
    """Draws on `image` in place; returns how many boxes and masks were drawn."""
    counts = {"detections_drawn": 0, "masks_drawn": 0}
    for pipeline in pipelines:
        if pipeline.last_mask is not None:
            _tint(image, *pipeline.last_mask)
            counts["masks_drawn"] += 1
        last = pipeline.last_result
        for det in last.result.get("detections", []) if last else []:
            _detection(image, det)
            counts["detections_drawn"] += 1
    return counts


@dataclass(frozen=True)
class Picture:
    jpeg: bytes
    width: int
    height: int
    drawn: dict[str, int]  # detections_drawn, masks_drawn


def picture(frame: Frame, pipelines: Iterable[Drawn], quality: int) -> Picture | None:
    """A drawn copy of the whole `frame` (the pipelines keep reading theirs) as JPEG, at
    its own size even when the pipelines read it decoded smaller; None when it cannot be
    encoded."""
    from edge_agent.sources.jpeg import encode

    image = frame.full_image()
    image = image.copy() if image is frame.data else image
    drawn = draw(image, pipelines)
    jpeg = encode(image, quality)
    if jpeg is None:
        return None
    return Picture(jpeg, image.shape[1], image.shape[0], drawn)


def _detection(image: Image, det: dict[str, Any]) -> None:
    import cv2

    x1, y1, x2, y2 = (int(v) for v in det["box"])
    cv2.rectangle(image, (x1, y1), (x2, y2), BOX_BGR, _LINE)
    label = f"{det.get('label') or det['class_id']} {det['score']:.2f}"
    cv2.putText(image, label, (x1, max(12, y1 - 4)), 0, _FONT_SCALE, BOX_BGR, 1)
    for x, y in det.get("keypoints", []):
        cv2.circle(image, (int(x), int(y)), _KEYPOINT_RADIUS, KEYPOINT_BGR, -1)


def _tint(image: Image, mask: npt.NDArray[Any], geometry: Geometry | None) -> None:
    """The class mask (model-input pixels) mapped onto the frame, each class tinted."""
    import cv2

    height, width = image.shape[:2]
    mask = mask.astype(np.uint8 if mask.max() < 256 else np.uint16)  # what OpenCV maps
    if geometry is None:
        frame_mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    else:
        # Model-input pixel u lands on frame pixel (u - pad) / scale.
        to_frame = np.array(
            [
                [1 / geometry.scale_x, 0, -geometry.pad_x / geometry.scale_x],
                [0, 1 / geometry.scale_y, -geometry.pad_y / geometry.scale_y],
            ]
        )
        frame_mask = cv2.warpAffine(mask, to_frame, (width, height), flags=cv2.INTER_NEAREST)
    tint = np.zeros_like(image)
    for cls in np.unique(frame_mask):
        if cls:
            tint[frame_mask == cls] = MASK_BGR[(int(cls) - 1) % len(MASK_BGR)]
    covered = frame_mask > 0
    blended = cv2.addWeighted(image, 1 - MASK_ALPHA, tint, MASK_ALPHA, 0)
    image[covered] = blended[covered]
