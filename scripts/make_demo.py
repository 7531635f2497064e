"""Lays out what the demo (scripts/run.sh, configs/demo.toml) runs, from the cached real
assets (scripts/fetch_assets.py): in var/demo/,

- face_detection_short_range.tflite: MediaPipe's BlazeFace, float32, as it came in the
  mediapipe wheel (its TFLite Model Metadata says how to feed it; no manifest is written:
  the agent describes the model itself);
- photos.avi: an MJPEG clip of real photos, each held still for a while, so the face
  detector has faces to find (astronaut, cameraman) and scenes with none.

A stamp of the inputs makes a second run return at once. Run by scripts/setup.sh.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from fetch_assets import cache_root

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "var" / "demo"
MODEL = "mediapipe/face_detection_short_range.tflite"
PHOTOS = ("astronaut.png", "coffee.png", "camera.png", "rocket.jpg", "hubble_deep_field.jpg")
FRAME_SIZE = (640, 480)  # a VGA camera
CLIP_FPS = 10
HOLD_S = 2.0  # each photo stays this long, as a still scene before a camera would
JPEG_QUALITY = 90
LAYOUT_VERSION = "1"  # bump when the clip's making changes


def main() -> int:
    assets = cache_root()
    inputs = [assets / MODEL, *(assets / "photos" / name for name in PHOTOS)]
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        print(f"make_demo: {missing[0]} missing: run scripts/fetch_assets.py", file=sys.stderr)
        return 1
    stamp = DEMO / ".stamp"
    digest = hashlib.sha256(LAYOUT_VERSION.encode())
    for path in inputs:
        digest.update(path.read_bytes())
    want = digest.hexdigest()
    if stamp.is_file() and stamp.read_text() == want:
        return 0
    DEMO.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(assets / MODEL, DEMO / Path(MODEL).name)
    _write_clip(DEMO / "photos.avi", [assets / "photos" / name for name in PHOTOS])
    stamp.write_text(want)
    print(f"demo laid out in {DEMO.relative_to(ROOT)}", file=sys.stderr)
    return 0


def _write_clip(path: Path, photos: list[Path]) -> None:
    import cv2

    partial = path.with_name(path.stem + ".part.avi")
    writer = cv2.VideoWriter(str(partial), cv2.VideoWriter.fourcc(*"MJPG"), CLIP_FPS, FRAME_SIZE)
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY)
    try:
        for photo in photos:
            frame = _cover(cv2.imread(str(photo), cv2.IMREAD_COLOR), FRAME_SIZE)
            for _ in range(round(HOLD_S * CLIP_FPS)):
                writer.write(frame)
    finally:
        writer.release()
    partial.replace(path)


def _cover(image: object, size: tuple[int, int]) -> object:
    """The photo scaled to fill the frame, the overflow cropped evenly (a camera's view
    has no black bars)."""
    import cv2
    import numpy as np

    assert isinstance(image, np.ndarray)
    width, height = size
    scale = max(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(
        image,
        (round(image.shape[1] * scale), round(image.shape[0] * scale)),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return resized[top : top + height, left : left + width]


if __name__ == "__main__":
    sys.exit(main())
