"""How far a quantized model's results stay from the float model's, read the way a user
reads them: the same top-1 class, the same boxes in the same places, or, for anything
else, how close the output tensors are."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.model import LoadedModel

# A box of the quantized model matches a float box when they overlap this much (the
# PASCAL VOC criterion) and name the same class.
MATCH_IOU = 0.5


@dataclass
class Agreement:
    kind: str  # "top-1", "boxes", "pixels" or "outputs"
    samples: int = 0
    # top-1: samples whose best class agrees
    same_top1: int = 0
    # boxes: float boxes found again, boxes of each model, and the IoU of each match
    float_boxes: int = 0
    quant_boxes: int = 0
    matched: int = 0
    ious: list[float] | None = None
    score_pairs: list[tuple[float, float]] | None = None  # (float, quantized) per match
    # pixels: share of mask pixels of the same class, per sample
    pixel_shares: list[float] | None = None
    # outputs: RMS difference of the dequantized tensors over the float values' range,
    # per sample (a relative error would blow up on outputs near zero)
    errors: list[float] | None = None

    def summary(self) -> str:
        if self.kind == "top-1":
            share = self.same_top1 / self.samples if self.samples else 0.0
            return f"top-1 {self.same_top1}/{self.samples} same ({share:.1%})"
        if self.kind == "boxes":
            mean_iou = float(np.mean(self.ious)) if self.ious else 0.0
            text = (
                f"boxes {self.matched}/{self.float_boxes} of float found "
                f"(quantized gave {self.quant_boxes}), mean IoU {mean_iou:.3f}"
            )
            if self.score_pairs:
                f_mean, q_mean = np.mean(self.score_pairs, axis=0)
                text += f", mean score {f_mean:.3f} float vs {q_mean:.3f} quantized"
            return text
        if self.kind == "pixels":
            shares = self.pixel_shares or [0.0]
            return (
                f"mask pixels of the same class {float(np.mean(shares)):.1%}, "
                f"worst sample {min(shares):.1%}"
            )
        worst = max(self.errors or [0.0])
        mean = float(np.mean(self.errors)) if self.errors else 0.0
        return f"outputs differ by {mean:.2%} of their range (worst sample {worst:.2%})"

    def as_dict(self) -> dict[str, Any]:
        figures = {k: v for k, v in asdict(self).items() if v is not None}
        if self.ious is not None:
            figures["mean_iou"] = round(float(np.mean(self.ious)), 4) if self.ious else None
        return {**figures, "summary": self.summary(), "problems": self.problems()}

    def problems(self) -> list[str]:
        """Why the quantized model cannot be trusted without a second look; none if it can."""
        found: list[str] = []
        if self.kind == "top-1" and self.same_top1 < GOOD_SHARE * self.samples:
            found.append(f"top-1 agrees on fewer than {GOOD_SHARE:.0%} of samples")
        if self.kind == "boxes":
            if self.matched < GOOD_SHARE * self.float_boxes:
                found.append(f"fewer than {GOOD_SHARE:.0%} of the float boxes found again")
            if self.quant_boxes - self.matched > (1 - GOOD_SHARE) * max(1, self.float_boxes):
                found.append(
                    f"{self.quant_boxes - self.matched} boxes the float model does not give"
                )
            if self.ious and float(np.mean(self.ious)) < GOOD_IOU:
                found.append(f"matched boxes overlap less than IoU {GOOD_IOU} on average")
            shift = max((abs(f - q) for f, q in self.score_pairs or []), default=0.0)
            if shift > GOOD_SCORE_SHIFT:
                found.append(f"scores moved by up to {shift:.2f}")
        if self.kind == "pixels" and float(np.mean(self.pixel_shares or [0.0])) < GOOD_PIXELS:
            found.append(f"fewer than {GOOD_PIXELS:.0%} of mask pixels agree")
        if self.kind == "outputs" and max(self.errors or [0.0]) > GOOD_OUTPUT_ERROR:
            found.append(f"outputs differ by more than {GOOD_OUTPUT_ERROR:.0%} of their range")
        return found


GOOD_SHARE = 0.9  # of top-1 answers or float boxes found again
GOOD_IOU = 0.8  # mean IoU of matched boxes
GOOD_SCORE_SHIFT = 0.1  # largest score change of a matched box
GOOD_PIXELS = 0.95  # mean share of mask pixels of the same class
GOOD_OUTPUT_ERROR = 0.05  # RMS difference over the float values' range, raw outputs


def agree(
    floats: Sequence[dict[str, Any]],
    quants: Sequence[dict[str, Any]],
    float_outputs: Sequence[dict[str, npt.NDArray[np.float32]]],
    quant_outputs: Sequence[dict[str, npt.NDArray[np.float32]]],
    masks: Sequence[tuple[npt.NDArray[Any], npt.NDArray[Any]] | None] = (),
) -> Agreement:
    """Results of both models on the same samples, in the same order; `masks`: the class
    masks (float, quantized) of a segmentation decoder, per sample."""
    first = floats[0] if floats else {}
    if "top" in first:
        agreement = Agreement("top-1", samples=len(floats))
        agreement.same_top1 = sum(
            bool(f["top"]) and bool(q["top"]) and f["top"][0]["index"] == q["top"][0]["index"]
            for f, q in zip(floats, quants, strict=True)
        )
        return agreement
    if "detections" in first:
        ious: list[float] = []
        scores: list[tuple[float, float]] = []
        agreement = Agreement("boxes", samples=len(floats), ious=ious, score_pairs=scores)
        for f, q in zip(floats, quants, strict=True):
            matches = match_boxes(f["detections"], q["detections"])
            agreement.float_boxes += len(f["detections"])
            agreement.quant_boxes += len(q["detections"])
            agreement.matched += len(matches)
            ious.extend(overlap for overlap, _, _ in matches)
            scores.extend(
                (f["detections"][i]["score"], q["detections"][j]["score"]) for _, i, j in matches
            )
        return agreement
    if masks and all(pair is not None for pair in masks):
        shares = [float(np.mean(f == q)) for f, q in (p for p in masks if p is not None)]
        return Agreement("pixels", samples=len(floats), pixel_shares=shares)
    spans = {
        name: float(max(np.max(o[name]) for o in float_outputs))
        - float(min(np.min(o[name]) for o in float_outputs))
        for name in (float_outputs[0] if float_outputs else {})
    }
    errors = []
    for f_out, q_out in zip(float_outputs, quant_outputs, strict=True):
        per_output = [
            float(np.sqrt(np.mean((q_out[name] - value) ** 2))) / (spans[name] or 1.0)
            for name, value in f_out.items()
        ]
        errors.append(max(per_output, default=0.0))
    return Agreement("outputs", samples=len(floats), errors=errors)


def match_boxes(
    reference: list[dict[str, Any]], other: list[dict[str, Any]]
) -> list[tuple[float, int, int]]:
    """Greedy one-to-one matching, best IoU first: (IoU, reference index, other index)."""
    pairs = []
    for i, a in enumerate(reference):
        for j, b in enumerate(other):
            if a.get("class_id") != b.get("class_id"):
                continue
            overlap = iou(a["box"], b["box"])
            if overlap >= MATCH_IOU:
                pairs.append((overlap, i, j))
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches = []
    for overlap, i, j in sorted(pairs, reverse=True):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            matches.append((overlap, i, j))
    return matches


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def median_invoke_ms(model: LoadedModel, sample: npt.NDArray[Any], runs: int) -> float:
    """Median time of one invoke on one sample, after a warm-up run."""
    batch = sample[None]
    model.run(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model.run(batch)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000
