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

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config.settings import AgentSettings  # noqa: E402
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


class CountingSink:
    """Counts results and notes when the first and last arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()

    def put(self, payload: Any, on_durable: Any = None) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if self.count >= self.expected:
            self.done.set()

    def close(self, timeout: float = 5.0) -> None:
        pass


def agent_settings(
    state: Path, source: dict[str, Any], threads: int, queue: int, replicas: int = 1
) -> AgentSettings:
    return AgentSettings(
        device={"id": "bench", "state_dir": state},
        models={"m": {"path": MODEL, "threads": threads, "replicas": replicas}},
        sources={"s": source},
        pipelines={"p": {"source": "s", "model": "m", "queue_size": queue}},
    )


def run_pipeline(settings: AgentSettings, expected: int) -> tuple[float, Agent]:
    """Results per second from the first frame read to the last result."""
    sink = CountingSink(expected)
    agent = Agent(settings, sink=sink)
    agent.start()
    started = time.perf_counter()
    sink.done.wait(600)
    elapsed = sink.last - started
    agent.stop()
    return sink.count / elapsed, agent


def pipeline_on_file(
    video: Path, frames: int, state: Path, threads: int, replicas: int
) -> tuple[float, Agent]:
    source = {"kind": "camera", "device": str(video)}
    # A queue as long as the file: every frame is inferred, none dropped.
    return run_pipeline(agent_settings(state, source, threads, frames, replicas), frames)


def tensors_vs_bare(state: Path, threads: int, count: int) -> tuple[float, float]:
    from edge_agent.sources import REGISTRY
    from edge_agent.sources.base import Frame, Source
    from edge_agent.sources.synthetic import SyntheticSource

    model = load_model(MODEL, select_backend("litert"), threads=threads)
    rng = np.random.default_rng(0)
    tensors = [
        rng.integers(-128, 127, size=model.input.sample_shape, dtype=np.int8) for _ in range(8)
    ]

    class TensorSource(SyntheticSource):
        """Pre-made model-input tensors: the pipeline without decode or preprocessing."""

        def read(self) -> Frame | None:
            frame = super().read()
            if frame is not None:
                frame.data = tensors[frame.index % len(tensors)]
            return frame

    REGISTRY["synthetic"] = TensorSource
    try:
        source = {"kind": "synthetic", "pattern": "bars", "width": 8, "height": 8, "count": count}
        fps, _ = run_pipeline(agent_settings(state, source, threads, count), count)
    finally:
        REGISTRY["synthetic"] = SyntheticSource
    assert issubclass(TensorSource, Source)

    interpreter = model.interpreter
    index = model.input.index
    out = model.outputs[0].index
    started = time.perf_counter()
    for i in range(count):
        interpreter.set_tensor(index, tensors[i % len(tensors)][None])
        interpreter.invoke()
        interpreter.get_tensor(out)
    bare = count / (time.perf_counter() - started)
    return fps, bare


def paced_latency(
    video: Path, state: Path, fps: float, threads: int, replicas: int
) -> dict[str, Any]:
    source = {"kind": "camera", "device": str(video), "fps": fps, "loop": False}
    settings = agent_settings(state, source, threads, 4, replicas)
    sink = CountingSink(10**9)
    agent = Agent(settings, sink=sink)
    agent.start()
    hub = agent.hubs["s"]
    while hub.runner.state.value not in ("ended", "failed"):
        time.sleep(0.2)
    time.sleep(0.5)
    agent.stop()
    return agent.pipelines["p"].stats.snapshot()


def process_figures(video: Path, state: Path, soak_s: float) -> dict[str, float]:
    """`edge-agent run` as a process: start to first result, RSS over time."""
    import psutil

    state.mkdir(parents=True, exist_ok=True)
    config = state / "run.toml"
    config.write_text(
        f"""
[device]
id = "bench"
state_dir = "{state}"
[models.m]
path = "{MODEL}"
threads = 1
[sources.s]
kind = "camera"
device = "{video}"
loop = true
fps = 30
[pipelines.p]
source = "s"
model = "m"
[output]
jsonl = "-"
[logging]
level = "warning"
status_interval_s = 0
"""
    )
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    first_result = time.perf_counter() - started
    # Keep reading results so the pipe never blocks the agent.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    process = psutil.Process(proc.pid)
    samples = []
    end = time.monotonic() + soak_s
    while time.monotonic() < end:
        samples.append(process.memory_info().rss / 2**20)
        time.sleep(1.0)
    proc.send_signal(2)
    proc.wait(10)
    warm = samples[min(len(samples) - 1, 5) :] or samples
    return {
        "first_result_s": first_result,
        "peak_rss_mb": max(samples),
        "rss_start_mb": warm[0],
        "rss_end_mb": warm[-1],
        "rss_drift": (max(warm) - min(warm)) / warm[0],
    }


def row(label: str, value: str, baseline: str = "", ratio: str = "", target: str = "") -> None:
    print(f"{label:<46}{value:>12}{baseline:>12}{ratio:>8}  {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--soak-s", type=float, default=60.0, help="RSS watch (600: 10 min)")
    parser.add_argument(
        "--threads", type=int, default=1, help="interpreter threads in the pipeline"
    )
    parser.add_argument("--replicas", type=int, default=2, help="interpreters in the pipeline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        video = work / "clip.avi"
        make_video(video, args.frames)

        costs = stage_costs(video)
        per_frame = sum(costs.values())
        ceiling = CORES / per_frame
        naive = naive_loop(video, work / "naive.jsonl")
        pipeline, _ = pipeline_on_file(video, args.frames, work / "s1", args.threads, args.replicas)
        tensor_runs = {t: tensors_vs_bare(work / f"s2-{t}", t, 1000) for t in (1, 2)}
        stats = paced_latency(video, work / "s3", pipeline / 2, args.threads, args.replicas)
        proc = process_figures(video, work / "s4", args.soak_s)

    print(f"MobileNetV2 int8, 640x480 MJPEG file of {args.frames} frames, {CORES} cores\n")
    print(
        "stage CPU per frame, each alone: "
        + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in costs.items())
    )
    print(f"CPU ceiling: {CORES} cores / {per_frame * 1000:.2f} ms = {ceiling:.0f} frames/s\n")
    row("figure", "agent", "baseline", "ratio", "target")
    row(
        "pipeline throughput vs CPU ceiling [fps]",
        f"{pipeline:.0f}",
        f"{ceiling:.0f}",
        f"{pipeline / ceiling:.2f}",
        ">= 0.85",
    )
    row(
        "pipeline throughput vs naive loop [fps]",
        f"{pipeline:.0f}",
        f"{naive:.0f}",
        f"{pipeline / naive:.2f}",
        ">= 1.4",
    )
    for threads, (tensor_fps, bare_fps) in tensor_runs.items():
        row(
            f"pre-made tensors vs bare invoke(), {threads} thr [fps]",
            f"{tensor_fps:.0f}",
            f"{bare_fps:.0f}",
            f"{tensor_fps / bare_fps:.2f}",
            ">= 0.95",
        )
    p99 = stats["latency_ms"]["total"]["p99"]
    alone = (costs["decode"] + costs["preprocess"] + costs["invoke"] + costs["top5"]) * 1000
    row(
        f"p99 read-to-hand-off at {pipeline / 2:.0f} fps [ms]",
        f"{p99:.1f}",
        f"{alone:.1f}",
        f"{p99 / alone:.2f}",
        "<= 1.5",
    )
    row("process start to first result [s]", f"{proc['first_result_s']:.2f}", "", "", "< 1")
    row("peak RSS [MB]", f"{proc['peak_rss_mb']:.0f}", "", "", "< 150")
    row(
        f"RSS drift over {args.soak_s:.0f} s (max-min)/start",
        f"{proc['rss_drift']:.1%}",
        "",
        "",
        "<= 5%",
    )
    print(f"\nlatency p50/p95/p99 by stage [ms]: {json.dumps(stats['latency_ms'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
