"""`edge-agent infer` and `bench` as a user runs them, and every bad input the user can give."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BACKEND, MODELS, run_cli

pytestmark = pytest.mark.runtime

DIGITS = str(MODELS / "digits_int8.tflite")


def assert_one_line_error(proc: object, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr  # type: ignore[attr-defined]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1, proc.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in proc.stderr  # type: ignore[attr-defined]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_infer_json_gives_result_and_every_output_dequantized_by_name() -> None:
    images = sorted(str(p) for p in (MODELS / "samples").glob("digit_*.png"))
    proc = run_cli("infer", DIGITS, *images, "--json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(records) == len(images)
    for image, record in zip(images, records, strict=True):
        assert record["input"] == image
        assert record["model"]["name"] == "digits"
        assert record["model"]["delegate"] == "cpu"
        assert len(record["model"]["sha256"]) == 64
        assert record["result"]["top"][0]["label"] == Path(image).stem.split("_")[1]
        [(_name, values)] = record["outputs"].items()
        assert len(values) == 10 and all(isinstance(v, float) for v in values)
        assert sum(values) == pytest.approx(1.0, abs=0.05)


def test_infer_text_output_names_the_top_class() -> None:
    proc = run_cli("infer", DIGITS, str(MODELS / "samples" / "digit_7.png"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split(": ")[1].startswith("7 ")
    assert proc.stderr == ""


def test_infer_takes_float_and_integer_npy(tmp_path: Path) -> None:
    data = np.load(MODELS / "data" / "digits_test.npz")
    floats = tmp_path / "x.npy"
    np.save(floats, data["x"][0])
    ints = tmp_path / "q.npy"
    # The same input quantized by hand: scale and zero point of the model's input.
    first = json.loads(run_cli("infer", DIGITS, str(floats), "--json").stdout)
    np.save(ints, np.clip(np.round(data["x"][0] / 0.0627451) - 128, -128, 127).astype(np.int8))
    second = json.loads(run_cli("infer", DIGITS, str(ints), "--json").stdout)
    assert first["result"]["top"][0]["index"] == int(data["y"][0])
    assert second["result"]["top"][0]["index"] == int(data["y"][0])


def test_bench_reports_timings_and_the_bare_loop() -> None:
    proc = run_cli("bench", DIGITS, "--runs", "50", "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["delegate"] == "cpu" and report["threads"] == 1 and report["runs"] == 50
    for key in ("init_ms", "first_inference_ms", "warmup_mean_ms", "peak_rss_mb", "overhead_pct"):
        assert report[key] is not None
    for side in ("agent", "bare"):
        assert 0 < report[side]["p50_ms"] <= report[side]["p99_ms"]


# Bad model files ---------------------------------------------------------------------


@pytest.fixture
def bad_models(tmp_path: Path) -> dict[str, Path]:
    good = (MODELS / "digits_int8.tflite").read_bytes()
    files = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "not_tflite": b"PK\x03\x04 this is a zip, not a model" * 10,
    }
    paths = {}
    for name, content in files.items():
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(content)
        paths[name] = path
    return paths


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "model file not found"),
        ("empty", "model file is empty"),
        ("truncated", "truncated or corrupt"),
        ("not_tflite", "not a TFLite model"),
    ],
)
def test_bad_model_files_give_one_line_naming_the_file(
    bad_models: dict[str, Path], tmp_path: Path, case: str, message: str
) -> None:
    path = bad_models.get(case, tmp_path / "missing.tflite")
    proc = run_cli("infer", str(path), str(MODELS / "samples" / "digit_3.png"))
    assert_one_line_error(proc, str(path), message)


def test_model_not_matching_its_manifest_sha256_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "digits_int8.tflite"
    content = bytearray((MODELS / "digits_int8.tflite").read_bytes())
    content[-1] ^= 0xFF
    model.write_bytes(bytes(content))
    (tmp_path / "digits_int8.json").write_text((MODELS / "digits_int8.json").read_text())
    proc = run_cli("infer", str(model), str(MODELS / "samples" / "digit_3.png"))
    assert_one_line_error(proc, str(model), "sha256")


# Bad inputs --------------------------------------------------------------------------


def test_image_that_does_not_decode(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes((MODELS / "samples" / "digit_3.png").read_bytes()[:40])
    proc = run_cli("infer", DIGITS, str(broken))
    assert_one_line_error(proc, str(broken), "cannot decode image")


def test_missing_input_file(tmp_path: Path) -> None:
    proc = run_cli("infer", DIGITS, str(tmp_path / "nope.png"))
    assert_one_line_error(proc, "nope.png", "not found")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((9, 9, 1), np.float32), "shape [9, 9, 1] does not fit model input [1, 8, 8, 1]"),
        (np.zeros((1, 8, 8, 1), np.int32), "dtype int32 does not fit model input dtype int8"),
        (np.zeros((8, 8, 1), np.bool_), "is not numeric"),
    ],
)
def test_npy_of_wrong_shape_or_dtype(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "input.npy"
    np.save(path, array)
    proc = run_cli("infer", DIGITS, str(path))
    assert_one_line_error(proc, str(path), message)


def test_npy_that_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "input.npy"
    path.write_text("not numpy")
    proc = run_cli("infer", DIGITS, str(path))
    assert_one_line_error(proc, str(path), "not a readable .npy")


# Bad delegate settings ---------------------------------------------------------------


def test_unknown_delegate_name() -> None:
    proc = run_cli(
        "infer", DIGITS, str(MODELS / "samples" / "digit_3.png"), "--delegate", "tpu9000"
    )
    assert_one_line_error(proc, "--delegate tpu9000", "tpu9000", "edgetpu")


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("armnn:number_of_threads=many", "number_of_threads"),
        ("edgetpu:device=usb:x", "device"),
        ("edgetpu:speed=fast", "speed"),
    ],
)
def test_delegate_options_of_the_wrong_type_or_unknown(spec: str, key: str) -> None:
    proc = run_cli("infer", DIGITS, str(MODELS / "samples" / "digit_3.png"), "--delegate", spec)
    assert_one_line_error(proc, key)


def test_delegate_options_of_the_wrong_type_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        "[runtime]\n"
        'delegates = [{ name = "external", library = "/x.so", options = { mode = [1, 2] } }]\n'
    )
    proc = run_cli(
        "infer", DIGITS, str(MODELS / "samples" / "digit_3.png"), "--config", str(config)
    )
    assert_one_line_error(proc, str(config), "runtime.delegates.0.external.options.mode")


def test_tflite_runtime_next_to_numpy_2_is_named_plainly() -> None:
    if BACKEND != "litert":
        pytest.skip("checks the NumPy 2 environment")
    pytest.importorskip("tflite_runtime")
    proc = run_cli(
        "infer", "--runtime", "tflite-runtime", DIGITS, str(MODELS / "samples" / "digit_3.png")
    )
    assert_one_line_error(proc, "tflite-runtime", "numpy<2")
