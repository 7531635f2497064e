from __future__ import annotations

import itertools

import numpy as np
import pytest

from edge_agent.errors import UserError
from edge_agent.runtime.decoders import Decoder, choose_task, make_decoder
from edge_agent.runtime.manifest import ImageInput
from edge_agent.runtime.model import TensorSpec
from edge_agent.runtime.preprocess import ImagePreprocessor
from edge_agent.runtime.quantization import QuantParams

pytestmark = pytest.mark.runtime

LABELS = ["person", "car", "dog"]


def float_spec(name: str, shape: tuple[int, ...], index: int = 0) -> TensorSpec:
    quant = QuantParams.from_detail({"dtype": np.float32, "quantization": (0.0, 0)})
    return TensorSpec(index, name, shape, np.dtype(np.float32), quant, False)


def detection_decoder(threshold: float, size: tuple[int, int], names: list[str]) -> Decoder:
    outputs = [float_spec(n, (1, 1), i) for i, n in enumerate(names)]
    return make_decoder("detection", {"score_threshold": threshold}, LABELS, size, outputs)


def ssd_outputs() -> dict[str, np.ndarray]:
    boxes = np.array(
        [[[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.9, 0.8], [0, 0, 0, 0]]],
        np.float32,
    )
    return {
        "boxes": boxes,
        "classes": np.array([[2.0, 0.0, 1.0, 0.0]], np.float32),
        "scores": np.array([[0.9, 0.3, 0.75, 0.95]], np.float32),
        "count": np.array([3.0], np.float32),
    }


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["boxes", "classes", "scores", "count"]))
)
def test_detection_outputs_are_found_by_shape_and_meaning_in_any_order(
    order: tuple[str, ...],
) -> None:
    outputs = ssd_outputs()
    # Names that say nothing: only shapes and values can tell the tensors apart.
    names = [f"StatefulPartitionedCall:{i}" for i in range(4)]
    decoder = detection_decoder(0.5, (100, 50), names)
    result = decoder([outputs[k][0] if k != "count" else outputs[k] for k in order])
    found = result["detections"]
    # Entry 3 scores 0.95 but lies past `count`; entry 1 is under the threshold.
    assert [d["label"] for d in found] == ["dog", "car"]
    assert found[0]["score"] == pytest.approx(0.9)
    # [ymin, xmin, ymax, xmax] normalised -> [x1, y1, x2, y2] in input pixels (100 x 50).
    assert found[0]["box"] == pytest.approx([20.0, 5.0, 60.0, 25.0])


def test_ambiguous_classes_and_scores_fall_back_to_tensor_names() -> None:
    boxes = np.zeros((2, 4), np.float32)
    scores = np.array([1.0, 0.0], np.float32)
    classes = np.array([0.0, 0.0], np.float32)
    names = ["detection_boxes", "detection_scores", "detection_classes", "num"]
    decoder = detection_decoder(0.5, (10, 10), names)
    found = decoder([boxes, scores, classes, np.array([2.0], np.float32)])["detections"]
    assert [(d["label"], d["score"]) for d in found] == [("person", 1.0)]


def image_spec(width: int, height: int) -> TensorSpec:
    quant = QuantParams.from_detail(
        {
            "dtype": np.int8,
            "quantization": (1 / 255, -128),
            "quantization_parameters": {
                "scales": np.array([1 / 255], np.float32),
                "zero_points": np.array([-128], np.int32),
                "quantized_dimension": 0,
            },
        }
    )
    return TensorSpec(0, "image", (1, height, width, 3), np.dtype(np.int8), quant, False)


@pytest.mark.parametrize(("src_w", "src_h"), [(640, 480), (480, 640), (300, 300), (1280, 200)])
def test_letterbox_round_trip_maps_boxes_back_to_source_pixels(src_w: int, src_h: int) -> None:
    spec = image_spec(96, 96)
    pre = ImagePreprocessor(ImageInput(resize="letterbox", range=(0.0, 1.0)), spec)
    frame = np.zeros((src_h, src_w, 3), np.uint8)
    # A white rectangle in source pixels.
    x1, y1, x2, y2 = src_w // 4, src_h // 3, src_w // 2, src_h * 2 // 3
    frame[y1:y2, x1:x2] = 255
    sample, geometry = pre(frame)
    assert sample.shape == (96, 96, 3) and sample.dtype == np.int8
    # Where the rectangle landed in the model input, as a normalised SSD box.
    ys, xs = np.nonzero(sample[:, :, 0] > 0)
    box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32) / 96
    decoder = detection_decoder(0.1, (96, 96), ["b", "c", "s", "n"])
    outputs = [box[None], np.array([1.0], np.float32), np.array([0.8], np.float32), np.array(1.0)]
    [found] = decoder(outputs, geometry)["detections"]
    # Back in source pixels within one model-input pixel's worth of source pixels.
    tolerance = max(src_w, src_h) / 96 + 1
    assert found["box"] == pytest.approx([x1, y1, x2, y2], abs=tolerance)


def test_letterbox_pads_with_the_fill_and_keeps_aspect() -> None:
    spec = image_spec(96, 96)
    pre = ImagePreprocessor(
        ImageInput(resize="letterbox", range=(0.0, 1.0), letterbox_fill=0), spec
    )
    sample, geometry = pre(np.full((48, 96, 3), 255, np.uint8))
    assert geometry.pad_y == 24 and geometry.pad_x == 0
    assert (
        (sample[:24] == -128).all() and (sample[24:72] == 127).all() and (sample[72:] == -128).all()
    )


def test_classification_top_k_with_labels() -> None:
    outputs = [float_spec("scores", (1, 3))]
    decoder = make_decoder("classification", {"top_k": 2}, LABELS, (1, 1), outputs)
    result = decoder([np.array([[0.1, 0.7, 0.2]], np.float32)])
    assert [(t["label"], t["score"]) for t in result["top"]] == [("car", 0.7), ("dog", 0.2)]


@pytest.mark.parametrize(
    ("shapes", "ops", "task", "options"),
    [
        ([(1,), (1, 10, 4), (1, 10), (1, 10)], {"TFLite_Detection_PostProcess"}, "detection", {}),
        ([(1, 10, 4), (1, 10), (1, 10), (1,)], set(), "detection", {}),
        ([(1, 84, 8400)], set(), "yolo", {"version": "v8"}),
        ([(1, 25200, 85)], set(), "yolo", {"version": "v5"}),
        ([(1, 1001)], set(), "classification", {}),
        ([(1, 256, 256, 21)], set(), "segmentation", {}),
        ([(1, 1)], set(), "regression", {}),
        ([(1, 64, 3)], set(), "raw", {}),
        ([(1, 63), (1, 1), (1, 1), (1, 63)], set(), "raw", {}),
        # An anchor head of no known layout: raw until the layout is given.
        ([(1, 1000, 16), (1, 1000, 1)], set(), "raw", {}),
    ],
)
def test_choose_task_from_the_outputs(
    shapes: list[tuple[int, ...]], ops: set[str], task: str, options: dict[str, object]
) -> None:
    outputs = [float_spec(f"out{i}", s, i) for i, s in enumerate(shapes)]
    choice = choose_task(outputs, ops)
    assert (choice.task, choice.options) == (task, options)
    assert choice.rule and "\n" not in choice.rule


def test_known_anchor_layouts_apply_only_on_their_exact_count() -> None:
    palm = choose_task([float_spec("r", (1, 2016, 18)), float_spec("s", (1, 2016, 1), 1)], ())
    assert palm.task == "ssd_anchors" and palm.options["label"] == "palm"
    assert "2016 anchors match exactly" in palm.rule
    # The face layout's count with a palm's 7 keypoints is no known model.
    odd = choose_task([float_spec("r", (1, 896, 18)), float_spec("s", (1, 896, 1), 1)], ())
    assert odd.task == "raw" and "anchor layout" in odd.rule


def test_decoder_options_are_checked_by_the_decoder_naming_the_key() -> None:
    outputs = [float_spec("scores", (1, 3))]
    with pytest.raises(UserError) as err:
        make_decoder("classification", {"top_k": 0}, LABELS, (1, 1), outputs, where="p.decode")
    assert str(err.value).startswith("p.decode.top_k: Input should be greater than 0")
    with pytest.raises(UserError, match="no such decoder"):
        make_decoder("no_such_decoder", {}, LABELS, (1, 1), outputs)


def test_entries_past_the_count_are_ignored_even_when_they_are_garbage() -> None:
    # TFLite_Detection_PostProcess leaves them unwritten: whatever was in memory.
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [np.nan, 7e30, -1, 3]], np.float32)
    classes = np.array([2.0, np.nan], np.float32)
    scores = np.array([0.8, 3.3e38], np.float32)
    decoder = detection_decoder(0.5, (10, 10), ["a", "b", "c", "d"])
    found = decoder([np.array([1.0], np.float32), scores, boxes, classes])["detections"]
    assert [(d["label"], d["score"]) for d in found] == [("dog", 0.8)]
