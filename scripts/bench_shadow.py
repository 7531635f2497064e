#!/usr/bin/env python3
"""Shadow canary benchmark (docs/shadow.md): the active pipeline's throughput with an update
running as a shadow beside it, as a ratio to the same pipeline without one, in one run.

    .venv/bin/python scripts/bench_shadow.py [--frames 1500] [--rounds 3] [--sample 0.25]
        [--cpu-budget 0.1] [--threads 2] [--json]

MobileNetV2 int8 on synthetic 320x240 frames, every frame inferred (`on_full = "wait"`).
Runs with and without the shadow alternate, --rounds times; the figure is the median of
each. The shadow is a second interpreter of the same model at a --sample share,
fed and throttled exactly as an update's would be (never compared to a decision: its
min_frames is out of reach). Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config.settings import AgentSettings  # noqa: E402
from edge_agent.runtime.loader import load_model  # noqa: E402
from edge_agent.updates.manifest import ShadowPolicy  # noqa: E402
from edge_agent.updates.shadow import Shadow  # noqa: E402

MODEL = ROOT / "models" / "mobilenet_v2_int8.tflite"


class CountingSink:
    """Counts results and notes when the last arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.last = 0.0
        self.done = threading.Event()

    def put(self, payload: Any, on_durable: Any = None) -> None:
        self.count += 1
        self.last = time.perf_counter()
        if self.count >= self.expected:
            self.done.set()

    def close(self, timeout: float = 5.0) -> None:
        pass


def run(state: Path, frames: int, threads: int, policy: ShadowPolicy | None) -> dict[str, Any]:
    settings = AgentSettings(
        device={"id": "bench", "state_dir": state},
        models={"m": {"path": MODEL, "threads": threads}},
        sources={
            "s": {
                "kind": "synthetic",
                "pattern": "noise",
                "width": 320,
                "height": 240,
                "count": frames,
            }
        },
        # Every frame inferred: the source waits for room rather than dropping.
        pipelines={"p": {"source": "s", "model": "m", "queue_size": 8, "on_full": "wait"}},
    )
    sink = CountingSink(frames)
    agent = Agent(settings, sink=sink)
    shadow = None
    agent.start()
    if policy is not None:
        active = agent.host.worker("m")
        assert active is not None
        shadow = Shadow("m", load_model(MODEL, agent.host.backend, threads=1), active.model, policy)
        agent.host.attach_shadow("m", shadow)
    started = time.perf_counter()
    sink.done.wait(600)
    fps = sink.count / (sink.last - started)
    figures = shadow.snapshot() if shadow is not None else None
    if shadow is not None:
        agent.host.detach_shadow("m")
    agent.stop()
    return {"fps": fps, "shadow": figures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", type=float, default=0.25)
    parser.add_argument("--cpu-budget", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    policy = ShadowPolicy(
        sample=args.sample, cpu_budget=args.cpu_budget, min_frames=10**9, timeout_s=10**6
    )
    without, with_shadow, shadows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            without.append(run(Path(tmp) / f"a{i}", args.frames, args.threads, None)["fps"])
            done = run(Path(tmp) / f"b{i}", args.frames, args.threads, policy)
            with_shadow.append(done["fps"])
            shadows.append(done["shadow"])
    base, shadowed = statistics.median(without), statistics.median(with_shadow)
    figures = {
        "without_shadow_fps": round(base, 1),
        "with_shadow_fps": round(shadowed, 1),
        "ratio": round(shadowed / base, 3),
        "target": ">= 0.9",
        "met": shadowed / base >= 0.9,
        "runs_without": [round(v, 1) for v in without],
        "runs_with": [round(v, 1) for v in with_shadow],
        "shadow": shadows[-1],
        "sample": args.sample,
        "cpu_budget": args.cpu_budget,
        "threads": args.threads,
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"active pipeline without shadow   {base:8.1f} fps   runs {figures['runs_without']}")
    print(f"active pipeline with shadow      {shadowed:8.1f} fps   runs {figures['runs_with']}")
    print(f"ratio {figures['ratio']:.3f} (target >= 0.9: {'met' if figures['met'] else 'NOT met'})")
    s = shadows[-1] or {}
    print(
        f"shadow: sampled {s.get('sampled')}, compared {s.get('frames')}, dropped by its queue "
        f"{s.get('dropped')}, agreement {s.get('agreement')}, "
        f"latency ratio {s.get('latency_ratio')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
