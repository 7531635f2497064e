"""The fleet `snapshot` command on a segmentation pipeline: the frame comes back with the
model's mask tinted over the part of the photo it found (a real MediaPipe model on a real
photo), through a real broker. As a JPEG the photo is decoded at half scale for the model,
and the snapshot is still the whole photo with the mask in place."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.runtime.backend import Backend
from tests import real_assets
from tests.agent_helpers import mqtt_table, start_agent
from tests.mqtt_fixtures import Broker
from tests.operator import Operator
from tests.waiting import wait_until

# A tinted pixel moves by ~45% of the way to the tint colour in some channel; JPEG noise
# moves an untouched one by a few levels.
TINTED = 40


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_snapshot_tints_the_segmentation_mask(
    tmp_path: Path, broker: Broker, backend: Backend, suffix: str
) -> None:
    if backend.name == "tflite-runtime":
        pytest.skip("tflite-runtime 2.14 lacks MediaPipe's Convolution2DTransposeBias op")
    model = tmp_path / "models" / "selfie_segmentation.tflite"  # no manifest beside it
    model.parent.mkdir()
    shutil.copyfile(real_assets.model("mediapipe/selfie_segmentation.tflite"), model)
    photos = tmp_path / "photos"
    photos.mkdir()
    photo_path = photos / f"astronaut{suffix}"
    if suffix == ".png":
        shutil.copyfile(real_assets.photo("astronaut.png"), photo_path)
    else:  # 512x512 for a 256x256 model: read at half scale
        png = cv2.imread(str(real_assets.photo("astronaut.png")))
        assert png is not None
        ok, data = cv2.imencode(suffix, png)
        assert ok
        photo_path.write_bytes(data.tobytes())
    body = f"""
[models.selfie]
path = "{model}"
threads = 1

[sources.photos]
kind = "image_dir"
path = "{photos}"

[pipelines.selfie]
source = "photos"
model = "selfie"
""" + mqtt_table(broker.port)
    agent = start_agent(tmp_path, body, online=True)
    try:
        selfie = agent.pipelines["selfie"]
        wait_until(lambda: selfie.last_result is not None, timeout=20, what="a result")
        frame = agent.hubs["photos"].last_frame
        assert frame is not None
        assert frame.data.shape[:2] == ((256, 256) if suffix == ".jpg" else (512, 512))
        with Operator(broker) as operator:
            reply = operator.call("snapshot", source="photos")
    finally:
        agent.stop()
    assert reply["status"] == "ok", reply
    assert reply["result"]["masks_drawn"] == 1
    snap = cv2.imdecode(
        np.frombuffer(base64.b64decode(reply["result"]["jpeg_base64"]), np.uint8),
        cv2.IMREAD_COLOR,
    )
    photo = cv2.imread(str(photo_path))
    assert photo is not None
    assert snap is not None and snap.shape == photo.shape
    tinted = np.abs(snap.astype(int) - photo.astype(int)).max(axis=2) > TINTED
    # The tinted share of the frame is the person's area the model reported.
    last = selfie.last_result
    assert last is not None
    area = next(a["area"] for a in last.result["areas"] if a["class_id"] == 1)
    assert 0.2 < area < 0.9
    assert tinted.mean() == pytest.approx(area, abs=0.05)
