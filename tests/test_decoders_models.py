"""Decoders on real models with no manifest: the task comes from the outputs, and the
results are checked against what is in the picture."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.errors import UserError
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.predictor import Predictor
from tests import real_assets
from tests.agent_helpers import ListSink, sensor_lines_pipeline, start_agent
from tests.conftest import MODELS, raw_interpreter, run_cli
from tests.waiting import wait_until

pytestmark = pytest.mark.runtime


def bare(tmp_path: Path, source: Path) -> Path:
    """The model alone in a folder: no manifest beside it."""
    target = tmp_path / source.name
    shutil.copyfile(source, target)
    return target


def predict(predictor: Predictor, *images: Path | np.ndarray) -> list[dict[str, Any]]:
    loaded = [
        predictor.load_input(i) if isinstance(i, Path) else predictor.prepare(i) for i in images
    ]
    found = predictor.predict([s for s, _ in loaded], [g for _, g in loaded])
    return [p.result for p in found]


def iou(a: list[float], b: tuple[float, ...]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# --- MediaPipe BlazeFace: anchors, sigmoid scores, weighted NMS, keypoints ----------------


def test_blazeface_finds_the_astronauts_face_and_none_where_there_is_none(
    backend: Backend, tmp_path: Path
) -> None:
    # The task and its anchor layout come from the outputs alone. The input range is
    # given, as the metadata says (where flatbuffers is missing, it is not read).
    path = bare(tmp_path, real_assets.model("mediapipe/face_detection_short_range.tflite"))
    model = load_model(path, backend, overrides={"input": {"range": (-1.0, 1.0)}})
    assert model.manifest.task == "ssd_anchors"
    assert "BlazeFace short range" in model.rules["task"]
    predictor = Predictor(model)
    astronaut, *empty = predict(
        predictor,
        real_assets.photo("astronaut.png"),
        *(real_assets.photo(p) for p in real_assets.NO_FACE_PHOTOS),
    )
    [face] = astronaut["detections"]
    assert face["label"] == "face" and face["score"] > 0.9
    assert iou(face["box"], real_assets.ASTRONAUT_FACE) > 0.9
    # Six keypoints (eyes, nose, mouth, ears), the eyes and mouth inside the box.
    assert len(face["keypoints"]) == 6
    x1, y1, x2, y2 = face["box"]
    for x, y in face["keypoints"][:4]:
        assert x1 < x < x2 and y1 < y < y2
    assert [r["detections"] for r in empty] == [[]] * len(empty)


def test_wrong_anchor_settings_fail_at_load_naming_both_counts(
    backend: Backend, tmp_path: Path
) -> None:
    path = bare(tmp_path, real_assets.blazeface_short_range())
    manifest = {
        "name": "face",
        "file": path.name,
        "task": "ssd_anchors",
        "input": {"kind": "image", "range": [-1.0, 1.0]},
        "decode": {"strides": [8], "anchors_per_cell": [2]},
    }
    path.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(UserError) as err:
        Predictor(load_model(path, backend))
    message = str(err.value)
    assert "gives 512 anchors, but the model has 896" in message
    assert "\n" not in message
    proc = run_cli("infer", str(path), str(real_assets.photo("astronaut.png")))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"edge-agent: {message}"


@pytest.mark.parametrize("which", ["blazeface_back", "blazeface_full_range"])
def test_other_blazeface_layouts_find_the_face_too(
    backend: Backend, tmp_path: Path, which: str
) -> None:
    # Back camera: 896 anchors on a 256 input (the short-range grid, normalised); full
    # range: 2304 anchors, one per cell at stride 4 of 192. No metadata: the input range
    # comes from the config's [models.NAME.input].
    path = bare(tmp_path, getattr(real_assets, which)())
    model = load_model(path, backend, overrides={"input": {"range": (-1.0, 1.0)}})
    assert model.manifest.task == "ssd_anchors"
    astronaut, coffee = predict(
        Predictor(model), real_assets.photo("astronaut.png"), real_assets.photo("coffee.png")
    )
    [face] = astronaut["detections"]
    assert iou(face["box"], real_assets.ASTRONAUT_FACE) > 0.8
    assert coffee["detections"] == []


# --- TFLite_Detection_PostProcess, both output orders -------------------------------------


def grid_scene() -> np.ndarray:
    """192 x 192 BGR, a 4 x 4 grid of 48 px cells: red over cells (1,0) and (1,1), green
    over (1,3) and (2,3)."""
    scene = np.zeros((192, 192, 3), np.uint8)
    scene[48:96, 0:96] = (0, 0, 255)
    scene[48:144, 144:192] = (0, 255, 0)
    return scene


@pytest.mark.parametrize(
    "name", ["ssd_postprocess_uint8.tflite", "ssd_postprocess_uint8_reordered.tflite"]
)
def test_postprocess_op_detections_in_either_output_order(
    backend: Backend, tmp_path: Path, name: str
) -> None:
    model = load_model(bare(tmp_path, MODELS / name), backend)
    assert model.manifest.task == "detection"
    assert "TFLite_Detection_PostProcess op" in model.rules["task"]
    [result] = predict(Predictor(model), grid_scene())
    found = sorted((d["class_id"], d["box"]) for d in result["detections"])
    assert found == [
        (0, [0.0, 48.0, 48.0, 96.0]),
        (0, [48.0, 48.0, 96.0, 96.0]),
        (1, [144.0, 48.0, 192.0, 96.0]),
        (1, [144.0, 96.0, 192.0, 144.0]),
    ]


# --- YOLO heads ----------------------------------------------------------------------------


def red_scene(width: int = 640, height: int = 480) -> tuple[np.ndarray, tuple[int, ...]]:
    scene = np.full((height, width, 3), 40, np.uint8)
    box = (400, 80, 560, 240)  # x1, y1, x2, y2
    scene[box[1] : box[3], box[0] : box[2]] = (0, 0, 255)
    return scene, box


@pytest.mark.parametrize(
    ("name", "rule"),
    [("yolov8_toy_int8.tflite", "YOLOv8/v11 head"), ("yolov5_toy_f32.tflite", "YOLOv5 head")],
)
def test_yolo_boxes_land_on_the_object_in_source_pixels(
    backend: Backend, tmp_path: Path, name: str, rule: str
) -> None:
    model = load_model(bare(tmp_path, MODELS / name), backend)
    assert model.manifest.task == "yolo" and rule in model.rules["task"]
    scene, (x1, y1, x2, y2) = red_scene()
    found, nothing = predict(Predictor(model), scene, np.full_like(scene, 40))
    detections = found["detections"]
    assert detections and nothing["detections"] == []
    for d in detections:
        bx1, by1, bx2, by2 = d["box"]
        centre = ((bx1 + bx2) / 2, (by1 + by2) / 2)
        # Letterboxed to the model and mapped back: centres fall on the red square.
        assert d["class_id"] == 0
        assert x1 <= centre[0] <= x2 and y1 <= centre[1] <= y2, d
    # Class-aware NMS leaves no two same-class boxes overlapping by more than its IoU.
    boxes = [d["box"] for d in detections]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert iou(a, tuple(b)) <= 0.45 + 1e-6


def test_yolo_keeps_every_object_however_many_boxes_one_of_them_has(
    backend: Backend, tmp_path: Path
) -> None:
    """Hundreds of candidates cover each square, all scoring alike (this toy head has no
    peak at the centre); with room for the boxes NMS leaves, every square has its own."""
    model = load_model(bare(tmp_path, MODELS / "yolov8_toy_int8.tflite"), backend)
    scene = np.full((480, 640, 3), 40, np.uint8)
    squares = {0: (40, 40), 1: (260, 180), 2: (480, 320)}  # class: top-left corner
    for cls, (x, y) in squares.items():
        scene[y : y + 120, x : x + 120] = [(0, 0, 255), (0, 255, 0), (255, 0, 0)][cls]
    [result] = predict(Predictor(model, {"max_detections": 300}), scene)
    for cls, (x, y) in squares.items():
        centres = [
            ((d["box"][0] + d["box"][2]) / 2, (d["box"][1] + d["box"][3]) / 2)
            for d in result["detections"]
            if d["class_id"] == cls
        ]
        assert any(x <= cx <= x + 120 and y <= cy <= y + 120 for cx, cy in centres), cls


# --- Segmentation, raw ------------------------------------------------------------------------


def test_selfie_segmentation_reports_the_person_area_and_keeps_the_mask(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.name == "tflite-runtime":
        pytest.skip("tflite-runtime 2.14 lacks MediaPipe's Convolution2DTransposeBias op")
    model = load_model(
        bare(tmp_path, real_assets.model("mediapipe/selfie_segmentation.tflite")), backend
    )
    assert model.manifest.task == "segmentation"
    predictor = Predictor(model)
    [person] = predict(predictor, real_assets.photo("astronaut.png"))
    areas = {a["class_id"]: a["area"] for a in person["areas"]}
    # The astronaut fills much of the portrait, but not all of it.
    assert 0.2 < areas[1] < 0.9
    assert areas[0] == pytest.approx(1 - areas[1], abs=1e-6)
    mask = predictor.decoder.last_mask  # type: ignore[attr-defined]
    assert mask.shape == (256, 256) and mask.mean() == pytest.approx(areas[1], abs=1e-3)
    # In the agent, the pipeline keeps the last mask with its geometry for snapshots.
    body = f"""
[models.selfie]
path = "{model.info.path}"
threads = 1

[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = 30

[pipelines.selfie]
source = "pattern"
model = "selfie"
"""
    sink = ListSink()
    agent = start_agent(tmp_path, body, sink=sink, models="")
    try:
        wait_until(lambda: len(sink.of("selfie")) >= 2, timeout=30, what="2 results")
        last_mask = agent.pipelines["selfie"].last_mask
    finally:
        agent.stop()
    assert last_mask is not None
    pipeline_mask, geometry = last_mask
    assert pipeline_mask.shape == (256, 256) and geometry is not None


def test_outputs_no_rule_reads_run_as_raw_with_one_log_line(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = bare(tmp_path, real_assets.model("mediapipe/hand_landmark_lite.tflite"))
    with caplog.at_level(logging.WARNING):
        model = load_model(path, backend)
        predictor = Predictor(model)
        Predictor(model)  # a second pipeline on the same model says nothing more
    said = [r.getMessage() for r in caplog.records if "no rule matched" in r.getMessage()]
    assert len(said) == 1 and "hand_landmark_lite" in said[0]
    photo = cv2.imread(str(real_assets.photo("astronaut.png")))
    [result] = predict(predictor, photo)
    outputs = result["outputs"]
    assert {k: np.asarray(v).shape for k, v in outputs.items()} == {
        "Identity": (63,),
        "Identity_1": (1,),
        "Identity_2": (1,),
        "Identity_3": (63,),
    }
    raw = model.dequantize(model.run(predictor.prepare(photo)[0][None]))
    assert np.allclose(outputs["Identity"], raw[0][0])


# --- A sensor-window classifier with no manifest -----------------------------------------


def test_sensor_classifier_without_manifest_classifies_windows_from_a_line_source(
    backend: Backend, tmp_path: Path
) -> None:
    """[1,64,3] int8 -> [1,4]: windows from a lines file, each result a classification
    that agrees with the raw interpreter, and right on most held-out windows."""
    model = bare(tmp_path, MODELS / "sensor_classifier_int8.tflite")
    data = np.load(MODELS / "data" / "sensor_classes.npz")
    picks = np.arange(0, len(data["labels"]), 5)  # 40 windows, every class
    windows, labels = data["windows"][picks], data["labels"][picks]
    body = sensor_lines_pipeline("imu", model, tmp_path / "imu.txt", windows)
    sink = ListSink()
    agent = start_agent(tmp_path, body, sink=sink, models="")
    try:
        wait_until(lambda: len(sink.of("imu")) >= len(windows), timeout=30, what="results")
    finally:
        agent.stop()
    interpreter = raw_interpreter(backend, model, threads=1)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    tops = []
    for window, result in zip(windows, sink.of("imu"), strict=True):
        q = np.clip(np.round(window / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        expected = int(np.argmax(interpreter.get_tensor(out["index"])[0]))
        top = result.result["top"][0]
        assert top["index"] == expected
        tops.append(top["index"])
    assert np.mean(np.array(tops) == labels) > 0.85
