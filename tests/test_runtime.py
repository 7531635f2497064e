"""The runtime against the raw interpreter of the same package, on the shipped models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_agent.runtime.backend import Backend
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.predictor import Predictor
from tests.conftest import raw_interpreter

pytestmark = pytest.mark.runtime

INT8_MODELS = [
    "mobilenet_v2_int8.tflite",
    "digits_int8.tflite",
    "sensor_anomaly_int8.tflite",
    "detector_int8.tflite",
]


@pytest.mark.parametrize("name", INT8_MODELS)
def test_outputs_equal_the_raw_interpreter_bit_for_bit(
    backend: Backend, models: Path, name: str
) -> None:
    model = load_model(models / name, backend, threads=2)
    reference = raw_interpreter(backend, models / name)
    rng = np.random.default_rng(7)
    spec = model.input
    for _ in range(3):
        info = np.iinfo(spec.dtype)
        x = rng.integers(info.min, info.max, size=spec.shape, endpoint=True).astype(spec.dtype)
        ours = model.run(x)
        reference.set_tensor(reference.get_input_details()[0]["index"], x)
        reference.invoke()
        for out, detail in zip(ours, reference.get_output_details(), strict=True):
            expected = reference.get_tensor(detail["index"])
            assert out.dtype == expected.dtype
            assert np.array_equal(out, expected), f"{name}: {detail['name']} differs"


def test_float_inputs_are_quantized_with_the_models_own_parameters(
    backend: Backend, models: Path
) -> None:
    model = load_model(models / "digits_int8.tflite", backend)
    predictor = Predictor(model)
    data = np.load(models / "data" / "digits_test.npz")
    x = data["x"][0]
    sample = predictor.tensor_sample(x, "x")
    scale = model.input.quant.scales[0]
    zero_point = model.input.quant.zero_points[0]
    expected = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
    assert sample.dtype == np.int8
    assert np.array_equal(sample, expected)


def test_int8_accuracy_on_the_held_out_split_is_within_one_point_of_float(
    backend: Backend, models: Path
) -> None:
    data = np.load(models / "data" / "digits_test.npz")
    x, y = data["x"], data["y"]
    accuracy = {}
    for name in ("digits_float.tflite", "digits_int8.tflite"):
        predictor = Predictor(load_model(models / name, backend))
        samples = [predictor.tensor_sample(sample, name) for sample in x]
        predictions = predictor.predict(samples, [None] * len(samples))
        guessed = np.array([p.result["top"][0]["index"] for p in predictions])
        accuracy[name] = float((guessed == y).mean())
    assert accuracy["digits_float.tflite"] > 0.9
    assert accuracy["digits_int8.tflite"] >= accuracy["digits_float.tflite"] - 0.01


def test_a_batch_gives_the_same_results_as_one_by_one(backend: Backend, models: Path) -> None:
    """MobileNet's batch dimension resizes (one invoke); digits' is fixed (a loop)."""
    for name in ("mobilenet_v2_int8.tflite", "digits_int8.tflite"):
        model = load_model(models / name, backend)
        rng = np.random.default_rng(3)
        shape = (4, *model.input.sample_shape)
        batch = rng.integers(-128, 127, size=shape, endpoint=True).astype(np.int8)
        together = model.run(batch)
        alone = [model.run(batch[i : i + 1]) for i in range(4)]
        for k in range(len(together)):
            assert together[k].shape[0] == 4
            stacked = np.concatenate([a[k] for a in alone])
            assert np.array_equal(together[k], stacked), name
    assert load_model(models / "mobilenet_v2_int8.tflite", backend).input.dynamic_batch
    assert not load_model(models / "digits_int8.tflite", backend).input.dynamic_batch


def test_sample_images_decode_to_their_digit(backend: Backend, models: Path) -> None:
    predictor = Predictor(load_model(models / "digits_int8.tflite", backend))
    for image in sorted((models / "samples").glob("digit_*.png")):
        sample, geometry = predictor.load_input(image)
        [prediction] = predictor.predict([sample], [geometry])
        assert prediction.result["top"][0]["label"] == image.stem.split("_")[1]


def test_anomaly_model_flags_anomalous_windows(backend: Backend, models: Path) -> None:
    predictor = Predictor(load_model(models / "sensor_anomaly_int8.tflite", backend))
    assert predictor.sensor is not None
    windows = np.load(models / "data" / "sensor_windows.npz")
    for kind, expected in (("normal", False), ("anomalous", True)):
        samples = [predictor.sensor(w) for w in windows[kind]]
        flags = [p.result["anomalous"] for p in predictor.predict(samples, [None] * len(samples))]
        share = sum(f == expected for f in flags) / len(flags)
        assert share >= 0.9, f"{kind}: only {share:.0%} classified right"


@pytest.mark.parametrize("name", ["detector_int8.tflite", "detector_int8_reordered.tflite"])
def test_detector_finds_the_scene_boxes_in_source_pixels_whatever_the_output_order(
    backend: Backend, models: Path, name: str
) -> None:
    """The scene is 160x120, letterboxed into 96x96; the model reports whole grid cells."""
    predictor = Predictor(load_model(models / name, backend))
    sample, geometry = predictor.load_input(models / "samples" / "detector_scene.png")
    [prediction] = predictor.predict([sample], [geometry])
    found = sorted((d["label"], *d["box"]) for d in prediction.result["detections"])
    expected = sorted(
        [
            ("red", 0, 20, 40, 60),
            ("red", 40, 20, 80, 60),
            ("green", 120, 20, 160, 60),
            ("green", 120, 60, 160, 100),
        ]
    )
    assert [f[0] for f in found] == [e[0] for e in expected]
    for got, want in zip(found, expected, strict=True):
        assert got[1:] == pytest.approx(want[1:], abs=1.0)


def test_a_model_cut_anywhere_is_refused_before_the_runtime_reads_it(
    backend: Backend, models: Path, tmp_path: Path
) -> None:
    """tflite-runtime does not verify the flatbuffer and can crash on a truncated file."""
    from edge_agent.errors import UserError

    content = (models / "digits_int8.tflite").read_bytes()
    path = tmp_path / "cut.tflite"
    for cut in range(8, len(content), len(content) // 60):
        path.write_bytes(content[:cut])
        with pytest.raises(UserError, match="truncated or corrupt"):
            load_model(path, backend)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"labels": ' * 2000 + "[]" + "}" * 2000, "nests 2001 levels deep, more than 32"),
        ('{"name": "digits", "input": {"range": [0, Infinity]}}', "Infinity is not a JSON"),
        ('{"name": "' + "x" * (1024 * 1024) + '"}', "bytes, more than 1048576"),
        ('["digits"]', "must be a JSON object, not list"),
    ],
)
def test_a_hostile_model_manifest_is_refused_with_one_line_naming_it(
    backend: Backend, models: Path, tmp_path: Path, text: str, problem: str
) -> None:
    """A manifest can arrive with an update: parsed as strictly as a command body."""
    from edge_agent.errors import UserError

    path = tmp_path / "digits.tflite"
    path.write_bytes((models / "digits_int8.tflite").read_bytes())
    (tmp_path / "digits.json").write_text(text)
    with pytest.raises(UserError) as err:
        load_model(path, backend)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'digits.json'} ") and problem in message, message
    assert "\n" not in message
