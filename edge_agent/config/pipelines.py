"""The settings of a pipeline: a source into a model, with its decoder options, change gate,
result cache and escalation."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from edge_agent.config.section import Name, Section
from edge_agent.runtime.decoders.options import (
    AnomalyThreshold,
    IouThreshold,
    MaxDetections,
    ScoreThreshold,
    TopK,
)


class DecodeOverrides(Section):
    """Options of the pipeline's decoder over its model's manifest: any option that
    decoder's Config has (docs/decoders.md), checked when the model is loaded. The options
    several built-in decoders share are checked here already."""

    model_config = ConfigDict(extra="allow")

    top_k: TopK | None = Field(None, description="classification: classes reported.")
    score_threshold: ScoreThreshold | None = Field(
        None, description="detection, yolo, ssd_anchors: lowest score reported."
    )
    max_detections: MaxDetections | None = Field(
        None, description="detection, yolo, ssd_anchors: most boxes per frame."
    )
    iou_threshold: IouThreshold | None = Field(
        None, description="yolo, ssd_anchors: overlap above which NMS drops a box."
    )
    threshold: AnomalyThreshold | None = Field(
        None, description="anomaly: a score above this is anomalous."
    )


class GateSettings(Section):
    enabled: bool = Field(False, description="Skip frames too like the last inferred one.")
    threshold: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Mean absolute difference (0..1) on a small gray copy below which a "
        "frame counts as unchanged.",
    )
    size: int = Field(32, ge=4, le=256, description="Side of the gray copy compared.")
    max_skip_s: float = Field(10.0, gt=0, description="Infer at least this often, changed or not.")


class CacheSettings(Section):
    enabled: bool = Field(False, description="Reuse the result of an identical input.")
    size: int = Field(256, ge=1, le=100_000, description="Results kept, least recent dropped.")


class EscalateSettings(Section):
    """Which results also go to a bigger model elsewhere (docs/escalation.md). A result is
    escalated when its top score lies in [min_score, max_score] and its top label is in
    `classes` (empty: any), or, outside that, by the audit sample; all within the budget."""

    enabled: bool = Field(False, description="Send uncertain results to an escalation server.")
    min_score: float = Field(0.3, ge=0, le=1, description="Lower end of the top-1 score band.")
    max_score: float = Field(0.6, ge=0, le=1, description="Upper end of the top-1 score band.")
    classes: list[str] = Field(
        default_factory=list, description="Top-1 labels escalated in the band; empty: any label."
    )
    sample_rate: float = Field(
        0.0, ge=0, le=1, description="Share of the other results sent too, for audit."
    )
    max_per_minute: int = Field(60, ge=0, description="Requests per minute at most (budget).")
    max_bytes_per_hour: int = Field(
        50_000_000, ge=0, description="Request bytes per hour at most (budget)."
    )
    send: Literal["jpeg", "crop", "tensor"] = Field(
        "jpeg",
        description="What goes: the frame as a JPEG; crop: the top detection's box (with "
        "crop_margin around it) as a JPEG, the whole frame for a result without a box; or "
        "the model's input tensor.",
    )
    crop_margin: float = Field(
        0.1, ge=0, le=1, description="crop: room around the box, as a share of its size."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of a sent frame.")
    timeout_s: float = Field(
        10.0, gt=0, description="A sent request with no answer after this is given up."
    )
    max_answer_bytes: int = Field(
        65536, gt=0, description="Larger answers are dropped, with one log line."
    )
    queue: int = Field(
        64, ge=1, le=10_000, description="Offers waiting to be encoded; more are dropped."
    )

    @model_validator(mode="after")
    def _band(self) -> EscalateSettings:
        if self.min_score > self.max_score:
            raise ValueError("min_score is above max_score")
        return self


class PipelineSettings(Section):
    source: Name = Field(description="Name of a [sources.NAME] entry.")
    model: Name = Field(description="Name of a [models.NAME] entry.")
    enabled: bool = Field(True, description="A disabled pipeline is configured but not run.")
    queue_size: int = Field(
        2,
        ge=1,
        le=1000,
        description="Frames waiting for inference; when full, on_full says what happens.",
    )
    on_full: Literal["auto", "drop_oldest", "wait"] = Field(
        "auto",
        description="When queue_size frames wait: drop_oldest keeps latency bounded (a live "
        "camera wants the newest frame); wait holds the source until there is room, so "
        "every frame gets a result (a recording wants all of them). auto: wait for "
        "recorded input (a video file, an image folder, a file of lines not followed), "
        "drop_oldest for the rest.",
    )
    decode: DecodeOverrides = Field(
        default_factory=DecodeOverrides,
        description="Decoder options over the manifest's (a table of the decoder's options).",
    )
    gate: GateSettings = Field(default_factory=GateSettings, description="Change gating.")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Result cache.")
    escalate: EscalateSettings = Field(
        default_factory=EscalateSettings, description="Escalation to a bigger model; off."
    )
