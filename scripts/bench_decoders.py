"""Decode time per frame for each decoder, beside the same model's invoke time, in one run.

    .venv/bin/python scripts/bench_decoders.py [--runs 200] [--threads N] [--json]

Each model is loaded as the agent loads it (no manifest needed: the task comes from the
outputs), fed a real photo or a scene with something to find, and timed: invoke
(interpreter only), dequantize (all outputs, as the worker does) and decode (the decoder
alone), medians of --runs. Exits 1 when YOLOv8's 8,400 candidates x 80 classes take 10%
of its invoke time or more. Photos and MediaPipe models come from the set-up cache
(scripts/fetch_assets.py); rows whose file is missing are skipped with a line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.runtime.backend import select_backend  # noqa: E402
from edge_agent.runtime.loader import load_model  # noqa: E402
from edge_agent.runtime.predictor import Predictor  # noqa: E402

MODELS = ROOT / "models"
YOLO_BUDGET = 0.10  # the bound: decode under 10% of the same model's invoke


def cache() -> Path:
    configured = os.environ.get("EDGE_AGENT_CACHE")
    base = Path(configured).expanduser() if configured else Path.home() / ".cache" / "edge-agent"
    return base / "assets"


def photo(name: str) -> Path:
    return cache() / "photos" / name


def colour_scene() -> np.ndarray:
    """640 x 480 BGR: a red, a green and a blue square on gray, for the YOLO-shaped heads."""
    scene = np.full((480, 640, 3), 40, np.uint8)
    for (x, y), colour in zip(
        ((60, 60), (300, 200), (480, 320)), ((0, 0, 255), (0, 255, 0), (255, 0, 0)), strict=True
    ):
        scene[y : y + 120, x : x + 120] = colour
    return scene


def grid_scene() -> np.ndarray:
    scene = np.zeros((192, 192, 3), np.uint8)
    scene[48:96, 0:96] = (0, 0, 255)
    scene[48:144, 144:192] = (0, 255, 0)
    return scene


def sensor_window() -> np.ndarray:
    return np.load(MODELS / "data" / "sensor_classes.npz")["windows"][0]


# (row name, model path, input: a photo path or a function giving the frame or window)
ROWS: list[tuple[str, Path, Path | Callable[[], np.ndarray]]] = [
    ("classification 1000 classes", MODELS / "mobilenet_v2_int8.tflite", photo("astronaut.png")),
    ("classification sensor [1,4]", MODELS / "sensor_classifier_int8.tflite", sensor_window),
    ("detection (PostProcess op)", MODELS / "ssd_postprocess_uint8.tflite", grid_scene),
    (
        "yolo v8 8400 x 80 (640, YOLOv8n compute)",
        MODELS / "yolov8_bench_640_f32.tflite",
        colour_scene,
    ),
    ("yolo v8 2100 x 80 (320, int8)", MODELS / "yolov8_toy_int8.tflite", colour_scene),
    ("yolo v5 6300 x 80 (320, float)", MODELS / "yolov5_toy_f32.tflite", colour_scene),
    (
        "ssd_anchors BlazeFace 896",
        cache() / "mediapipe" / "face_detection_short_range.tflite",
        photo("astronaut.png"),
    ),
    (
        "ssd_anchors palm 2016",
        cache() / "mediapipe" / "palm_detection_full.tflite",
        photo("astronaut.png"),
    ),
    (
        "segmentation 256x256",
        cache() / "mediapipe" / "selfie_segmentation.tflite",
        photo("astronaut.png"),
    ),
    ("anomaly", MODELS / "sensor_anomaly_int8.tflite", lambda: sensor_window() * 1.0),
    (
        "raw (hand landmarks, 4 outputs)",
        cache() / "mediapipe" / "hand_landmark_lite.tflite",
        photo("astronaut.png"),
    ),
]


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def bench(
    name: str, path: Path, source: Path | Callable[[], np.ndarray], runs: int, threads: int
) -> dict[str, Any]:
    backend = select_backend("auto")
    model = load_model(path, backend, threads=threads)
    predictor = Predictor(model)
    if isinstance(source, Path):
        sample, geometry = predictor.load_input(source)
    else:
        sample, geometry = predictor.prepare(source())
    batch = sample[None]
    raw = model.run(batch)
    outputs = [o[0] for o in model.dequantize(raw)]
    result = predictor.decoder(outputs, geometry)
    invoke = median_ms(lambda: model.run(batch), runs)
    dequantize = median_ms(lambda: model.dequantize(raw), runs)
    decode = median_ms(lambda: predictor.decoder(outputs, geometry), runs)
    found = result.get("detections", result.get("top", result.get("areas", result.get("outputs"))))
    return {
        "decoder": name,
        "model": path.name,
        "task": model.manifest.task,
        "invoke_ms": round(invoke, 3),
        "dequantize_ms": round(dequantize, 3),
        "decode_ms": round(decode, 3),
        "decode_share": round(decode / invoke, 4),
        "found": len(found) if isinstance(found, list | dict) else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per row")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="interpreter threads"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    rows = []
    for name, path, source in ROWS:
        if not path.is_file() or (isinstance(source, Path) and not source.is_file()):
            print(f"skipped {name}: {path.name} or its input is missing (scripts/setup.sh)")
            continue
        rows.append(bench(name, path, source, args.runs, args.threads))
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"threads {args.threads}, medians of {args.runs} runs")
        header = ("invoke ms", "dequant ms", "decode ms", "decode/invoke")
        print(f"{'decoder':42} " + " ".join(f"{h:>13}" for h in header) + " found")
        for r in rows:
            print(
                f"{r['decoder']:42} {r['invoke_ms']:13.3f} {r['dequantize_ms']:13.3f} "
                f"{r['decode_ms']:13.3f} {r['decode_share']:13.1%} {r['found']}"
            )
    yolo = next((r for r in rows if r["model"] == "yolov8_bench_640_f32.tflite"), None)
    if yolo is None:
        print("yolov8_bench_640_f32.tflite missing: the YOLO bound was not checked")
        return 1
    ok = yolo["decode_share"] < YOLO_BUDGET
    print(
        f"YOLOv8 8,400 x 80: decode {yolo['decode_ms']:.3f} ms = {yolo['decode_share']:.1%} of "
        f"invoke {yolo['invoke_ms']:.3f} ms ({'under' if ok else 'NOT under'} "
        f"{YOLO_BUDGET:.0%})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
