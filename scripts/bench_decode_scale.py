#!/usr/bin/env python3
"""Reduced-scale JPEG decoding: what it saves per frame, and what the pipeline makes of it.

    .venv/bin/python scripts/bench_decode_scale.py [--frames 600] [--runs 2] [--json]

On MobileNetV2 int8 (224x224) and a 640x480 MJPEG video file:
- decode CPU per frame: OpenCV's capture decoding whole frames (decode_scale = "full"),
  the compressed packet decoded whole, and the packet decoded at half scale (320x240, what
  decode_scale = "auto" does for a 224x224 model);
- the CPU ceiling both ways, as scripts/bench_pipeline.py computes it: each stage (decode,
  preprocess, invoke, top-5) timed alone in CPU seconds, cores / their sum per frame;
- the agent's pipeline on the same file with each setting: results/s against its ceiling.
With --json, one JSON object of the figures on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_pipeline import agent_settings, make_video, run_pipeline  # noqa: E402

from edge_agent.runtime.backend import select_backend  # noqa: E402
from edge_agent.runtime.loader import load_model  # noqa: E402
from edge_agent.runtime.predictor import Predictor  # noqa: E402
from edge_agent.sources.jpeg import decode  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2_int8.tflite"
CORES = os.cpu_count() or 1
WANTED = (224, 224)  # MobileNetV2's input


# CPU of the whole process, not of the calling thread: FFmpeg decodes in threads of its
# own, which thread_time() would leave out. Nothing else runs while a stage is timed.
# Each is timed REPEATS times and the least kept: neighbours on shared cores only add.
REPEATS = 3


def cpu_per_item(items: list[Any], work: Callable[[Any], Any]) -> tuple[float, list[Any]]:
    """CPU seconds per item (the least of REPEATS passes), and the results."""
    best = float("inf")
    out: list[Any] = []
    for _ in range(REPEATS):
        started = time.process_time()
        out = [work(item) for item in items]
        best = min(best, (time.process_time() - started) / len(items))
    return best, out


def read_file(video: Path, raw: bool) -> list[Any]:
    """Every frame of the file: decoded whole by OpenCV's capture (as decode_scale = "full"
    reads), or as compressed packets (as "auto" takes an MJPEG file)."""
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    if raw:
        assert cap.set(cv2.CAP_PROP_FORMAT, -1), "this OpenCV cannot hand out raw packets"
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def per_frame(video: Path, raw: bool) -> tuple[float, list[Any]]:
    frames: list[Any] = []

    def read(_: Any) -> None:
        frames[:] = read_file(video, raw)

    seconds, _ = cpu_per_item([None], read)
    return seconds / len(frames), frames


def stage_costs(video: Path) -> dict[str, Any]:
    model = load_model(MODEL, select_backend("litert"), threads=1)
    predictor = Predictor(model)
    capture_s, frames = per_frame(video, raw=False)
    read_s, raw = per_frame(video, raw=True)
    whole_s, _ = cpu_per_item(raw, lambda p: decode(p, None))
    reduced_s, reduced = cpu_per_item(raw, lambda p: decode(p, WANTED))
    assert reduced[0].image.shape == (240, 320, 3), reduced[0].image.shape
    pre_full_s, samples = cpu_per_item(frames, lambda f: predictor.prepare(f)[0])
    pre_reduced_s, _ = cpu_per_item(reduced, lambda d: predictor.prepare(d.image, d.full_size))
    n = min(len(samples), 300)
    invoke_s, outputs = cpu_per_item(samples[:n], lambda s: model.run(s[None]))
    top5_s, _ = cpu_per_item(
        outputs, lambda out: predictor.decoder([o[0] for o in model.dequantize(out)])
    )
    full = {"decode": capture_s, "preprocess": pre_full_s, "invoke": invoke_s, "top5": top5_s}
    auto = {
        "decode": read_s + reduced_s,
        "preprocess": pre_reduced_s,
        "invoke": invoke_s,
        "top5": top5_s,
    }
    return {
        "decode_ms": {
            "capture_full": capture_s * 1000,
            "packet_read": read_s * 1000,
            "packet_decode_full": whole_s * 1000,
            "packet_decode_half": reduced_s * 1000,
        },
        "stages_ms": {
            "full": {k: v * 1000 for k, v in full.items()},
            "auto": {k: v * 1000 for k, v in auto.items()},
        },
        "ceiling_fps": {
            "full": CORES / sum(full.values()),
            "auto": CORES / sum(auto.values()),
        },
    }


def pipeline_fps(video: Path, frames: int, work: Path, scale: str) -> float:
    source = {"kind": "camera", "device": str(video), "decode_scale": scale}
    # A queue as long as the file: every frame is inferred, none dropped.
    settings = agent_settings(work, source, threads=1, queue=frames, replicas=2)
    fps, _ = run_pipeline(settings, frames)
    return fps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3, help="pipeline runs per setting")
    parser.add_argument("--json", action="store_true", help="one JSON object of the figures")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = work / "clip.avi"
        make_video(video, args.frames)
        figures = stage_costs(video)
        runs: dict[str, list[float]] = {"full": [], "auto": []}
        for i in range(args.runs):  # alternated, so a noisy neighbour hits both alike
            for scale in runs:
                runs[scale].append(pipeline_fps(video, args.frames, work / f"{scale}{i}", scale))

    best = {scale: max(fps) for scale, fps in runs.items()}
    ceiling = figures["ceiling_fps"]
    figures.update(
        {
            "model": MODEL.name,
            "video": f"640x480 MJPEG, {args.frames} frames",
            "cores": CORES,
            "pipeline_fps": best,
            "pipeline_runs_fps": runs,
            "pipeline_vs_ceiling": {s: best[s] / ceiling[s] for s in best},
        }
    )
    if args.json:
        print(json.dumps(figures))
        return 0
    decode_ms = figures["decode_ms"]
    print(f"MobileNetV2 int8, 640x480 MJPEG file of {args.frames} frames, {CORES} cores\n")
    print("decode CPU per frame [ms]:")
    rows = {
        "capture_full": "OpenCV capture, whole frame (decode_scale full)",
        "packet_read": "packet read",
        "packet_decode_full": "packet decoded whole",
        "packet_decode_half": "packet decoded at 1/2, 320x240 (auto)",
    }
    for key, label in rows.items():
        print(f"  {label:<50}{decode_ms[key]:6.2f}")
    print()
    for scale in ("full", "auto"):
        stages = figures["stages_ms"][scale]
        per_frame = sum(stages.values())
        print(
            f"{scale:>4}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
            + f" ms; ceiling {CORES} / {per_frame:.2f} ms = {ceiling[scale]:.0f} fps; "
            f"pipeline {best[scale]:.0f} fps ({best[scale] / ceiling[scale]:.2f} of it; "
            f"runs {', '.join(f'{r:.0f}' for r in runs[scale])})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
