"""The task of a model that nothing else describes, read from its outputs (and its ops).
Each rule says in a short sentence why it chose; the first that matches wins."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_agent.runtime.decoders.ssd_anchors import KNOWN_LAYOUTS
from edge_agent.runtime.model import TensorSpec

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
# YOLO heads predict on grids at strides 8, 16 and 32: (H/8)(W/8) + (H/16)(W/16) +
# (H/32)(W/32) = 21 (H/32)(W/32) candidates (times 3 anchors for YOLOv5).
YOLO_GRID_FACTOR = 21
YOLO_V5_FIELDS = 5  # x, y, w, h, objectness, then one score per class
YOLO_V8_FIELDS = 4  # x, y, w, h, then one score per class


@dataclass(frozen=True)
class TaskChoice:
    task: str
    options: dict[str, Any] = field(default_factory=dict)
    rule: str = ""


Rule = Callable[[list[tuple[int, ...]], Collection[str]], "TaskChoice | None"]


def choose_task(outputs: Sequence[TensorSpec], op_names: Collection[str]) -> TaskChoice:
    """The decoder for these outputs, with its options and the rule that chose it."""
    dims = [_per_sample(tuple(o.shape)) for o in outputs]
    for rule in RULES:
        choice = rule(dims, op_names)
        if choice is not None:
            return choice
    shapes = ", ".join(_show(o.shape) for o in outputs) or "none"
    return TaskChoice("raw", {}, f"no rule matched outputs {shapes}: raw")


def _per_sample(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape without a leading batch dimension of 1."""
    return shape[1:] if len(shape) >= 2 and shape[0] == 1 else shape


def _show(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _postprocess_op(dims: list[tuple[int, ...]], ops: Collection[str]) -> TaskChoice | None:
    if POSTPROCESS_OP in ops and len(dims) == 4:
        return TaskChoice("detection", {}, f"{POSTPROCESS_OP} op with 4 outputs: detection")
    return None


def _ssd_shaped(dims: list[tuple[int, ...]], ops: Collection[str]) -> TaskChoice | None:
    """Four outputs like the post-process op's, from a model that computes them itself."""
    if len(dims) != 4:
        return None
    boxes = [d for d in dims if len(d) == 2 and d[1] == 4]
    if len(boxes) != 1:
        return None
    n = boxes[0][0]
    rest = [d for d in dims if d is not boxes[0]]
    per_box = [d for d in rest if d == (n,)]
    counts = [d for d in rest if d in ((1,), ())]
    if (len(per_box) == 2 and len(counts) == 1) or (n == 1 and len(per_box) == 3):
        return TaskChoice(
            "detection",
            {},
            f"outputs [1,{n},4] boxes, two of [1,{n}] and a count, as SSD post-processing "
            "gives them: detection",
        )
    return None


def _anchor_head(dims: list[tuple[int, ...]], ops: Collection[str]) -> TaskChoice | None:
    """MediaPipe-style SSD head: regressors [1,N,4+2k] and scores [1,N,1]."""
    if len(dims) != 2 or any(len(d) != 2 for d in dims):
        return None
    (a_n, a_v), (b_n, b_v) = dims
    regressors, scores = ((a_n, a_v), (b_n, b_v)) if b_v == 1 else ((b_n, b_v), (a_n, a_v))
    n, values = regressors
    if scores != (n, 1) or values < 4 or (values - 4) % 2:
        return None
    head = f"outputs [1,{n},{values}] and [1,{n},1] (SSD anchors head)"
    for layout in KNOWN_LAYOUTS:
        if layout.count == n and layout.values == values:
            return TaskChoice(
                "ssd_anchors",
                layout.options(),
                f"{head}: anchor layout of {layout.name}, whose {n} anchors match exactly",
            )
    return TaskChoice(
        "raw",
        {},
        f"{head} with {n} anchors, a layout no known model has: raw until decode options "
        "give task ssd_anchors and the anchor layout (strides, anchors_per_cell)",
    )


def _yolo(dims: list[tuple[int, ...]], ops: Collection[str]) -> TaskChoice | None:
    if len(dims) != 1 or len(dims[0]) != 2:
        return None
    a, b = dims[0]
    if b > a and b % YOLO_GRID_FACTOR == 0 and a > YOLO_V8_FIELDS:
        return TaskChoice(
            "yolo",
            {"version": "v8"},
            f"one output [1,{a},{b}]: {b} candidates (a multiple of {YOLO_GRID_FACTOR}, "
            f"grids at strides 8/16/32) of 4 box values and {a - YOLO_V8_FIELDS} class "
            "scores: YOLOv8/v11 head",
        )
    if a > b and a % YOLO_GRID_FACTOR == 0 and b > YOLO_V5_FIELDS:
        return TaskChoice(
            "yolo",
            {"version": "v5"},
            f"one output [1,{a},{b}]: {a} candidates (a multiple of {YOLO_GRID_FACTOR}) of "
            f"4 box values, objectness and {b - YOLO_V5_FIELDS} class scores: YOLOv5 head",
        )
    return None


def _classification(dims: list[tuple[int, ...]], ops: Collection[str]) -> TaskChoice | None:
    if len(dims) == 1 and len(dims[0]) == 1 and dims[0][0] >= 2:
        return TaskChoice("classification", {}, f"one output [1,{dims[0][0]}]: classification")
    return None


def _segmentation(dims: list[tuple[int, ...]], ops: Collection[str]) -> TaskChoice | None:
    if len(dims) == 1 and len(dims[0]) == 3 and min(dims[0][:2]) > 1:
        h, w, k = dims[0]
        what = "one class per pixel" if k > 1 else "a foreground probability per pixel"
        return TaskChoice("segmentation", {}, f"one output [1,{h},{w},{k}]: {what}: segmentation")
    return None


def _regression(dims: list[tuple[int, ...]], ops: Collection[str]) -> TaskChoice | None:
    if len(dims) == 1 and all(d == 1 for d in dims[0]):
        return TaskChoice("regression", {}, "one output of one value: regression")
    return None


RULES: tuple[Rule, ...] = (
    _postprocess_op,
    _ssd_shaped,
    _anchor_head,
    _yolo,
    _classification,
    _segmentation,
    _regression,
)
