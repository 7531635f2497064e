"""Turns images and sensor windows into the model's input tensor.

Images: colour order, resize (stretch or letterbox), then one table lookup that does
normalisation and quantization together, straight into the input dtype. A frame decoded at
reduced scale is resized from what it is, with its geometry given against the frame's own
size, so results come out in the frame's pixels either way."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import UserError
from edge_agent.runtime.manifest import ImageInput, SensorInput
from edge_agent.runtime.model import LoadedModel, TensorSpec
from edge_agent.runtime.native_log import native_stderr_to_debug_log

log = logging.getLogger(__name__)

# OpenCV's stubs type most results loosely; a frame is any uint8 HxW(xC) array.
Image = npt.NDArray[Any]


@dataclass(frozen=True)
class Geometry:
    """How model-input pixels map back to source-image pixels: src = (dst - pad) / scale."""

    src_width: int
    src_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        sx = (x - self.pad_x) / self.scale_x
        sy = (y - self.pad_y) / self.scale_y
        return (
            min(max(sx, 0.0), float(self.src_width)),
            min(max(sy, 0.0), float(self.src_height)),
        )


def image_input_size(model: LoadedModel) -> tuple[int, int] | None:
    """The (width, height) an image model's input takes; None for any other model."""
    shape = model.input.sample_shape
    spec = model.manifest.input
    if not isinstance(spec, ImageInput) or len(shape) != 3:
        return None
    height, width = shape[1:] if spec.layout == "NCHW" else shape[:2]
    return int(width), int(height)


class ImagePreprocessor:
    def __init__(self, spec: ImageInput, tensor: TensorSpec) -> None:
        if len(tensor.sample_shape) != 3:
            raise UserError(
                f"model input {tensor.name}: shape {list(tensor.shape)} is not an image "
                f"({spec.layout})"
            )
        self.channels_first = spec.layout == "NCHW"
        if self.channels_first:
            self.channels, self.height, self.width = tensor.sample_shape
        else:
            self.height, self.width, self.channels = tensor.sample_shape
        if self.channels not in (1, 3):
            raise UserError(f"model input {tensor.name}: {self.channels} channels, expected 1 or 3")
        if (spec.color == "GRAY") != (self.channels == 1):
            raise UserError(
                f"manifest input.color: {spec.color} does not fit {self.channels} channel(s)"
            )
        self.spec = spec
        gain, offset = spec.affine(self.channels)
        lut = tensor.quant.pixel_lut(gain, offset)  # (256, channels)
        # cv2.LUT takes a 1x256 table with the image's channel count.
        self._lut = np.ascontiguousarray(lut.reshape(1, 256, self.channels))
        self._fill = spec.letterbox_fill

    def decode_file(self, path: str) -> Image:
        import cv2

        flags = cv2.IMREAD_GRAYSCALE if self.channels == 1 else cv2.IMREAD_COLOR
        with native_stderr_to_debug_log(log):
            image = cv2.imread(path, flags)
        if image is None:
            raise UserError(f"{path}: cannot decode image (not an image, or truncated)")
        return np.asarray(image, dtype=np.uint8)

    def __call__(
        self, frame: Image, full_size: tuple[int, int] | None = None
    ) -> tuple[npt.NDArray[Any], Geometry]:
        """A BGR (or gray) uint8 frame to one input sample (no batch dimension).
        `full_size`: the frame's own (width, height) when `frame` was decoded smaller; the
        geometry maps to it."""
        import cv2

        gray_in = frame.ndim == 2 or frame.shape[2] == 1
        if self.channels == 1 and not gray_in:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)  # before resizing: a third the work
        src_w, src_h = full_size or (frame.shape[1], frame.shape[0])
        if self.spec.resize == "letterbox":
            resized, geometry = self._letterbox(frame, src_w, src_h)
        else:
            size = (self.width, self.height)
            resized = cv2.resize(frame, size, interpolation=self._interp(frame, *size))
            geometry = Geometry(src_w, src_h, self.width / src_w, self.height / src_h, 0.0, 0.0)
        if self.channels == 3:
            if gray_in:
                resized = cv2.cvtColor(resized, cv2.COLOR_GRAY2BGR)
            if self.spec.color == "RGB":
                resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)  # after resizing: smaller
        resized = resized.reshape(self.height, self.width, self.channels)
        sample = cv2.LUT(resized, self._lut).reshape(self.height, self.width, self.channels)
        if self.channels_first:
            sample = np.ascontiguousarray(sample.transpose(2, 0, 1))
        return sample, geometry

    def _interp(self, image: Image, width: int, height: int) -> int:
        choice = self.spec.interpolation
        if choice == "auto":
            fx, fy = image.shape[1] / width, image.shape[0] / height
            whole = fx >= 1 and fy >= 1 and fx.is_integer() and fy.is_integer()
            choice = "area" if whole and (fx > 1 or fy > 1) else "linear"
        return _interpolation(choice)

    def _letterbox(self, image: Image, src_w: int, src_h: int) -> tuple[Image, Geometry]:
        """Fitted to the frame's own size (src_w x src_h), from `image` (it or smaller)."""
        import cv2

        scale = min(self.width / src_w, self.height / src_h)
        new_w = max(1, round(src_w * scale))
        new_h = max(1, round(src_h * scale))
        pad_x = (self.width - new_w) // 2
        pad_y = (self.height - new_h) // 2
        resized = cv2.resize(image, (new_w, new_h), interpolation=self._interp(image, new_w, new_h))
        canvas = cv2.copyMakeBorder(
            resized,
            pad_y,
            self.height - new_h - pad_y,
            pad_x,
            self.width - new_w - pad_x,
            cv2.BORDER_CONSTANT,
            value=(self._fill,) * 3,
        )
        geometry = Geometry(src_w, src_h, new_w / src_w, new_h / src_h, float(pad_x), float(pad_y))
        return canvas, geometry


def _interpolation(choice: str) -> int:
    import cv2

    return {
        "area": int(cv2.INTER_AREA),
        "linear": int(cv2.INTER_LINEAR),
        "nearest": int(cv2.INTER_NEAREST),
    }[choice]


class SensorPreprocessor:
    """A (window, channels) float array to one quantized input sample."""

    def __init__(self, spec: SensorInput, tensor: TensorSpec) -> None:
        expected = (spec.window, spec.channels)
        if int(np.prod(tensor.sample_shape)) != spec.window * spec.channels:
            raise UserError(
                f"manifest input: window {spec.window} x {spec.channels} channels does not fit "
                f"model input {tensor.name} {list(tensor.shape)}"
            )
        self.expected = expected
        self.tensor = tensor
        self.mean = None if spec.mean is None else np.asarray(spec.mean, np.float32)
        self.std = None if spec.std is None else np.asarray(spec.std, np.float32)

    def __call__(self, window: npt.NDArray[np.floating[Any]]) -> npt.NDArray[Any]:
        if window.shape != self.expected:
            raise UserError(
                f"sensor window: shape {list(window.shape)}, expected {list(self.expected)}"
            )
        x = window.astype(np.float32, copy=False)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return self.tensor.quant.quantize(x).reshape(self.tensor.sample_shape)
