"""Cameras and video through OpenCV: a V4L2 device, a video file (optionally looping), an
RTSP or HTTP (MJPEG) stream through FFmpeg, or a GStreamer pipeline where OpenCV has it.
MJPEG input is taken as compressed frames and decoded here, at reduced scale when the
models reading it want less than the whole frame."""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field, field_validator

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.sources.base import (
    EndOfStream,
    Frame,
    Source,
    SourceConfig,
    SourceError,
    SourceUnusable,
)
from edge_agent.sources.jpeg import DecodeScale, decode, is_jpeg

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# A corrupt frame in a file fails to read just like the end does; the end is only told
# apart by nothing ever coming again, so this many failures in a row mean the end.
_END_AFTER_FAILURES = 25
NO_GSTREAMER = (
    "OpenCV here has no GStreamer support; install the distribution's python3-opencv "
    "or use a device/URL"
)


class CameraConfig(SourceConfig):
    kind: Literal["camera"] = Field("camera", description="A camera or video through OpenCV.")
    device: Annotated[int | str, LOCAL_ONLY] = Field(
        0,
        description="A device index, /dev/videoN, a video file, an rtsp:// or http(s):// "
        'URL, or a GStreamer pipeline (a string with "!").',
    )
    loop: bool = Field(False, description="Video file: start over at the end.")
    width: int | None = Field(None, gt=0, description="Width to ask the device for.")
    height: int | None = Field(None, gt=0, description="Height to ask the device for.")
    fourcc: str | None = Field(
        None,
        min_length=4,
        max_length=4,
        description='Pixel format to ask a device for, e.g. "MJPG" (more frames over USB 2).',
    )
    timeout_s: float = Field(10.0, gt=0, description="Stream URLs: open and read timeout.")
    decode_scale: DecodeScale = "auto"

    @field_validator("device")
    @classmethod
    def _index_as_int(cls, value: int | str) -> int | str:
        # Environment overrides arrive as strings: "0" means the index.
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty device")
        return value


@functools.cache
def gstreamer_available() -> bool:
    """What OpenCV's own build report says (the PyPI wheels are built without it)."""
    import cv2

    match = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match is not None and match.group(1).upper().startswith("YES")


def device_kind(device: int | str) -> Literal["index", "v4l2", "url", "gstreamer", "file"]:
    if isinstance(device, int):
        return "index"
    if "!" in device:
        return "gstreamer"
    if device.startswith("/dev/video"):
        return "v4l2"
    if _URL.match(device) and not device.startswith("file://"):
        return "url"
    return "file"


def device_access_problem(node: str) -> str | None:
    """Why the device node cannot be opened, said so an operator can fix it; None if it can.
    OpenCV only says "could not be opened", and under systemd the cause is usually the
    unit's device sandbox or the service user's groups."""
    try:
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError as exc:
        return (
            f"{node}: {exc.strerror}. Under systemd the unit must allow it "
            "(DeviceAllow=char-video4linux rw, or the node's own path) and the service user "
            "needs its group (SupplementaryGroups=video)"
        )
    except OSError:
        return None  # busy, gone, ...: OpenCV's attempt says the rest
    os.close(fd)
    return None


class CameraSource(Source):
    def __init__(self, name: str, config: CameraConfig, state_dir: Path) -> None:
        super().__init__(name, config, state_dir)
        self.cfg = config
        self.kind = device_kind(config.device)
        self.live = self.kind != "file"
        self.recorded = not self.live
        self._interrupted = threading.Event()
        self._cap: Any = None
        self._index = 0
        self._logged_size = False
        # The capture hands out compressed MJPEG frames, decoded in read().
        self._packets = False
        self._factor = 1  # the last decode's scale, so a change is logged once

    @property
    def label(self) -> str:
        device = self.cfg.device
        if self.kind == "url" and isinstance(device, str):
            return re.sub(r"//[^/@]*@", "//***@", device)  # no passwords in logs
        return str(device)

    def open(self) -> None:
        self._index = 0
        self._cap = self._open_capture()

    def _open_capture(self) -> Any:
        import cv2

        cfg, kind = self.cfg, self.kind
        device = cfg.device
        if kind == "gstreamer":
            if not gstreamer_available():
                raise SourceUnusable(NO_GSTREAMER)
            cap = cv2.VideoCapture(str(device), cv2.CAP_GSTREAMER)
        elif kind in ("index", "v4l2"):
            node = f"/dev/video{device}" if kind == "index" else str(device)
            if sys.platform == "linux" and not Path(node).exists():
                raise SourceError(f"camera {device}: {node} does not exist")
            problem = device_access_problem(node)
            if problem:
                raise SourceError(f"camera {device}: {problem}")
            api = cv2.CAP_V4L2 if sys.platform == "linux" else cv2.CAP_ANY
            cap = cv2.VideoCapture(device, api)
        elif kind == "url":
            ms = int(cfg.timeout_s * 1000)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
            cap = cv2.VideoCapture(str(device), cv2.CAP_FFMPEG, params)
        else:
            path = Path(str(device).removeprefix("file://"))
            if not path.is_file():
                raise SourceError(f"{path}: no such file")
            cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.label}: could not be opened")
        if kind in ("index", "v4l2"):
            if cfg.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*cfg.fourcc))
            if cfg.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
            if cfg.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
        self._packets = cfg.decode_scale == "auto" and self._take_packets(cap)
        return cap

    def _take_packets(self, cap: Any) -> bool:
        """Asks the capture for compressed frames when it reads MJPEG: FFmpeg's raw mode
        for files and streams, V4L2 without its conversion for a camera sending MJPG."""
        import cv2

        if int(cap.get(cv2.CAP_PROP_FOURCC)) != cv2.VideoWriter.fourcc(*"MJPG"):
            return False  # H.264 and the like: only the capture can decode them
        if self.kind in ("file", "url"):
            return bool(cap.set(cv2.CAP_PROP_FORMAT, -1))
        if self.kind in ("index", "v4l2"):
            return bool(cap.set(cv2.CAP_PROP_CONVERT_RGB, 0))
        return False

    def _decode(self, packet: npt.NDArray[Any]) -> Frame | None:
        """A compressed frame to a Frame, at the scale the readers want; None (counted)
        when it does not decode."""
        if packet.ndim == 3:
            return self._frame(packet)  # the backend decoded it after all
        if not is_jpeg(packet):
            return None
        decoded = decode(packet, self.wanted_size)
        if decoded is None:
            return None
        image, full = decoded.image, decoded.full_size
        if decoded.factor != self._factor:
            self._factor = decoded.factor
            log.info(
                "source %s: decoding at 1/%d scale (%dx%d) for models taking %s",
                self.name,
                decoded.factor,
                image.shape[1],
                image.shape[0],
                "x".join(map(str, self.wanted_size or ())) or "whole frames",
            )
        return self._frame(image, full, packet if full is not None else None)

    def read(self) -> Frame | None:
        import cv2

        failures = 0
        reopened = False
        while True:
            if self._interrupted.is_set():
                raise SourceError("interrupted")
            cap = self._cap
            image = cap.retrieve()[1] if cap.grab() else None
            if image is not None:
                break
            if self.live:
                raise SourceError(f"{self.label}: no frame (unplugged, or the stream ended)")
            failures += 1
            if failures < _END_AFTER_FAILURES:
                continue
            if not self.cfg.loop:
                raise EndOfStream(f"{self.label}: end of file")
            if reopened:
                raise SourceError(f"{self.label}: no frame could be read")
            cap.release()
            self._cap = self._open_capture()
            reopened = True
            failures = 0
        if failures:
            # Reading went on after these failures: they were corrupt frames, not the end.
            self.count("corrupt_frames", failures)
        frame = self._decode(image) if self._packets else self._frame(image)
        if frame is None:
            self.count("corrupt_frames")  # a packet that does not decode: skipped
            return None
        if not self.live:
            frame.meta["pos_ms"] = cap.get(cv2.CAP_PROP_POS_MSEC)
        self._index += 1
        return frame

    def _frame(
        self,
        image: npt.NDArray[Any],
        full: tuple[int, int] | None = None,
        jpeg: npt.NDArray[np.uint8] | None = None,
    ) -> Frame:
        if not self._logged_size:
            self._logged_size = True
            width, height = full or image.shape[1::-1]
            log.info("source %s: %s gives %dx%d", self.name, self.label, width, height)
        return Frame(image, time.monotonic(), time.time(), self._index, full_size=full, jpeg=jpeg)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._interrupted.clear()

    def interrupt(self) -> None:
        # OpenCV reads cannot be cut short from another thread; a stream read ends within
        # timeout_s, a device read within a frame time.
        self._interrupted.set()
