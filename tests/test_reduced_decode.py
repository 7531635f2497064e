"""JPEG and MJPEG decoded at reduced scale when the models want less than the frame: every
frame still gets a result, boxes stay in the frame's own pixels, a corrupt JPEG is skipped
and counted, and a snapshot is still the whole frame. Real MJPEG files, real JPEGs, real
models."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.http.snapshot import Snapshots
from edge_agent.sources import create_source
from edge_agent.sources.camera import CameraConfig, CameraSource
from edge_agent.sources.image_dir import ImageDirConfig, ImageDirSource
from edge_agent.sources.jpeg import decode
from tests import real_assets
from tests.agent_helpers import ListSink, start_agent, wait_until
from tests.conftest import MODELS
from tests.sources_helpers import Collector, corrupt_jpeg_frame, read_all, start_runner, write_video

FRAMES = 30


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames=FRAMES)


def jpeg(image: Any, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(data.tobytes())


def run_to_end(tmp_path: Path, body: str, models: str, expected: int) -> tuple[Agent, ListSink]:
    """An agent on `body` until `expected` results arrived; stopped, for reading."""
    sink = ListSink()
    agent = start_agent(tmp_path, body, sink=sink, models=models)
    try:
        wait_until(lambda: len(sink.results) >= expected, 30, f"{expected} results")
    finally:
        agent.stop()
    return agent, sink


@pytest.mark.parametrize(
    ("size", "wanted", "decoded"),
    [
        ((640, 480), (224, 224), (320, 240)),  # half still covers the model's input
        ((1920, 1080), (224, 224), (480, 270)),
        ((1280, 960), (96, 96), (160, 120)),  # an eighth
        ((641, 481), (320, 240), (321, 241)),  # libjpeg rounds up
        ((640, 480), (320, 256), (640, 480)),  # half would be too short: whole
        ((640, 480), None, (640, 480)),  # nothing smaller wanted
    ],
)
def test_the_largest_scale_that_still_covers_the_model_input(
    size: tuple[int, int], wanted: tuple[int, int] | None, decoded: tuple[int, int]
) -> None:
    image = np.full((size[1], size[0], 3), 90, np.uint8)
    result = decode(np.frombuffer(jpeg(image), np.uint8), wanted)
    assert result is not None
    assert result.image.shape[1::-1] == decoded
    assert result.full_size == (None if decoded == size else size)


def test_mjpeg_file_at_half_scale_every_frame_gets_a_result_and_snapshots_are_whole(
    tmp_path: Path, video: Path
) -> None:
    models = f'[models.mobilenet]\npath = "{MODELS / "mobilenet_v2_int8.tflite"}"\nthreads = 1\n'
    body = f"""
[sources.cam]
kind = "camera"
device = "{video}"

[pipelines.classify]
source = "cam"
model = "mobilenet"
queue_size = {FRAMES}
"""
    agent, sink = run_to_end(tmp_path, body, models, FRAMES)
    assert sorted(r.source["index"] for r in sink.results) == list(range(FRAMES))
    hub = agent.hubs["cam"]
    frame = hub.last_frame
    assert frame is not None
    assert frame.data.shape == (240, 320, 3)  # what the 224x224 model read
    assert frame.full_size == (640, 480)
    snapshot = Snapshots(agent.graph, 90).latest("cam")
    assert snapshot is not None
    picture = cv2.imdecode(np.frombuffer(snapshot.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape == (480, 640, 3)
    # The whole frame decoded again, not the reduced one blown up: the digit's edges are
    # as sharp as in the file.
    whole = frame.full_image().astype(int)
    blown_up = cv2.resize(frame.data, (640, 480)).astype(int)
    off_whole = np.abs(picture.astype(int) - whole).mean()
    off_blown_up = np.abs(picture.astype(int) - blown_up).mean()
    assert off_whole < off_blown_up / 2


def detections(results: list[Any]) -> list[tuple[int, list[float]]]:
    return sorted(
        (d["class_id"], [round(v) for v in d["box"]]) for r in results for d in r["detections"]
    )


@pytest.mark.parametrize("scale", ["auto", "full"])
def test_detector_boxes_are_in_the_frame_pixels_at_either_scale(tmp_path: Path, scale: str) -> None:
    """The shipped detector (96x96, letterboxed) on its scene blown up to a 640x480 JPEG:
    decoded at a quarter (160x120) or whole, the same boxes in the JPEG's own pixels."""
    scene = cv2.imread(str(MODELS / "samples" / "detector_scene.png"))
    assert scene is not None
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "scene.jpg").write_bytes(jpeg(cv2.resize(scene, (640, 480))))
    models = f'[models.det]\npath = "{MODELS / "detector_int8.tflite"}"\nthreads = 1\n'
    body = f"""
[sources.photos]
kind = "image_dir"
path = "{photos}"
settle_s = 0
decode_scale = "{scale}"

[pipelines.det]
source = "photos"
model = "det"
"""
    agent, sink = run_to_end(tmp_path, body, models, 1)
    frame = agent.hubs["photos"].last_frame
    assert frame is not None
    assert frame.data.shape == ((120, 160, 3) if scale == "auto" else (480, 640, 3))
    # The scene's four squares, 40 px at 160x120, so 160 px here.
    assert detections([r.result for r in sink.results]) == [
        (0, [0, 80, 160, 240]),
        (0, [160, 80, 320, 240]),
        (1, [480, 80, 640, 240]),
        (1, [480, 240, 640, 400]),
    ]


def test_a_face_found_at_a_quarter_scale_is_where_it_is_in_the_photo(tmp_path: Path) -> None:
    """BlazeFace (128x128, stretched) on the 512x512 astronaut as a JPEG: decoded at 128x128
    and still boxed where MediaPipe finds the face in the photo's own pixels."""
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = cv2.imread(str(real_assets.photo("astronaut.png")))
    (photos / "astronaut.jpg").write_bytes(jpeg(photo))
    model = tmp_path / "face_detection_short_range.tflite"  # its metadata says the rest
    shutil.copyfile(real_assets.model("mediapipe/face_detection_short_range.tflite"), model)
    models = f'[models.face]\npath = "{model}"\nthreads = 1\n'
    body = f"""
[sources.photos]
kind = "image_dir"
path = "{photos}"
settle_s = 0

[pipelines.face]
source = "photos"
model = "face"
"""
    agent, sink = run_to_end(tmp_path, body, models, 1)
    frame = agent.hubs["photos"].last_frame
    assert frame is not None and frame.data.shape == (128, 128, 3)
    [face] = sink.results[0].result["detections"]
    x1, y1, x2, y2 = face["box"]
    ax1, ay1, ax2, ay2 = real_assets.ASTRONAUT_FACE
    inter = max(0.0, min(x2, ax2) - max(x1, ax1)) * max(0.0, min(y2, ay2) - max(y1, ay1))
    union = (x2 - x1) * (y2 - y1) + (ax2 - ax1) * (ay2 - ay1) - inter
    assert inter / union > 0.85


def break_huffman_tables(path: Path, which: int) -> None:
    """Garble the Huffman table of the `which`th JPEG in an MJPG file, its size header
    whole: a frame that fails only once decoding starts, at whatever scale."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]
    dht = data.index(b"\xff\xc4", starts[which])
    data[dht + 5 : dht + 21] = b"\xff" * 16  # code counts summing past 256
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("scale", "shape"), [("auto", (240, 320, 3)), ("full", (480, 640, 3))])
def test_corrupt_mjpeg_frames_are_skipped_and_counted_at_either_scale(
    tmp_path: Path, video: Path, scale: str, shape: tuple[int, ...]
) -> None:
    broken = tmp_path / "broken.avi"
    shutil.copy(video, broken)
    corrupt_jpeg_frame(broken, 10)  # garbage where the headers were
    break_huffman_tables(broken, 20)  # its size readable, its data not
    config = CameraConfig(device=str(broken), decode_scale=scale)
    source = create_source("cam", config, tmp_path)
    assert isinstance(source, CameraSource)
    source.wanted_size = (224, 224)  # what a hub with a 224x224 model asks for
    frames = read_all(source)
    assert len(frames) == FRAMES - 2
    assert source.counters == {"corrupt_frames": 2}
    assert {f.data.shape for f in frames} == {shape}
    assert [f.index for f in frames] == list(range(FRAMES - 2))
    # The frames after each bad one are the next ones in the file.
    positions = [f.meta["pos_ms"] for f in frames]
    gaps = np.diff(positions)
    assert sorted(gaps)[-2:] == pytest.approx([2000 / 30] * 2, abs=1)


def test_a_corrupt_jpeg_in_a_folder_at_reduced_scale_is_set_aside_and_the_next_taken(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    image = np.full((480, 640, 3), 120, np.uint8)
    cv2.putText(image, "7", (200, 300), 0, 8, (255, 255, 255), 20)
    good = jpeg(image)
    (folder / "a-cut.jpg").write_bytes(good[: len(good) // 2])  # header whole, data cut
    (folder / "b-good.jpg").write_bytes(good)
    past = time.time() - 5
    for path in folder.iterdir():
        os.utime(path, (past, past))  # complete: taken at once
    config = ImageDirConfig(path=folder, settle_s=0.2, scan_interval_s=0.05)
    source = create_source("drop", config, tmp_path / "state")
    assert isinstance(source, ImageDirSource)
    source.wanted_size = (224, 224)
    collector = Collector()
    runner = start_runner(source, collector)
    try:
        assert collector.wait_frames(1)
        assert collector.wait(lambda: source.counters.get("rejected_files", 0) == 1)
    finally:
        runner.stop()
    [frame] = collector.frames
    assert Path(frame.meta["file"]).name == "b-good.jpg"
    assert frame.data.shape == (240, 320, 3) and frame.full_size == (640, 480)
    assert [p.name for p in (folder / ".rejected").iterdir()] == ["a-cut.jpg"]
