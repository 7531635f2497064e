"""JPEG frames decoded at reduced scale: libjpeg's DCT scaling (OpenCV's IMREAD_REDUCED_*)
decodes a half, quarter or eighth size image for a fraction of a full decode's work, and
the model sees no difference when its input is that small anyway. The compressed frame is
kept beside the reduced image, so a snapshot can still decode it whole."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

Size = tuple[int, int]  # (width, height)

DecodeScale = Annotated[
    Literal["auto", "full"],
    Field(
        description='JPEG and MJPEG input: "auto" decodes at 1/2, 1/4 or 1/8 scale when every '
        "model reading this source takes an input that small (snapshots still decode the "
        'whole frame); "full" always decodes whole frames.'
    ),
]

FACTORS = (8, 4, 2)  # the scales libjpeg decodes straight from the DCT coefficients
_SOI = b"\xff\xd8"
# Start-of-frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_HEAD = 256 * 1024
_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length


def is_jpeg(data: npt.NDArray[np.uint8]) -> bool:
    return data.ravel()[:2].tobytes() == _SOI


def header(data: bytes) -> tuple[Size, bool] | None:
    """(width, height) from the start-of-frame segment, and whether an Exif segment comes
    before it (its orientation may turn the decoded image); None when there is no SOF."""
    exif = False
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF:
            if i + 9 > end:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return ((width, height), exif) if width and height else None
        if marker == 0xE1 and data[i + 4 : i + 8] == b"Exif":
            exif = True
        if marker == 0xDA or length < 2:  # scan data before any SOF: not a frame we can size
            return None
        i += 2 + length
    return None


def reduced_size(full: Size, factor: int) -> Size:
    """The size libjpeg gives at 1/factor scale (it rounds up)."""
    return math.ceil(full[0] / factor), math.ceil(full[1] / factor)


def reduction(full: Size, wanted: Size | None, turned: bool = False) -> int:
    """The largest factor whose reduced image still covers `wanted` in both dimensions; 1
    (a full decode) when none does or nothing smaller is wanted. `turned`: the image may be
    rotated a quarter turn on decoding, so both orientations must cover it."""
    if wanted is None:
        return 1
    for factor in FACTORS:
        sizes = [full, (full[1], full[0])] if turned else [full]
        if all(_covers(reduced_size(size, factor), wanted) for size in sizes):
            return factor
    return 1


def _covers(size: Size, wanted: Size) -> bool:
    return size[0] >= wanted[0] and size[1] >= wanted[1]


@dataclass(frozen=True)
class Decoded:
    image: npt.NDArray[Any]  # BGR
    factor: int  # 1: whole
    full_size: Size | None  # the frame's own (width, height) when reduced


def decode(data: npt.NDArray[np.uint8], wanted: Size | None) -> Decoded | None:
    """A compressed JPEG to a BGR image at the smallest scale that covers `wanted`. None
    when the data does not decode (truncated, garbage): the caller skips and counts it."""
    import cv2

    # Only the head is copied: the SOF comes after the APPn segments, rarely this far.
    found = header(data.ravel()[:_HEAD].tobytes()) if wanted is not None else None
    factor = reduction(found[0], wanted, found[1]) if found is not None else 1
    if found is not None and factor > 1:
        full = found[0]
        image = cv2.imdecode(data, _reduced_flag(factor))
        if image is None:
            return None
        got = (image.shape[1], image.shape[0])
        # An Exif orientation turns the decoded image; its full size turns with it.
        for size in (full, (full[1], full[0])):
            if got == reduced_size(size, factor):
                return Decoded(image, factor, size)
        # A size we cannot map back to the frame: decode it whole rather than guess.
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if image is None else Decoded(image, 1, None)


def encode(image: npt.NDArray[Any], quality: int) -> bytes | None:
    """`image` as a JPEG at `quality`; None when it cannot be encoded."""
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return bytes(data.tobytes()) if ok else None


def decode_full(data: npt.NDArray[np.uint8]) -> npt.NDArray[Any] | None:
    import cv2

    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if image is None else np.asarray(image)


def _reduced_flag(factor: int) -> int:
    import cv2

    flags = {
        2: cv2.IMREAD_REDUCED_COLOR_2,
        4: cv2.IMREAD_REDUCED_COLOR_4,
        8: cv2.IMREAD_REDUCED_COLOR_8,
    }
    return int(flags[factor])
