"""The manifest shipped next to a model (`<model>.json`): what it is, what it eats,
and how to read what it says."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import UserError, validation_lines
from edge_agent.json_body import BodyError, read_object
from edge_agent.runtime.delegates.litert_npu import Vendor

# A model's manifest is a few hundred bytes, some tens of kB with its labels inline (the
# 1,000 ImageNet classes take about 20 kB): anything far larger is not one.
MAX_MODEL_MANIFEST_BYTES = 1024 * 1024

# A decoder: a name registered in the entry-point group edge_agent.decoders (the built-ins
# are: classification, detection, yolo, ssd_anchors, segmentation, anomaly, regression,
# raw) or a plugin's module:Class.
Task = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_]*)?$",
        description="Decoder of the outputs: a registered name or module:Class.",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInput(_Strict):
    """Camera frames and image files. Pixels 0..255 map to `range`, or to (p - mean) / std."""

    kind: Literal["image"] = "image"
    layout: Literal["NHWC", "NCHW"] = Field(
        "NHWC",
        description="NHWC: [1,H,W,C] (TFLite's own); NCHW: [1,C,H,W] (onnx2tf and PyTorch "
        "exports), given the frame transposed.",
    )
    color: Literal["RGB", "BGR", "GRAY"] = Field(
        "RGB", description="Channel order the model wants."
    )
    resize: Literal["stretch", "letterbox"] = Field(
        "stretch", description="stretch: ignore aspect ratio; letterbox: keep it and pad."
    )
    letterbox_fill: int = Field(0, ge=0, le=255, description="Pixel value of the padding.")
    interpolation: Literal["auto", "area", "linear", "nearest"] = Field(
        "auto",
        description="Resize filter. auto: area for whole-number shrink factors (OpenCV has a "
        "fast path for them), else linear, which costs a tenth of area at 640x480 -> 224.",
    )
    range: tuple[float, float] | None = Field(
        None, description="Pixel 0 maps to the first value, 255 to the second."
    )
    mean: list[float] | None = Field(None, description="Per-channel mean on the 0..255 scale.")
    std: list[float] | None = Field(None, description="Per-channel std on the 0..255 scale.")

    @model_validator(mode="after")
    def _one_normalisation(self) -> ImageInput:
        if self.range is not None and (self.mean is not None or self.std is not None):
            raise ValueError("give either range or mean/std, not both")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError("std must not be 0")
        return self

    def affine(self, channels: int) -> tuple[list[float], list[float]]:
        """Per-channel gain and offset taking a 0..255 pixel to the model's float value."""
        if self.mean is not None and self.std is not None:
            mean = _per_channel(self.mean, channels, "mean")
            std = _per_channel(self.std, channels, "std")
            return [1.0 / s for s in std], [-m / s for m, s in zip(mean, std, strict=True)]
        lo, hi = self.range if self.range is not None else (0.0, 255.0)
        return [(hi - lo) / 255.0] * channels, [lo] * channels


def _per_channel(values: list[float], channels: int, what: str) -> list[float]:
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise UserError(f"manifest input.{what}: {len(values)} values for {channels} channels")
    return values


class SensorInput(_Strict):
    """Windows of `window` samples by `channels` values."""

    kind: Literal["sensor"] = "sensor"
    window: int = Field(gt=0, description="Samples per window.")
    channels: int = Field(gt=0, description="Values per sample.")
    mean: list[float] | None = Field(None, description="Per-channel mean subtracted first.")
    std: list[float] | None = Field(None, description="Per-channel std divided by next.")


class TensorInput(_Strict):
    """Tensors given as they are (`.npy`)."""

    kind: Literal["tensor"] = "tensor"


InputSpec = Annotated[ImageInput | SensorInput | TensorInput, Field(discriminator="kind")]


# Files a manifest names sit beside it: a name, never a path, so a manifest that came with
# an update cannot point the agent at another file on the device.
FileName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")]


class CompiledFor(_Strict):
    """The NPU a model was compiled for ahead of time: only that vendor's dispatch library
    runs it, so only a `litert_npu` entry of that vendor is tried."""

    vendor: Vendor = Field(description="Whose NPU: qualcomm, mediatek, intel, google_tensor.")
    soc: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.+-]{0,64}$",
        description="The SoC it was compiled for (e.g. SM8650), as the vendor's compiler names it.",
    )

    def __str__(self) -> str:
        return f"the {self.vendor} NPU" + (f" ({self.soc})" if self.soc else "")


class ModelManifest(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    version: str = Field("0.0.0", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
    file: FileName = Field(description="Model file, beside the manifest.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    task: Task = "raw"
    description: str = ""
    input: InputSpec = Field(default_factory=TensorInput)
    labels: list[str] | FileName | None = None
    cpu_twin: FileName | None = Field(
        None, description="CPU-only model beside this one, to run when this one cannot."
    )
    compiled_for: CompiledFor | None = Field(
        None,
        description="The NPU this file was compiled for ahead of time; absent: a plain .tflite "
        "any entry may run.",
    )
    # null reads as "the defaults", as people write it by hand. The decoder's own Config
    # checks these options when the model is loaded.
    decode: Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)] = Field(
        default_factory=dict, description="Options of the task's decoder."
    )


def manifest_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def load_manifest(model_path: Path) -> tuple[ModelManifest, list[str]]:
    """The model's manifest and labels; a bare model gets a `raw` manifest of its own."""
    sidecar = read_sidecar(model_path)
    if sidecar is None:
        return bare_manifest(model_path), []
    return sidecar


def bare_manifest(model_path: Path) -> ModelManifest:
    """What is known of a model with no manifest before its file is read."""
    return ModelManifest(name=safe_name(model_path.stem), file=safe_file_name(model_path.name))


def safe_file_name(name: str) -> str:
    """`name` as a manifest may spell it (a file beside it): other characters become _."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.+-") else "_" for c in name)
    return ("_" + cleaned if cleaned[:1] in ".+-" else cleaned)[:128] or "model"


def read_sidecar(model_path: Path) -> tuple[ModelManifest, list[str]] | None:
    """The manifest beside the model and its labels, or None when there is none."""
    path = manifest_path(model_path)
    if not path.exists():
        return None
    try:
        # It may have come with an update: parsed as strictly as anything from outside.
        manifest = ModelManifest.model_validate(read_object(path, MAX_MODEL_MANIFEST_BYTES))
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except BodyError as exc:
        raise UserError(str(exc)) from None
    except ValidationError as exc:
        raise UserError(validation_lines(exc, str(path))[0]) from None
    return manifest, _labels(manifest, path.parent)


def _labels(manifest: ModelManifest, folder: Path) -> list[str]:
    if isinstance(manifest.labels, list):
        return manifest.labels
    if isinstance(manifest.labels, str):
        return read_labels(folder / manifest.labels)
    return []


def read_labels(labels_file: Path) -> list[str]:
    """One label a line; blank lines skipped."""
    try:
        return [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise UserError(f"{labels_file}: cannot read labels: {exc.strerror}") from None


def safe_name(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in stem.lower())
    return cleaned[:64] or "model"


def verify_sha256(content: bytes, manifest: ModelManifest, model_path: Path) -> str:
    """The file's digest; refuses a file that does not match what its manifest promises."""
    digest = hashlib.sha256(content).hexdigest()
    if manifest.sha256 and manifest.sha256 != digest:
        raise UserError(
            f"{model_path}: sha256 {digest[:12]}... does not match its manifest "
            f"({manifest.sha256[:12]}...): the file was changed or is corrupt"
        )
    return digest
