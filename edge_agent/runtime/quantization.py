"""Affine quantization: real = (q - zero_point) * scale, per tensor or per channel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class QuantParams:
    """Quantization of one tensor. `scales` is empty for a float tensor."""

    dtype: np.dtype[Any]
    scales: npt.NDArray[np.float32]
    zero_points: npt.NDArray[np.int64]
    axis: int

    @property
    def is_quantized(self) -> bool:
        return self.scales.size > 0 and np.issubdtype(self.dtype, np.integer)

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> QuantParams:
        """From an interpreter tensor detail; reads `quantization_parameters`, which is
        per-channel aware (the legacy `quantization` tuple reads (0.0, 0) for those)."""
        params = detail.get("quantization_parameters") or {}
        scales = np.asarray(params.get("scales", []), dtype=np.float32)
        zero_points = np.asarray(params.get("zero_points", []), dtype=np.int64)
        if scales.size == 0 and detail.get("quantization", (0.0, 0))[0]:
            scale, zero_point = detail["quantization"]
            scales = np.asarray([scale], dtype=np.float32)
            zero_points = np.asarray([zero_point], dtype=np.int64)
        return cls(
            dtype=np.dtype(detail["dtype"]),
            scales=scales,
            zero_points=zero_points,
            axis=int(params.get("quantized_dimension", 0)),
        )

    def _broadcast(self, ndim: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        if self.scales.size == 1:
            return self.scales, self.zero_points
        shape = [1] * ndim
        shape[self.axis] = self.scales.size
        return self.scales.reshape(shape), self.zero_points.reshape(shape)

    def quantize(self, real: npt.ArrayLike) -> npt.NDArray[Any]:
        """Round, then clip to the dtype's range: a bare cast would wrap (1.2 -> -77)."""
        x = np.asarray(real, dtype=np.float32)
        if not self.is_quantized:
            return x.astype(self.dtype, copy=False)
        scales, zero_points = self._broadcast(x.ndim)
        info = np.iinfo(self.dtype)
        q = np.round(x / scales) + zero_points
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        if not self.is_quantized:
            return q.astype(np.float32, copy=False)
        # float32 in place: this runs on every output of every frame.
        real = q.astype(np.float32)
        if self.scales.size == 1:
            real -= float(self.zero_points[0])
            real *= float(self.scales[0])
            return real
        scales, zero_points = self._broadcast(q.ndim)
        real -= zero_points.astype(np.float32)
        real *= scales
        return real

    def pixel_lut(self, gain: npt.ArrayLike, offset: npt.ArrayLike) -> npt.NDArray[Any]:
        """A 256-entry table per channel mapping a uint8 pixel p to the model's input value
        for `gain * p + offset`. One table lookup then replaces normalise-and-quantize."""
        gain_c = np.atleast_1d(np.asarray(gain, dtype=np.float32))
        offset_c = np.atleast_1d(np.asarray(offset, dtype=np.float32))
        pixels = np.arange(256, dtype=np.float32)[:, None]
        real = pixels * gain_c[None, :] + offset_c[None, :]  # (256, channels)
        if not self.is_quantized:
            table: npt.NDArray[Any] = real.astype(self.dtype)
            return table
        info = np.iinfo(self.dtype)
        q = np.round(real / self.scales[0]) + self.zero_points[0]
        quantized: npt.NDArray[Any] = np.clip(q, info.min, info.max).astype(self.dtype)
        return quantized
