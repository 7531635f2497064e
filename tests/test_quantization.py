from __future__ import annotations

import numpy as np
import pytest

from edge_agent.runtime.quantization import QuantParams

pytestmark = pytest.mark.runtime


def params(dtype: type, scales: list[float], zero_points: list[int], axis: int = 0) -> QuantParams:
    detail = {
        "dtype": dtype,
        "quantization": (0.0, 0),
        "quantization_parameters": {
            "scales": np.asarray(scales, np.float32),
            "zero_points": np.asarray(zero_points, np.int32),
            "quantized_dimension": axis,
        },
    }
    return QuantParams.from_detail(detail)


def test_quantize_rounds_then_clips_instead_of_wrapping() -> None:
    q = params(np.int8, [0.01], [0])
    # 1.2 / 0.01 = 120 fits; 1.8 / 0.01 = 180 would wrap to -76 with a bare cast.
    assert q.quantize([1.2, 1.8, -5.0, 0.004, 0.006]).tolist() == [120, 127, -128, 0, 1]


def test_uint8_and_int8_zero_points() -> None:
    u = params(np.uint8, [1 / 255], [0])
    i = params(np.int8, [1 / 255], [-128])
    x = np.array([0.0, 0.6, 1.0], np.float32)
    assert u.quantize(x).tolist() == [0, 153, 255]
    assert i.quantize(x).tolist() == [-128, 25, 127]
    np.testing.assert_allclose(i.dequantize(i.quantize(x)), x, atol=0.5 / 255 + 1e-6)


def test_per_channel_parameters_apply_along_their_axis() -> None:
    q = params(np.int8, [0.1, 0.2], [0, 10], axis=1)
    x = np.array([[1.0, 1.0], [-1.0, -1.0]], np.float32)
    assert q.quantize(x).tolist() == [[10, 15], [-10, 5]]
    np.testing.assert_allclose(q.dequantize(q.quantize(x)), x, atol=1e-6)


def test_legacy_tuple_is_read_when_parameters_are_missing() -> None:
    detail = {"dtype": np.uint8, "quantization": (0.5, 3), "quantization_parameters": {}}
    q = QuantParams.from_detail(detail)
    assert q.dequantize(np.array([3, 5], np.uint8)).tolist() == [0.0, 1.0]


def test_float_tensor_passes_through() -> None:
    q = params(np.float32, [], [])
    assert not q.is_quantized
    assert q.quantize([1.5]).dtype == np.float32


def test_pixel_table_equals_normalise_then_quantize() -> None:
    q = params(np.int8, [0.0078125], [-1])
    gain, offset = [2 / 255] * 3, [-1.0] * 3
    lut = q.pixel_lut(gain, offset)
    pixels = np.arange(256, dtype=np.float32)
    expected = q.quantize(pixels * gain[0] + offset[0])
    assert lut.shape == (256, 3)
    assert (lut[:, 0] == expected).all()
