"""Options several decoders share, defined once: the decoders' Configs use them, and the
agent config checks them in `pipelines.NAME.decode` before any model is loaded."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

TopK = Annotated[int, Field(gt=0, description="How many classes to report, best first.")]
ScoreThreshold = Annotated[float, Field(ge=0, le=1, description="Lowest score reported (0..1).")]
MaxDetections = Annotated[int, Field(gt=0, description="Most detections reported per frame.")]
IouThreshold = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        description="Non-maximum suppression: a box overlapping a better one of the same "
        "class by more than this IoU is dropped (or merged, for weighted NMS).",
    ),
]
AnomalyThreshold = Annotated[
    float, Field(description="A score above this is reported as anomalous.")
]

DEFAULT_TOP_K = 5
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_MAX_DETECTIONS = 20
DEFAULT_IOU_THRESHOLD = 0.45
