"""The demo scripts/run.sh runs (configs/demo.toml): MediaPipe's BlazeFace on a clip of
real photos laid out by scripts/setup.sh. It must find the faces where they are, and
nothing in the scenes without one; a snapshot draws the box."""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.agent import Agent
from tests import real_assets
from tests.agent_helpers import mqtt_table, start_agent
from tests.conftest import ROOT
from tests.mqtt_fixtures import Broker
from tests.operator import Operator
from tests.waiting import wait_until

DEMO = ROOT / "var" / "demo"
CONFIG = ROOT / "configs" / "demo.toml"
# The clip (scripts/make_demo.py): 640x480 frames, each photo scaled to cover the frame
# and cropped evenly, held for 20 frames, in this order.
FRAME = (640, 480)
HOLD_FRAMES = 20
SCENES = ["astronaut.png", "coffee.png", "camera.png", "rocket.jpg", "hubble_deep_field.jpg"]
SOURCE_SIZE = 512  # astronaut.png is 512x512
RESULTS_TIMEOUT_S = 30


def astronaut_face_in_frame() -> tuple[float, float, float, float]:
    scale = max(FRAME[0], FRAME[1]) / SOURCE_SIZE
    left, top = (SOURCE_SIZE * scale - FRAME[0]) / 2, (SOURCE_SIZE * scale - FRAME[1]) / 2
    x1, y1, x2, y2 = real_assets.ASTRONAUT_FACE
    return (x1 * scale - left, y1 * scale - top, x2 * scale - left, y2 * scale - top)


@pytest.fixture(scope="module")
def demo() -> Path:
    model = DEMO / "face_detection_short_range.tflite"
    if not (model.is_file() and (DEMO / "photos.avi").is_file()):
        pytest.fail(f"{DEMO}: the demo is not laid out; run scripts/setup.sh", pytrace=False)
    return model


def test_the_demo_names_the_faces_where_they_are(demo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "EDGE_AGENT_DEVICE__STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(CONFIG)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    by_scene: dict[str, list[dict[str, object]]] = {}
    deadline = time.monotonic() + RESULTS_TIMEOUT_S
    try:
        # The change gate lets one result through per scene, as the scene changes.
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while len(by_scene) < len(SCENES) and time.monotonic() < deadline:
                if not selector.select(timeout=1.0):
                    continue
                record = json.loads(proc.stdout.readline())
                scene = SCENES[record["source"]["index"] // HOLD_FRAMES % len(SCENES)]
                by_scene.setdefault(scene, record["result"]["detections"])
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "task ssd_anchors" in stderr  # chosen from the outputs: no manifest
    assert set(by_scene) == set(SCENES), stderr
    (face,) = by_scene["astronaut.png"]
    assert face["label"] == "face" and face["score"] > 0.8  # type: ignore[index,operator]
    assert iou(face["box"], astronaut_face_in_frame()) > 0.8  # type: ignore[index,arg-type]
    (cameraman,) = by_scene["camera.png"]
    assert cameraman["label"] == "face"  # type: ignore[index]
    for scene in ("coffee.png", "rocket.jpg", "hubble_deep_field.jpg"):
        assert by_scene[scene] == [], scene


@pytest.fixture
def demo_agent(demo: Path, tmp_path: Path, broker: Broker) -> Iterator[Agent]:
    # The demo's model and source, slowed so the frame and its result are one scene.
    body = f"""
[models.faces]
path = "{demo}"
threads = 1
input = {{ resize = "letterbox" }}

[sources.photos]
kind = "camera"
device = "{DEMO / "photos.avi"}"
loop = true
fps = 2

[pipelines.faces]
source = "photos"
model = "faces"
""" + mqtt_table(broker.port)
    agent = start_agent(tmp_path, body, online=True)
    yield agent
    agent.stop()


def test_a_snapshot_draws_the_face_box(demo_agent: Agent, operator: Operator) -> None:
    faces = demo_agent.pipelines["faces"]
    wait_until(lambda: faces.last_result is not None, timeout=10, what="a result")
    reply = operator.call("snapshot", source="photos")
    assert reply["status"] == "ok", reply
    assert reply["result"]["index"] < HOLD_FRAMES  # still the astronaut
    assert reply["result"]["detections_drawn"] == 1
    jpeg = base64.b64decode(reply["result"]["jpeg_base64"])
    if "EDGE_AGENT_DEMO_SNAPSHOT" in os.environ:  # how docs/demo-snapshot.jpg was made
        Path(os.environ["EDGE_AGENT_DEMO_SNAPSHOT"]).write_bytes(jpeg)
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    # The box is drawn in green (BGR 0,255,0) around the face, not anywhere else.
    green = (image[:, :, 1] > 200) & (image[:, :, 0] < 80) & (image[:, :, 2] < 80)
    ys, xs = np.nonzero(green)
    assert len(xs) > 200
    x1, y1, x2, y2 = astronaut_face_in_frame()
    margin = 25  # the label above the box and JPEG blur
    assert x1 - margin < np.percentile(xs, 1) and np.percentile(xs, 99) < x2 + margin
    assert y1 - margin < np.percentile(ys, 1) and np.percentile(ys, 99) < y2 + margin


def iou(a: list[float] | tuple[float, ...], b: list[float] | tuple[float, ...]) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
