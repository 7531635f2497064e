#!/usr/bin/env python3
"""Pipeline benchmark: the agent's figures beside their baselines, measured in one run.

    .venv/bin/python scripts/bench_pipeline.py [--frames 900] [--soak-s 20] [--json]

On MobileNetV2 int8 and a 640x480 MJPEG video file:
- the CPU ceiling: each stage a frame needs (decode, resize+quantize, invoke, top-5) timed
  alone in CPU seconds; cores / (sum per frame) is the most frames/s the machine can do;
- a naive sequential loop (read, resize, quantize, invoke, top-5, JSON line), the obvious way;
- the agent's pipeline on the same file: throughput against both;
- `edge-agent run` as a process on the same file, lossless (on_full = "wait"), results to a
  JSON-lines file: its throughput against the naive loop's;
- pre-made tensors through the pipeline against the bare invoke() loop: the pipeline's cost;
- p99 latency (frame read to hand-off, through the real outbox writer) with the source paced
  at half the pipeline's capacity, against the sum of the stages' own p99s in the same run
  (capture, preprocess, infer, decode, handoff; the queue wait is shown, not summed: it is
  part of the tail being measured);
- `edge-agent run` as a process: start to first result, peak RSS, RSS over --soak-s seconds.

--json prints one JSON object with every figure and its baseline instead of the table.
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
    """Stage and total latencies with the source paced at `fps`, results through the
    agent's own sink (the outbox writer), as a deployed agent hands them off."""
    source = {"kind": "camera", "device": str(video), "fps": fps, "loop": False}
    agent = Agent(agent_settings(state, source, threads, 4, replicas))
    agent.start()
    hub = agent.hubs["s"]
    while hub.runner.state.value not in ("ended", "failed"):
        time.sleep(0.2)
    time.sleep(0.5)
    agent.stop()
    return agent.pipelines["p"].stats.snapshot()


WORK_STAGES = ("capture", "preprocess", "infer", "decode", "handoff")


def run_config(state: Path, body: str) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    config = state / "run.toml"
    config.write_text(f'[device]\nid = "bench"\nstate_dir = "{state}"\n{body}')
    return config


def process_throughput(video: Path, frames: int, state: Path, threads: int, replicas: int) -> float:
    """`edge-agent run` on the file, every frame inferred (on_full = "wait"), results to a
    JSON-lines file: results per second from the first frame's capture to the last line."""
    results = state / "results.jsonl"
    config = run_config(
        state,
        f"""
[models.m]
path = "{MODEL}"
threads = {threads}
replicas = {replicas}
[sources.s]
kind = "camera"
device = "{video}"
[pipelines.p]
source = "s"
model = "m"
on_full = "wait"
[output]
jsonl = "{results}"
[logging]
level = "warning"
status_interval_s = 0
""",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    count, last, read = 0, 0.0, 0
    deadline = time.monotonic() + 300
    try:
        # Only what was appended since the last look: polling must not compete for the CPU.
        while count < frames and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
            if results.exists():
                with results.open("rb") as f:
                    f.seek(read)
                    more = f.read()
                read += len(more)
                if more.count(b"\n"):
                    count, last = count + more.count(b"\n"), time.time()
    finally:
        proc.send_signal(2)
        proc.wait(10)
    first = json.loads(results.open().readline())["ts"]  # wall time of frame 0's capture
    return count / (last - first)


def process_figures(video: Path, state: Path, soak_s: float) -> dict[str, float]:
    """`edge-agent run` as a process: start to first result, RSS over time."""
    import psutil

    config = run_config(
        state,
        f"""
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
""",
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


def figure(value: float, baseline: float | None, target: str, unit: str) -> dict[str, Any]:
    ratio = value / baseline if baseline else None
    return {"value": value, "baseline": baseline, "ratio": ratio, "target": target, "unit": unit}


def row(label: str, f: dict[str, Any]) -> None:
    def num(x: float | None) -> str:
        if x is None:
            return ""
        return f"{x:.1%}" if f["unit"] == "share" else f"{x:.2f}" if x < 10 else f"{x:.0f}"

    ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}"
    print(f"{label:<50}{num(f['value']):>10}{num(f['baseline']):>10}{ratio:>8}  {f['target']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=900)
    parser.add_argument("--soak-s", type=float, default=20.0, help="RSS watch (600: 10 min)")
    parser.add_argument(
        "--threads", type=int, default=1, help="interpreter threads in the pipeline"
    )
    parser.add_argument("--replicas", type=int, default=2, help="interpreters in the pipeline")
    parser.add_argument("--json", action="store_true", help="one JSON object, every figure")
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
        process = process_throughput(video, args.frames, work / "s5", args.threads, args.replicas)
        tensor_runs = {t: tensors_vs_bare(work / f"s2-{t}", t, 1000) for t in (1, 2)}
        stats = paced_latency(video, work / "s3", pipeline / 2, args.threads, args.replicas)
        proc = process_figures(video, work / "s4", args.soak_s)

    latency = stats["latency_ms"]
    stage_p99 = {stage: latency[stage]["p99"] for stage in (*WORK_STAGES, "queue")}
    summed = sum(stage_p99[stage] for stage in WORK_STAGES)
    figures = {
        "pipeline_vs_ceiling": figure(pipeline, ceiling, ">= 0.95", "fps"),
        "pipeline_vs_naive": figure(pipeline, naive, ">= 1.4", "fps"),
        "process_vs_naive": figure(process, naive, ">= 1.8", "fps"),
        **{
            f"tensors_vs_bare_{t}thr": figure(tensor_fps, bare_fps, ">= 0.97", "fps")
            for t, (tensor_fps, bare_fps) in tensor_runs.items()
        },
        "p99_vs_stage_p99s": figure(latency["total"]["p99"], summed, "<= 1.3", "ms"),
        "first_result_s": figure(proc["first_result_s"], None, "< 1", "s"),
        "peak_rss_mb": figure(proc["peak_rss_mb"], None, "< 150", "MB"),
        "rss_drift": figure(proc["rss_drift"], None, "<= 5%", "share"),
    }
    if args.json:
        report = {
            "frames": args.frames,
            "cores": CORES,
            "threads": args.threads,
            "replicas": args.replicas,
            "soak_s": args.soak_s,
            "stage_cpu_ms": {k: v * 1000 for k, v in costs.items()},
            "paced_fps": pipeline / 2,
            "latency_ms": latency,
            "figures": figures,
        }
        print(json.dumps(report))
        return 0

    print(f"MobileNetV2 int8, 640x480 MJPEG file of {args.frames} frames, {CORES} cores\n")
    print(
        "stage CPU per frame, each alone: "
        + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in costs.items())
    )
    print(f"CPU ceiling: {CORES} cores / {per_frame * 1000:.2f} ms = {ceiling:.0f} frames/s\n")
    print(f"{'figure':<50}{'agent':>10}{'baseline':>10}{'ratio':>8}  target")
    row("pipeline throughput vs CPU ceiling [fps]", figures["pipeline_vs_ceiling"])
    row("pipeline throughput vs naive loop [fps]", figures["pipeline_vs_naive"])
    row("`edge-agent run` process vs naive loop [fps]", figures["process_vs_naive"])
    for t in tensor_runs:
        row(f"pre-made tensors vs bare invoke(), {t} thr [fps]", figures[f"tensors_vs_bare_{t}thr"])
    row(
        f"p99 read-to-hand-off at {pipeline / 2:.0f} fps vs sum of stage p99s [ms]",
        figures["p99_vs_stage_p99s"],
    )
    row("process start to first result [s]", figures["first_result_s"])
    row("peak RSS [MB]", figures["peak_rss_mb"])
    row(f"RSS drift over {args.soak_s:.0f} s (max-min)/start", figures["rss_drift"])
    print(
        "\np99 by stage [ms]: "
        + ", ".join(f"{stage} {p99:.2f}" for stage, p99 in stage_p99.items())
        + f" (summed without queue: {summed:.2f}); total {latency['total']['p99']:.2f}"
    )
    print(f"latency p50/p95/p99 by stage [ms]: {json.dumps(latency)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
