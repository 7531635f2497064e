#!/usr/bin/env python3
"""Pipeline benchmark: the agent's figures beside their baselines, measured in one run.

    .venv/bin/python scripts/bench_pipeline.py [--frames 900] [--soak-s 60]

On MobileNetV2 int8 and a 640x480 MJPEG video file:
- the CPU ceiling: each stage a frame needs (decode, resize+quantize, invoke, top-5) timed
  alone in CPU seconds; cores / (sum per frame) is the most frames/s the machine can do;
- a naive sequential loop (read, resize, quantize, invoke, top-5, JSON line), the obvious way;
- the agent's pipeline on the same file: throughput against both;
- pre-made tensors through the pipeline against the bare invoke() loop: the pipeline's cost;
- p99 latency (frame read to hand-off) with the source paced at half the pipeline's capacity,
  against the sum of the stages timed alone;
- `edge-agent run` as a process: start to first result, peak RSS, RSS over --soak-s seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.runtime.backend import select_backend  # noqa: E402
from edge_agent.runtime.loader import load_model  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2_int8.tflite"
CORES = os.cpu_count() or 1


def make_video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    rng = np.random.default_rng(0)
    background = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(background, (31, 31), 0)
    for i in range(frames):
        frame = background.copy()
        x = (i * 7) % 560
        cv2.rectangle(frame, (x, 180), (x + 80, 300), (0, 0, 255), -1)
        cv2.putText(frame, str(i), (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        writer.write(frame)
    writer.release()


def stage_costs(video: Path) -> dict[str, float]:
    """CPU seconds per frame of each stage, each run alone on one thread."""
    from edge_agent.runtime.predictor import Predictor

    model = load_model(MODEL, select_backend("litert"), threads=1)
    predictor = Predictor(model)
    cap = cv2.VideoCapture(str(video))
    frames = []
    t = time.thread_time()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    decode = (time.thread_time() - t) / len(frames)
    t = time.thread_time()
    samples = [predictor.prepare(f)[0] for f in frames]
    preprocess = (time.thread_time() - t) / len(frames)
    n = min(len(samples), 300)
    t = time.thread_time()
    raw = [model.run(s[None]) for s in samples[:n]]
    invoke = (time.thread_time() - t) / n
    t = time.thread_time()
    for out in raw:
        predictor.decoder([o[0] for o in model.dequantize(out)])
    top5 = (time.thread_time() - t) / n
    return {"decode": decode, "preprocess": preprocess, "invoke": invoke, "top5": top5}


def naive_loop(video: Path, out: Path) -> float:
    """What one writes by hand: read, resize, quantize, invoke, top-5, a JSON line."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(MODEL), num_threads=CORES)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outp = interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    o_scale, o_zero = outp["quantization"]
    cap = cv2.VideoCapture(str(video))
    count = 0
    started = time.perf_counter()
    with out.open("w") as f:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(cv2.resize(frame, (224, 224)), cv2.COLOR_BGR2RGB)
            x = rgb.astype(np.float32) / 255.0
            q = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)
            interpreter.set_tensor(inp["index"], q[None])
            interpreter.invoke()
            scores = (
                interpreter.get_tensor(outp["index"])[0].astype(np.float32) - o_zero
            ) * o_scale
            top = np.argsort(-scores)[:5]
            f.write(
                json.dumps({"frame": count, "top": [[int(i), float(scores[i])] for i in top]})
                + "\n"
            )
            count += 1
    return count / (time.perf_counter() - started)
