"""`[models.NAME]`: a model file, how it runs, and what the config sets over the model's
own description (runtime/describe.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.config.section import Section
from edge_agent.runtime.delegates import DelegateEntry


class BatchSettings(Section):
    max_batch: int = Field(
        1, ge=1, le=64, description="Most frames per invoke, across the pipelines of a model."
    )
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="Longest wait for a batch to fill after its first frame."
    )


class InputOverrides(Section):
    """How the model's input is fed, where it differs from what the manifest, the model's
    metadata or its tensors say. Unset fields keep what those say."""

    kind: Literal["image", "sensor", "tensor"] | None = Field(
        None, description="image: frames and image files; sensor: windows; tensor: .npy as is."
    )
    layout: Literal["NHWC", "NCHW"] | None = Field(
        None, description="Image tensor layout: NHWC [1,H,W,C] or NCHW [1,C,H,W]."
    )
    resize: Literal["stretch", "letterbox"] | None = Field(None, description="Resize mode.")
    interpolation: Literal["auto", "area", "linear", "nearest"] | None = Field(
        None, description="Resize filter."
    )
    letterbox_fill: int | None = Field(None, ge=0, le=255, description="Padding value.")
    color: Literal["RGB", "BGR", "GRAY"] | None = Field(None, description="Channel order.")
    range: tuple[float, float] | None = Field(
        None, description="Image: pixel 0 maps to the first value, 255 to the second."
    )
    mean: list[float] | None = Field(
        None, description="Per-channel mean (image: on the 0..255 scale); goes with std."
    )
    std: list[float] | None = Field(None, description="Per-channel std; goes with mean.")
    window: int | None = Field(None, gt=0, description="Sensor: samples per window.")
    channels: int | None = Field(None, gt=0, description="Sensor: values per sample.")

    @model_validator(mode="after")
    def _one_normalisation(self) -> InputOverrides:
        if self.range is not None and (self.mean is not None or self.std is not None):
            raise ValueError("give either range or mean/std, not both")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together")
        return self


class ModelSettings(Section):
    path: Annotated[Path, LOCAL_ONLY] = Field(
        description="The .tflite file; its manifest sits beside it."
    )
    threads: int | None = Field(
        None, ge=1, le=64, description="CPU threads for this model; empty: runtime.threads."
    )
    delegates: list[DelegateEntry] | None = Field(
        None, description="Delegate chain for this model; empty: runtime.delegates."
    )
    batch: BatchSettings = Field(default_factory=BatchSettings, description="Batching.")
    input: InputOverrides = Field(
        default_factory=InputOverrides,
        description="Overrides of how the input is fed (manifest, metadata or inference).",
    )
    # Local only: a decoder is code that runs on the device (module:Class imports it).
    task: Annotated[str | None, LOCAL_ONLY] = Field(
        None,
        description="Decoder: a built-in name (classification, detection, ...) or "
        "module:Class; empty: the manifest's, else chosen from the outputs.",
    )
    decode: dict[str, Any] | None = Field(
        None, description="Options of the decoder, checked by its own config at load."
    )
    labels: Annotated[Path | None, LOCAL_ONLY] = Field(
        None,
        description="Labels file, one a line; a relative path is taken from the model's "
        "folder; empty: the manifest's or the model's own.",
    )
    replicas: int = Field(
        1,
        ge=1,
        le=16,
        description="Interpreters of this model, each on its own thread, taking frames from "
        "one queue: more throughput where one interpreter cannot use the cores, at the cost "
        "of memory and of results finishing out of order by a frame or so.",
    )

    def overrides(self) -> dict[str, Any]:
        """What this entry sets over the model's own description (see runtime.describe)."""
        found: dict[str, Any] = {}
        input_overrides = self.input.model_dump(exclude_none=True)
        if input_overrides:
            found["input"] = input_overrides
        for key in ("task", "decode", "labels"):
            if getattr(self, key) is not None:
                found[key] = getattr(self, key)
        return found
