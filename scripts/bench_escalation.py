#!/usr/bin/env python3
"""Escalation figures in one run, side by side (docs/escalation.md):

- throughput: a real Agent (MobileNetV2 int8, threads 1, replicas 2) on a 640x480 MJPEG
  file, lossless (on_full = "wait": every frame a result), results through the outbox and
  the sender to a private Mosquitto; escalation off against on with a top-1 score band
  calibrated so that about --share of the results escalate (as JPEG frames) to one
  `edge-fleet serve-escalation` process running a bigger model (--server-model). Runs
  alternate, --rounds times; medians. The share actually escalated is measured and printed.
  Target: on / off >= 0.97;
- the round trip (stored, published, answered, settled), p50 and p99, against a local
  server, requests paced so that none queues behind another: an 8x8 digits tensor to
  digits_big_float, and a 640x480 JPEG frame to the bigger image model;
- on the digits test split, accuracy of the device alone (digits_int8) against the device
  plus escalation of the results in a band (--band, or the calibrated --digits-share) to
  --big, and of --big alone.

The servers are processes of their own under SCHED_IDLE (--server-normal: not): on a
machine whose cores the agent fills they answer from idle time only, as a server on
another machine would take nothing from the device's cores; their CPU seconds during each
"on" run and its backlog are printed. Starts its own
Mosquitto on a free port (never the machine's own).

    .venv/bin/python scripts/bench_escalation.py [--frames 3000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_link import start_broker  # noqa: E402
from bench_pipeline import make_video  # noqa: E402

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config.settings import (  # noqa: E402
    AgentSettings,
    EscalateSettings,
    MqttSettings,
    OutboxSettings,
)
from edge_agent.escalation.client import EscalationClient  # noqa: E402
from edge_agent.escalation.policy import top1  # noqa: E402
from edge_agent.link.mqtt import MqttLink  # noqa: E402
from edge_agent.outbox.store import Outbox  # noqa: E402
from edge_agent.outbox.writer import OutboxWriter  # noqa: E402
from edge_agent.payloads import Envelope, ModelRef, ResultPayload  # noqa: E402
from edge_agent.runtime.backend import select_backend  # noqa: E402
from edge_agent.runtime.loader import load_model  # noqa: E402
from edge_agent.runtime.predictor import Predictor  # noqa: E402
from edge_agent.sinks import ResultSink  # noqa: E402
from edge_agent.sources.base import Frame  # noqa: E402

MODELS = ROOT / "models"
MODEL = MODELS / "mobilenet_v2_int8.tflite"
# Budgets out of the way: the band alone decides what escalates.
UNLIMITED = {"max_per_minute": 1_000_000, "max_bytes_per_hour": 10**13}


def wait(predicate: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


# The servers --------------------------------------------------------------------------


class Server:
    """`edge-fleet serve-escalation` as a process of its own."""

    def __init__(self, folder: Path, model: Path, port: int, prefix: str, idle: bool) -> None:
        self.log = folder / f"server-{prefix}.log"
        command = [
            str(Path(sys.executable).parent / "edge-fleet"),
            "serve-escalation",
            "--model",
            str(model),
            "--broker",
            f"127.0.0.1:{port}",
            "--prefix",
            prefix,
            "--client-id",
            f"bench-server-{prefix}",
            "--threads",
            "1",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=out, preexec_fn=_idle_priority if idle else None
            )
        self.ps = psutil.Process(self.proc.pid)
        if not wait(lambda: "serving" in self.log.read_text(), 30, 0.1):
            self.stop()
            raise RuntimeError(f"the escalation server did not start: {self.log.read_text()}")

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def settle(self, timeout: float = 120.0) -> None:
        """Waits until the server's CPU stops moving: its backlog done, so that it does not
        run into the next measurement."""
        end = time.monotonic() + timeout
        last = self.cpu_s()
        while time.monotonic() < end:
            time.sleep(0.5)
            now = self.cpu_s()
            if now - last < 0.01:
                return
            last = now

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _idle_priority() -> None:
    """SCHED_IDLE: the process runs only on a core nothing else wants, as a server on
    another machine would take nothing from the device's cores."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


# Throughput: a real Agent on a file ---------------------------------------------------


class TimingSink:
    """Forwards results to the agent's own outbox writer; notes the first frame's capture,
    the last device result's hand-off and each one's top-1 score. Refined records (the
    escalation client's) are forwarded, not counted."""

    def __init__(self) -> None:
        self.inner: ResultSink | None = None
        self.count = 0
        self.first = float("inf")
        self.last = 0.0
        self.scores: list[float] = []

    def put(self, payload: Any, on_durable: Callable[[], None] | None = None) -> None:
        if getattr(payload, "refines", None) is None:
            self.count += 1
            self.first = min(self.first, payload.ts)
            self.last = time.time()
            self.scores.append(top1(payload.result)[1] or 0.0)
        assert self.inner is not None
        self.inner.put(payload, on_durable)

    def close(self, timeout: float = 5.0) -> None:
        if self.inner is not None:
            self.inner.close(timeout)


def agent_run(
    state: Path, video: Path, frames: int, port: int, escalate: dict[str, Any] | None
) -> dict[str, Any]:
    pipeline: dict[str, Any] = {"source": "s", "model": "m", "on_full": "wait"}
    if escalate is not None:
        pipeline["escalate"] = {"enabled": True, "send": "jpeg", **UNLIMITED, **escalate}
    settings = AgentSettings(
        device={"id": "bench", "state_dir": state},
        models={"m": {"path": MODEL, "threads": 1, "replicas": 2}},
        sources={"s": {"kind": "camera", "device": str(video)}},
        pipelines={"p": pipeline},
        mqtt={"enabled": True, "host": "127.0.0.1", "port": port},
    )
    sink = TimingSink()
    agent = Agent(settings, sink=sink)
    sink.inner = agent.writer
    cpu_before = _process_cpu()
    agent.start()
    wait(lambda: sink.count >= frames, 600, 0.05)
    threads = thread_cpu()
    cpu = _process_cpu() - cpu_before
    counts = agent.escalation.snapshot() if agent.escalation is not None else {}
    agent.stop()
    return {
        "fps": sink.count / (sink.last - sink.first),
        "results": sink.count,
        "escalated": counts.get("band", 0) + counts.get("audit", 0),
        "counts": counts,
        "scores": sink.scores,
        "cpu_ms_per_frame": round(cpu / sink.count * 1000, 3),
        "thread_cpu_ms_per_frame": {k: round(v / sink.count * 1000, 3) for k, v in threads.items()},
    }


def _process_cpu() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's threads so far, summed by name (digits dropped: the
    replicas' and paho's numbered threads together)."""
    by_id = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    found: dict[str, float] = {}
    for thread in threading.enumerate():
        name = "".join(c for c in thread.name if not c.isdigit()).strip("-_ ")
        seconds = by_id.get(thread.native_id or -1, 0.0)
        found[name] = found.get(name, 0.0) + seconds
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def band_top(scores: list[float], share: float) -> tuple[float, float] | None:
    """The highest top-1 score t with at most `share` of `scores` at or below it, and that
    share; None when the lowest score alone is more common than `share`."""
    values = np.sort(np.array(scores))
    best = None
    for t in np.unique(values):
        caught = float(np.searchsorted(values, t, side="right")) / len(values)
        if caught > share:
            break
        best = (float(t), caught)
    return best


def choose_selection(scores: list[float], share: float) -> tuple[dict[str, Any], str]:
    """The escalate settings that send about `share` of the results: a band over the
    lowest scores; or, when the scores tie too much for a band to come near `share` (a
    model with random weights scores every frame alike), the audit sample at `share`."""
    found = band_top(scores, share)
    if found is not None and found[1] >= share / 2:
        return {"min_score": 0.0, "max_score": found[0]}, f"band [0, {found[0]:.4f}]"
    values = np.array(scores)
    spread = f"{values.min():.3f}..{values.max():.3f}"
    # Above every score short of certainty: the band catches nothing.
    audit = {"min_score": 1.0, "max_score": 1.0, "sample_rate": share}
    return audit, f"audit sample {share} (top-1 scores {spread}: no band comes near {share})"


def throughput(args: argparse.Namespace, work: Path, port: int, server: Server) -> dict[str, Any]:
    video = work / "clip.avi"
    make_video(video, args.frames)
    # A first run with escalation off warms the caches and gives the scores the band
    # is calibrated on: the lowest --share of them (the least sure results).
    warm = agent_run(work / "warm", video, args.frames, port, None)
    band, selection = choose_selection(warm["scores"], args.share)
    off: list[dict[str, Any]] = []
    on: list[dict[str, Any]] = []
    server_cpu: list[float] = []
    for i in range(args.rounds):  # in turns, so drift hits both alike
        off.append(agent_run(work / f"off{i}", video, args.frames, port, None))
        before = server.cpu_s()
        on.append(agent_run(work / f"on{i}", video, args.frames, port, band))
        server.settle()
        server_cpu.append(server.cpu_s() - before)
    fps_off = statistics.median(r["fps"] for r in off)
    fps_on = statistics.median(r["fps"] for r in on)
    shares = [r["escalated"] / r["results"] for r in on]
    return {
        "throughput_off_fps": round(fps_off, 1),
        "throughput_on_fps": round(fps_on, 1),
        "throughput_ratio": round(fps_on / fps_off, 3),
        "throughput_target": ">= 0.97",
        "runs_off_fps": [round(r["fps"], 1) for r in off],
        "runs_on_fps": [round(r["fps"], 1) for r in on],
        "escalated_share": round(statistics.median(shares), 4),
        "escalated_per_run": [f"{r['escalated']}/{r['results']}" for r in on],
        "selection": selection,
        "server_cpu_s_per_on_run": [round(s, 2) for s in server_cpu],
        "client_counts_last_on_run": on[-1]["counts"],
        "cpu_ms_per_frame_off_on": [off[-1]["cpu_ms_per_frame"], on[-1]["cpu_ms_per_frame"]],
        "thread_cpu_ms_per_frame_off": off[-1]["thread_cpu_ms_per_frame"],
        "thread_cpu_ms_per_frame_on": on[-1]["thread_cpu_ms_per_frame"],
    }


# Round trips and accuracy: the escalation client of its own ------------------------


class DeviceSide:
    """The agent's escalation client with its own link, outbox and writer."""

    def __init__(self, folder: Path, port: int, prefix: str, device: str) -> None:
        self.outbox = Outbox(folder / f"outbox-{device}.db", OutboxSettings())
        self.writer = OutboxWriter(self.outbox, prefix, device)
        mqtt = MqttSettings(enabled=True, port=port, topic_prefix=prefix)
        self.link = MqttLink(mqtt, device, dict)
        self.envelope = Envelope(device)
        self.client = EscalationClient(
            self.link, self.outbox, self.writer, self.writer, prefix, device, self.envelope
        )
        self.client.start()
        self.link.start()
        assert self.link.connected.wait(10)

    def result(self, pipeline: str, result: dict[str, Any]) -> ResultPayload:
        env = self.envelope
        return ResultPayload.model_construct(
            id=env.new_id(),
            seq=env.next_seq(),
            ts=time.time(),
            boot_id=env.boot_id,
            device=env.device,
            pipeline=pipeline,
            source={"name": "bench", "index": 0},
            model=ModelRef(name="device", version="1", sha256="0"),
            delegate="cpu",
            cached=False,
            latency_ms={},
            result=result,
        )

    def answered(self) -> int:
        return self.client.counts.get("answered", 0)

    def refined(self) -> dict[str, dict[str, Any]]:
        """The answered refined records, by the id of the result they refine."""
        self.writer.flush(30)
        rows = self.outbox._db.execute("SELECT payload FROM messages WHERE class='result'")
        records = (json.loads(body) for (body,) in rows)
        return {r["refines"]: r for r in records if r.get("escalation") == "answered"}

    def close(self) -> None:
        self.client.stop()
        self.link.stop()
        self.writer.close()
        self.outbox.close()


def paced_round_trips(
    side: DeviceSide, count: int, offer: Callable[[], None], gap_s: float
) -> dict[str, float]:
    """`count` requests, each offered once the one before was answered (and at least
    `gap_s` apart): the round trip without queueing behind another request."""
    side.client.round_trips.clear()
    for _ in range(count):
        target = side.answered() + 1
        offer()
        wait(lambda: side.answered() >= target, 30, 0.002)  # noqa: B023
        time.sleep(gap_s)
    trips = sorted(side.client.round_trips)
    p50, p99 = (float(np.percentile(trips, q)) * 1000 for q in (50, 99))
    return {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "n": len(trips)}


def image_round_trips(args: argparse.Namespace, work: Path, port: int) -> dict[str, float]:
    """640x480 JPEG frames to the bigger image model (the throughput runs' server)."""
    side = DeviceSide(work, port, "edge", "bench-trips")
    try:
        image = cv2.GaussianBlur(
            np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8), (31, 31), 0
        )
        frame = Frame(image, time.monotonic(), time.time(), 0)
        frame.jpeg = cv2.imencode(".jpg", image)[1]
        settings = EscalateSettings(enabled=True, min_score=0.0, max_score=1.0, **UNLIMITED)
        payload = {"top": [{"label": "x", "score": 0.5}]}
        sample = np.zeros((224, 224, 3), np.int8)
        quant = Predictor(load_model(MODEL, select_backend("auto"), (), 1)).model.input.quant
        offer = lambda: side.client.offer(  # noqa: E731
            settings, side.result("p", payload), frame, sample, quant
        )
        return paced_round_trips(side, args.trips, offer, 0.02)
    finally:
        side.close()


def digits(args: argparse.Namespace, work: Path, port: int) -> dict[str, Any]:
    """Round trips of digits tensors, then the test split's accuracy."""
    server = Server(work, args.big, port, "digits", not args.server_normal)
    side = DeviceSide(work, port, "digits", "bench-digits")
    backend = select_backend("auto")
    device = Predictor(load_model(MODELS / "digits_int8.tflite", backend, (), 1))
    data = np.load(MODELS / "data" / "digits_test.npz")
    xs, ys = data["x"], data["y"]
    samples = [device.tensor_sample(x, "bench") for x in xs]
    quant = device.model.input.quant
    frame = Frame(np.zeros((8, 8), np.uint8), time.monotonic(), time.time(), 0)
    predicted = [device.predict([s], [None])[0].result for s in samples]
    scores = np.array([top1(r)[1] or 0.0 for r in predicted])
    if args.band is not None:
        low, high = args.band
    else:
        low, high = 0.0, (band_top(list(scores), args.digits_share) or (0.0, 0.0))[0]
    band = EscalateSettings(
        enabled=True, min_score=low, max_score=high, send="tensor", queue=10_000, **UNLIMITED
    )
    try:
        trips = paced_round_trips(
            side,
            args.trips,
            lambda: side.client.offer(
                band.model_copy(update={"max_score": 1.0}),
                side.result("digits", predicted[0]),
                frame,
                samples[0],
                quant,
            ),
            0.02,
        )
        # Accuracy: every test digit's device result offered; those in the band escalate.
        before, band_before = side.answered(), side.client.counts.get("band", 0)
        originals = []
        for sample, result in zip(samples, predicted, strict=True):
            payload = side.result("digits", result)
            originals.append(payload.id)
            side.client.offer(band, payload, frame, sample, quant)
        escalated = side.client.counts.get("band", 0) - band_before
        wait(lambda: side.answered() - before >= escalated, 60)
        refined = side.refined()
    finally:
        side.close()
        server.stop()
    device_labels = [int(r["top"][0]["label"]) for r in predicted]
    combined = [
        int(refined[rid]["result"]["top"][0]["label"]) if rid in refined else label
        for rid, label in zip(originals, device_labels, strict=True)
    ]
    big = Predictor(load_model(args.big, backend, (), 1))
    big_labels = [
        int(big.predict([big.tensor_sample(x, "b")], [None])[0].result["top"][0]["label"])
        for x in xs
    ]
    return {
        "round_trip_tensor": trips,
        "digits_band": [round(low, 4), round(high, 4)],
        "digits_escalated": f"{escalated}/{len(xs)}",
        "digits_answered": sum(rid in refined for rid in originals),
        "accuracy_device_only": round(float(np.mean(np.array(device_labels) == ys)), 4),
        "accuracy_device_plus_escalation": round(float(np.mean(np.array(combined) == ys)), 4),
        "accuracy_big_model_alone": round(float(np.mean(np.array(big_labels) == ys)), 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, default=3000, help="frames per throughput run (3000)")
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs, alternated (3)")
    ap.add_argument("--share", type=float, default=0.05, help="results to escalate (0.05)")
    ap.add_argument(
        "--server-model",
        type=Path,
        default=MODELS / "yolov8_bench_640_f32.tflite",
        help="the image server's model (yolov8_bench_640_f32: ~9x MobileNetV2's invoke)",
    )
    ap.add_argument(
        "--server-normal",
        action="store_true",
        help="run the servers at normal priority, competing with the agent (SCHED_IDLE)",
    )
    ap.add_argument("--trips", type=int, default=100, help="paced round trips of each kind")
    ap.add_argument("--big", type=Path, default=MODELS / "digits_big_float.tflite")
    ap.add_argument(
        "--band", type=float, nargs=2, metavar=("MIN", "MAX"), help="digits band (calibrated)"
    )
    ap.add_argument(
        "--digits-share",
        type=float,
        default=0.15,
        help="without --band: at most this share of the digits, the least sure, escalated "
        "(0.15; scores tie at the int8 ceiling, so the band may catch less)",
    )
    ap.add_argument("--json", action="store_true", help="one JSON object of the figures")
    args = ap.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-escalation-") as tmp:
        work = Path(tmp)
        broker, port = start_broker(work)
        try:
            server = Server(work, args.server_model, port, "edge", not args.server_normal)
            try:
                figures = throughput(args, work, port, server)
                figures["round_trip_jpeg"] = image_round_trips(args, work, port)
            finally:
                server.stop()
            figures.update(digits(args, work, port))
        finally:
            broker.terminate()
            broker.wait(5)
    figures["cores"] = os.cpu_count()
    figures["frames"], figures["rounds"] = args.frames, args.rounds
    figures["server_model"] = args.server_model.name
    figures["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:34} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
