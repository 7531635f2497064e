"""A loaded model with its preprocessing and decoder: inputs in, results out."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import UserError
from edge_agent.runtime.decoders import Decoder, check_options, make_decoder
from edge_agent.runtime.manifest import ImageInput, SensorInput
from edge_agent.runtime.model import LoadedModel
from edge_agent.runtime.preprocess import Geometry, ImagePreprocessor, SensorPreprocessor

log = logging.getLogger(__name__)

# Models already said to run as raw: once per model file, however many pipelines use it.
_said_raw: set[str] = set()


@dataclass(frozen=True)
class Prediction:
    result: dict[str, Any]
    outputs: dict[str, npt.NDArray[np.float32]]


class Predictor:
    """Preprocessing and decoding for one loaded model. `overrides` are decoder options
    over the manifest's; `where` names them in errors (a config key)."""

    def __init__(
        self,
        model: LoadedModel,
        overrides: Mapping[str, Any] | None = None,
        where: str = "decode",
    ) -> None:
        self.model = model
        spec = model.manifest.input
        self.image = ImagePreprocessor(spec, model.input) if isinstance(spec, ImageInput) else None
        self.sensor = (
            SensorPreprocessor(spec, model.input) if isinstance(spec, SensorInput) else None
        )
        shape = model.input.sample_shape
        if self.image is not None:
            input_size = (self.image.width, self.image.height)
        else:
            input_size = (shape[1], shape[0]) if len(shape) == 3 else (1, 1)
        manifest = model.manifest
        # The manifest's options alone first, so a bad one is blamed on the manifest.
        check_options(manifest.task, manifest.decode, f"model {model.info.name}: decode")
        self.decoder: Decoder = make_decoder(
            manifest.task,
            {**manifest.decode, **(overrides or {})},
            model.labels,
            input_size,
            model.outputs,
            where=where,
        )
        rule = model.rules.get("task", "")
        if manifest.task == "raw" and ": raw" in rule and model.info.sha256 not in _said_raw:
            _said_raw.add(model.info.sha256)
            log.warning(
                "model %s: %s; each result carries every output, dequantized, by name "
                "(give task and decode options in a manifest or [models.NAME] to decode them)",
                model.info.name,
                rule,
            )

    def load_input(self, path: Path) -> tuple[npt.NDArray[Any], Geometry | None]:
        """One input sample from a file: a `.npy` tensor, else an image."""
        if path.suffix.lower() == ".npy":
            return self.tensor_sample(load_npy(path), str(path)), None
        if self.image is None:
            raise UserError(
                f"{path}: model {self.model.info.name} takes {self.model.manifest.input.kind} "
                "input; give a .npy tensor"
            )
        if not path.is_file():
            raise UserError(f"{path}: input file not found")
        return self.image(self.image.decode_file(str(path)))

    def prepare(
        self, data: npt.NDArray[Any], full_size: tuple[int, int] | None = None
    ) -> tuple[npt.NDArray[Any], Geometry | None]:
        """One input sample from an in-memory frame: a uint8 image (BGR or gray) for image
        models, a (window, channels) array for sensor models, else a tensor. `full_size`:
        an image decoded smaller than the frame is, the frame's (width, height)."""
        if self.image is not None and data.dtype == np.uint8:
            return self.image(data, full_size)
        if self.sensor is not None:
            return self.sensor(data), None
        return self.tensor_sample(data, "frame"), None

    def tensor_sample(self, array: npt.NDArray[Any], source: str) -> npt.NDArray[Any]:
        """A float tensor is quantized with the model's input parameters; an integer one
        must already be in the model's dtype and is passed as it is."""
        spec = self.model.input
        shape = spec.sample_shape
        if array.shape not in (shape, (1, *shape)):
            raise UserError(
                f"{source}: shape {list(array.shape)} does not fit model input {list(spec.shape)}"
            )
        array = array.reshape(shape)
        if np.issubdtype(array.dtype, np.floating):
            return spec.quant.quantize(array)
        if array.dtype != spec.dtype:
            raise UserError(
                f"{source}: dtype {array.dtype} does not fit model input dtype {spec.dtype} "
                "(give float values to have them quantized)"
            )
        return array

    def predict(
        self, samples: list[npt.NDArray[Any]], geometries: list[Geometry | None]
    ) -> list[Prediction]:
        raw = self.model.run(np.stack(samples))
        floats = self.model.dequantize(raw)
        names = [o.name for o in self.model.outputs]
        predictions = []
        for i, geometry in enumerate(geometries):
            per_input = [out[i] for out in floats]
            predictions.append(
                Prediction(
                    result=self.decoder(per_input, geometry),
                    outputs=dict(zip(names, per_input, strict=True)),
                )
            )
        return predictions


def load_npy(path: Path) -> npt.NDArray[Any]:
    """One numeric array from a .npy file; UserError naming the file otherwise."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: input file not found") from None
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise UserError(f"{path}: not a single .npy array")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UserError(f"{path}: dtype {array.dtype} is not numeric")
    return array
