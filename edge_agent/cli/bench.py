"""`edge-agent bench MODEL`: timings in the manner of TFLite's benchmark_model, with the
bare interpreter loop on the same model, in the same run, for comparison."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Our path and the bare loop alternate in blocks, so drift on a busy machine hits both.
_BLOCKS = 20
_WARMUP_RUNS = 10


def add_parser(commands: Any) -> None:
    from edge_agent.cli.runtime_args import add_runtime_options

    parser = commands.add_parser("bench", help="measure a model's load time and latency")
    parser.add_argument("model", type=Path, help=".tflite model")
    parser.add_argument("--runs", type=int, default=500, help="timed invokes (default 500)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge_agent.cli.runtime_args import open_model, runtime_settings
    from edge_agent.errors import UserError

    if args.runs < _BLOCKS:
        raise UserError(f"--runs: {args.runs} is fewer than {_BLOCKS}")
    settings = runtime_settings(args)
    started = time.perf_counter()
    model = open_model(args.model, settings)
    load_s = time.perf_counter() - started
    first_s = model.first_invoke_s

    spec = model.input
    rng = np.random.default_rng(0)
    if np.issubdtype(spec.dtype, np.integer):
        info = np.iinfo(spec.dtype)
        sample = rng.integers(info.min, info.max, size=spec.shape, endpoint=True).astype(spec.dtype)
    else:
        sample = rng.standard_normal(spec.shape).astype(spec.dtype)

    warm = time.perf_counter()
    for _ in range(_WARMUP_RUNS):
        model.run(sample)
    warmup_s = (time.perf_counter() - warm) / _WARMUP_RUNS

    interpreter = model.interpreter
    input_index = spec.index
    output_indices = [o.index for o in model.outputs]

    def ours() -> None:
        model.dequantize(model.run(sample))

    def bare() -> None:
        interpreter.set_tensor(input_index, sample)
        interpreter.invoke()
        for index in output_indices:
            interpreter.get_tensor(index)

    block_sizes = [args.runs // _BLOCKS + (i < args.runs % _BLOCKS) for i in range(_BLOCKS)]
    agent_times: list[float] = []
    bare_times: list[float] = []
    block_ratios: list[float] = []
    for block, per_block in enumerate(block_sizes):
        # Alternate which side goes first, so neither always runs on a warmer cache.
        if block % 2:
            bare_block, agent_block = _timed(bare, per_block), _timed(ours, per_block)
        else:
            agent_block, bare_block = _timed(ours, per_block), _timed(bare, per_block)
        agent_times += agent_block
        bare_times += bare_block
        block_ratios.append(sum(agent_block) / sum(bare_block))

    agent, bare_stats = _stats(agent_times), _stats(bare_times)
    report = {
        "model": str(args.model),
        "name": model.info.name,
        "backend": model.backend,
        "delegate": model.delegate,
        "api": model.api,
        "delegate_attempts": model.describe()["delegate_attempts"],
        "threads": model.threads,
        "runs": len(agent_times),
        "init_ms": round((load_s - first_s) * 1000, 3),
        "first_inference_ms": round(first_s * 1000, 3),
        "init_plus_first_ms": round(load_s * 1000, 3),
        "warmup_mean_ms": round(warmup_s * 1000, 3),
        "agent": agent,
        "bare": bare_stats,
        "overhead_pct": round((agent["mean_ms"] / bare_stats["mean_ms"] - 1) * 100, 2),
        # Median over blocks of (agent time / bare time): steadier on a busy machine.
        "overhead_block_median_pct": round((statistics.median(block_ratios) - 1) * 100, 2),
        "overhead_p50_pct": round((agent["p50_ms"] / bare_stats["p50_ms"] - 1) * 100, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        _print(report)
    return 0


def _timed(fn: Any, count: int) -> list[float]:
    times = []
    clock = time.perf_counter
    for _ in range(count):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def _stats(times: list[float]) -> dict[str, float]:
    import numpy as np

    ms = np.asarray(times) * 1000
    return {
        "mean_ms": round(float(ms.mean()), 4),
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "min_ms": round(float(ms.min()), 4),
    }


def _print(r: dict[str, Any]) -> None:
    a, b = r["agent"], r["bare"]
    lines = [
        f"model            {r['model']} ({r['name']})",
        f"runtime          {r['backend']} {r['api']}, delegate {r['delegate']}, "
        f"{r['threads']} thread(s)",
        *(
            f"  tried {x['delegate']}: {'used' if x['used'] else 'skipped'}"
            + (f" ({x['reason']})" if x["reason"] else "")
            for x in r["delegate_attempts"]
        ),
        f"init             {r['init_ms']:.1f} ms",
        f"first inference  {r['first_inference_ms']:.1f} ms",
        f"warm-up          {r['warmup_mean_ms']:.2f} ms mean",
        f"{'':17}{'agent':>10}{'bare loop':>12}",
        f"mean             {a['mean_ms']:>8.3f}ms{b['mean_ms']:>10.3f}ms",
        f"p50              {a['p50_ms']:>8.3f}ms{b['p50_ms']:>10.3f}ms",
        f"p99              {a['p99_ms']:>8.3f}ms{b['p99_ms']:>10.3f}ms",
        f"overhead         {r['overhead_block_median_pct']:+.2f}% (median of {_BLOCKS} blocks), "
        f"{r['overhead_pct']:+.2f}% (mean), {r['overhead_p50_pct']:+.2f}% (p50); {r['runs']} runs",
        f"peak RSS         {r['peak_rss_mb']:.1f} MB",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
