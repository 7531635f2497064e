"""A decoder plugin (named `module:Class` in a device's own config) that holds the inference
thread once told to: a stuck inference, without a stuck model load."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from edge_agent.runtime.decoders.base import DecoderContext, Floats, Options
from edge_agent.runtime.preprocess import Geometry

HOLD = threading.Event()  # set: the next decode blocks until RELEASE is set
RELEASE = threading.Event()
HELD = threading.Event()  # set once a decode is blocked


class BlockingDecoder:
    class Config(Options):
        pass

    def __init__(self, config: Config, context: DecoderContext) -> None:
        pass

    def __call__(
        self, outputs: Sequence[Floats], geometry: Geometry | None = None
    ) -> dict[str, Any]:
        if HOLD.is_set() and not RELEASE.is_set():
            HELD.set()
            RELEASE.wait()
        return {"sum": float(sum(float(o.sum()) for o in outputs))}


def reset() -> None:
    HOLD.clear()
    RELEASE.clear()
    HELD.clear()
