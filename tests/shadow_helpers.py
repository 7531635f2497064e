"""Real variants of the shipped digits model for the shadow tests and benchmark: one with a
tiny weight change (agrees with the original on nearly every frame) and one whose last
layer's class rows are rotated (a model with swapped labels: it disagrees on every frame).
Made with LiteRT's flatbuffer tools; the agent never imports this."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.update_helpers import DIGITS


def _weights(model: Any, shape: list[int]) -> tuple[Any, np.ndarray]:
    graph = model.subgraphs[0]
    for tensor in graph.tensors:
        if list(tensor.shape) == shape:
            buffer = model.buffers[tensor.buffer]
            return buffer, np.frombuffer(bytes(buffer.data), np.int8).reshape(shape).copy()
    raise LookupError(f"no tensor shaped {shape}")


def variant(dst: Path, kind: str, src: Path = DIGITS) -> Path:
    """`nudged`: 1 % of the first dense layer's int8 weights moved by one step;
    `swapped`: the output layer's rows rotated by one class."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(src))
    if kind == "nudged":
        buffer, w = _weights(model, [64, 1152])
        rng = np.random.default_rng(7)
        flat = w.reshape(-1)
        picked = rng.choice(flat.size, flat.size // 100, replace=False)
        step = rng.choice([-1, 1], picked.size)
        flat[picked] = np.clip(flat[picked].astype(np.int16) + step, -127, 127)
    elif kind == "swapped":
        buffer, w = _weights(model, [10, 64])
        w = np.roll(w, 1, axis=0)
    else:
        raise ValueError(kind)
    buffer.data = np.frombuffer(w.tobytes(), np.uint8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fu.write_model(model, str(dst))
    manifest = json.loads(src.with_suffix(".json").read_text())
    manifest["file"] = dst.name
    manifest["sha256"] = hashlib.sha256(dst.read_bytes()).hexdigest()
    dst.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dst
