"""What a model is and how to feed it, from the best source there is, part by part:

1. the sidecar manifest (`<model>.json`), as written;
2. the agent config's `[models.NAME]` entries (input, labels, task, decode), set over it;
3. TFLite Model Metadata in the file (normalisation, colour space, labels, thresholds);
4. the tensors themselves (an image, a sensor window or a plain tensor; the task from the
   outputs and ops).

Each part records the rule that chose it, for the load log line and `models inspect`."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from edge_agent.errors import UserError
from edge_agent.runtime.manifest import (
    ImageInput,
    ModelManifest,
    SensorInput,
    TensorInput,
    read_labels,
    safe_file_name,
    safe_name,
)
from edge_agent.runtime.metadata import ModelMetadata, TensorMeta, read_metadata, ultralytics_names
from edge_agent.runtime.model import TensorSpec

log = logging.getLogger(__name__)

_IMAGE_CHANNELS = (1, 3)
# What a float image model gets when nothing says otherwise: the most common convention of
# Keras and TF Hub exports.
DEFAULT_FLOAT_RANGE = (0.0, 1.0)
_VERSION_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-")


@dataclass(frozen=True)
class Description:
    manifest: ModelManifest
    labels: list[str]
    # Part (input, preprocessing, labels, task) -> the rule that chose it.
    rules: dict[str, str] = field(default_factory=dict)
    metadata: ModelMetadata | None = None

    def summary(self) -> str:
        spec = self.manifest.input
        return f"task {self.manifest.task} ({self.rules.get('task', '?')}); input {spec.kind} " + (
            f"({self.rules.get('input', '?')}; {self.rules.get('preprocessing', '?')})"
        )


def describe(
    path: Path,
    content: bytes,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    op_names: Collection[str],
    sidecar: tuple[ModelManifest, list[str]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Description:
    """The model's description; `overrides` is `ModelSettings.overrides()` of its config."""
    overrides = overrides or {}
    rules: dict[str, str] = {}
    metadata: ModelMetadata | None = None
    if sidecar is not None:
        manifest, labels = sidecar
        rules = {
            "input": "sidecar manifest",
            "preprocessing": "sidecar manifest",
            "labels": "sidecar manifest" if labels else "none",
            "task": "sidecar manifest",
        }
    else:
        # Metadata is read only here: a model with a manifest never pays for it.
        metadata = read_metadata(content)
        if metadata.note:
            log.warning("%s: model metadata: %s", path.name, metadata.note)
        normalised = any(k in overrides.get("input", {}) for k in ("range", "mean"))
        manifest, labels = _from_file(
            path, inputs, outputs, op_names, metadata, rules, quiet=normalised
        )
    manifest, labels = _apply_overrides(path, manifest, labels, overrides, rules)
    return Description(manifest, labels, rules, metadata)


def _from_file(
    path: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    op_names: Collection[str],
    metadata: ModelMetadata,
    rules: dict[str, str],
    quiet: bool,
) -> tuple[ModelManifest, list[str]]:
    tensor = inputs[0]
    input_meta = metadata.inputs[0] if len(metadata.inputs) == len(inputs) else None
    spec = _input_from_tensor(path, tensor, input_meta, metadata, rules, quiet)
    labels = _labels_from_metadata(metadata, outputs, rules)
    from edge_agent.runtime.decoders import choose_task

    choice = choose_task(outputs, op_names)
    options = dict(choice.options)
    rules["task"] = f"from the outputs: {choice.rule}"
    threshold = next((m.score_threshold for m in metadata.outputs if m.score_threshold), None)
    if threshold is not None and _takes_option(choice.task, {**options, "score_threshold": 0}):
        options["score_threshold"] = threshold
        rules["task"] += f"; score threshold {threshold:g} from the metadata"
    manifest = ModelManifest.model_validate(
        {
            "name": safe_name(path.stem),
            "version": _version(metadata.version),
            "file": safe_file_name(path.name),
            "task": choice.task,
            "description": metadata.description or metadata.name or "",
            "input": spec.model_dump(),
            "decode": options,
        }
    )
    return manifest, labels


def _input_from_tensor(
    path: Path,
    tensor: TensorSpec,
    meta: TensorMeta | None,
    metadata: ModelMetadata,
    rules: dict[str, str],
    quiet: bool = False,
) -> ImageInput | SensorInput | TensorInput:
    shape = list(tensor.shape)
    layout = image_layout(tensor.shape)
    if layout is None:
        if len(shape) == 3 and shape[0] == 1:
            rules["input"] = f"tensor {shape}: a sensor window of {shape[1]} x {shape[2]}"
            rules["preprocessing"] = (
                "values quantized with the input's own scale and zero point"
                if tensor.quant.is_quantized
                else "values as they come"
            )
            return SensorInput(window=shape[1], channels=shape[2])
        rules["input"] = f"tensor {shape}: neither an image nor a sensor window"
        rules["preprocessing"] = "none: .npy tensors as they are"
        return TensorInput()
    channels = shape[3] if layout == "NHWC" else shape[1]
    rules["input"] = f"tensor {shape} {tensor.dtype}: an image ({layout})"
    fields: dict[str, Any] = {"layout": layout}
    notes: list[str] = []
    color = meta.color if meta is not None else None
    if color is not None and (color == "GRAY") == (channels == 1):
        fields["color"] = color
        notes.append(f"colour {color} from the metadata")
    elif channels == 1:
        fields["color"] = "GRAY"
    else:
        notes.append("colour RGB (the default)")
    if metadata.ultralytics is not None:
        fields["resize"] = "letterbox"
        fields["letterbox_fill"] = _LETTERBOX_GREY
        notes.append("letterbox (an Ultralytics export)")
    normalised = _metadata_normalisation(meta, channels)
    if normalised is not None:
        fields["mean"], fields["std"] = normalised
        notes.insert(0, f"mean {normalised[0]} std {normalised[1]} from the metadata")
    elif tensor.quant.is_quantized:
        low, high = quantized_range(tensor)
        fields["range"] = (low, high)
        notes.insert(
            0,
            f"pixels through the input's own scale {float(tensor.quant.scales[0]):.6g} and "
            f"zero point {int(tensor.quant.zero_points[0])} (range [{low:.4g}, {high:.4g}])",
        )
    elif np.issubdtype(tensor.dtype, np.floating):
        fields["range"] = DEFAULT_FLOAT_RANGE
        notes.insert(0, "float input with nothing else to go on: range [0, 1]")
        if not quiet:  # the config's own normalisation follows
            log.warning(
                "%s: float image input with no manifest or metadata: pixels scaled to [0, 1]; "
                "set [models.NAME.input] range or mean/std if the model wants otherwise",
                path.name,
            )
    rules["preprocessing"] = "; ".join(notes)
    return ImageInput.model_validate(fields)


def _takes_option(task: str, options: dict[str, Any]) -> bool:
    from edge_agent.runtime.decoders import check_options

    try:
        check_options(task, options)
    except UserError:
        return False
    return True


# Ultralytics pads its letterbox with grey 114.
_LETTERBOX_GREY = 114


def image_layout(shape: Sequence[int]) -> str | None:
    """NHWC for [1,H,W,1|3], NCHW for [1,1|3,H,W]; None for anything else."""
    if len(shape) != 4 or shape[0] != 1:
        return None
    if shape[3] in _IMAGE_CHANNELS and min(shape[1], shape[2]) > max(_IMAGE_CHANNELS):
        return "NHWC"
    if shape[1] in _IMAGE_CHANNELS and min(shape[2], shape[3]) > max(_IMAGE_CHANNELS):
        return "NCHW"
    return None


def quantized_range(tensor: TensorSpec) -> tuple[float, float]:
    """The real values an integer input can hold: pixel 0..255 then lands on q = p (uint8)
    or p - 128 (int8), the whole of the range the model was calibrated to."""
    info = np.iinfo(tensor.dtype)
    scale = float(tensor.quant.scales[0])
    zero = int(tensor.quant.zero_points[0])
    # Six digits: float32 scales print as 1.0000000591 otherwise; the pixel table rounds.
    return _short((info.min - zero) * scale), _short((info.max - zero) * scale)


def _short(value: float) -> float:
    return float(f"{value:.6g}")


def _metadata_normalisation(
    meta: TensorMeta | None, channels: int
) -> tuple[list[float], list[float]] | None:
    if meta is None or meta.mean is None or meta.std is None:
        return None
    fits = all(len(v) in (1, channels) for v in (meta.mean, meta.std))
    if not fits or any(s == 0 for s in meta.std):
        return None
    return meta.mean, meta.std


def _labels_from_metadata(
    metadata: ModelMetadata, outputs: Sequence[TensorSpec], rules: dict[str, str]
) -> list[str]:
    """Labels the metadata names for an output, kept only where they fit that output:
    metadata is positional and some files get the order wrong."""
    for position, meta in enumerate(metadata.outputs):
        if meta.label_file is None:
            continue
        labels = metadata.text_file(meta.label_file)
        if not labels:
            continue
        target = _fitting_output(outputs, position, len(labels), meta.label_kind)
        if target is None:
            rules["labels"] = (
                f"none: metadata's {meta.label_file} ({len(labels)}) fits no output, ignored"
            )
            continue
        rules["labels"] = f"metadata: {meta.label_file} ({len(labels)}) for output {target}"
        return labels
    if metadata.ultralytics is not None:
        names = ultralytics_names(metadata.ultralytics)
        if names:
            rules["labels"] = f"Ultralytics metadata.json: {len(names)} names"
            return names
    rules.setdefault("labels", "none: class numbers are reported")
    return []


def _fitting_output(
    outputs: Sequence[TensorSpec], position: int, count: int, kind: str | None
) -> int | None:
    if position >= len(outputs):
        return None
    if kind == "value":  # class ids held as values: nothing in the shape to check
        return position
    shape = outputs[position].shape
    return position if shape and shape[-1] == count else None


def _version(text: str | None) -> str:
    if text and text[0].isalnum() and set(text) <= _VERSION_CHARS and len(text) <= 64:
        return text
    return "0.0.0"


def _apply_overrides(
    path: Path,
    manifest: ModelManifest,
    labels: list[str],
    overrides: Mapping[str, Any],
    rules: dict[str, str],
) -> tuple[ModelManifest, list[str]]:
    """The config's `[models.NAME]` entries set over whatever described the model."""
    update: dict[str, Any] = {}
    if "input" in overrides:
        update["input"] = _merged_input(manifest.input, dict(overrides["input"]))
        keys = ", ".join(sorted(overrides["input"]))
        rules["preprocessing"] = f"config [models.NAME.input] ({keys}) over {rules['input']}"
    if "task" in overrides and overrides["task"] != manifest.task:
        update["task"] = overrides["task"]
        update["decode"] = dict(overrides.get("decode") or {})
        rules["task"] = "config [models.NAME] task"
    elif "decode" in overrides:
        update["decode"] = {**_as_dict(manifest.decode), **overrides["decode"]}
        rules["task"] += "; options from config [models.NAME.decode]"
    if "labels" in overrides:
        labels_file = Path(overrides["labels"])
        if not labels_file.is_absolute():
            labels_file = path.parent / labels_file
        labels = read_labels(labels_file)
        rules["labels"] = f"config [models.NAME] labels: {labels_file.name} ({len(labels)})"
    if not update:
        return manifest, labels
    try:
        merged = ModelManifest.model_validate({**manifest.model_dump(), **update})
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"] if not str(p)[0].isupper())
        raise UserError(f"model {path.name}: config override {where}: {problem['msg']}") from None
    return merged, labels


def _merged_input(spec: BaseModel, overrides: dict[str, Any]) -> Any:
    kind = overrides.get("kind", getattr(spec, "kind", "tensor"))
    base = spec.model_dump() if kind == getattr(spec, "kind", None) else {"kind": kind}
    # A normalisation given in the config replaces the described one whole.
    if "range" in overrides:
        base.pop("mean", None)
        base.pop("std", None)
    if "mean" in overrides or "std" in overrides:
        base.pop("range", None)
    return {**base, **overrides}


def _as_dict(decode: Any) -> dict[str, Any]:
    if isinstance(decode, Mapping):
        return dict(decode)
    if isinstance(decode, BaseModel):
        return decode.model_dump(exclude_none=True)
    return {}
