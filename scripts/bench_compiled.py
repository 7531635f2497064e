#!/usr/bin/env python3
"""The two LiteRT APIs on the CPU, where both can run: bare CompiledModel runs against
bare Interpreter invokes on the same model with the same thread count, the agent's
overhead on each (LoadedModel.run plus dequantize), and CompiledModel's zero-copy input
(a TensorBuffer over the frame's own memory) against writing the frame into its buffer.

    .venv/bin/python scripts/bench_compiled.py [--model models/mobilenet_v2_int8.tflite]
        [--threads 2] [--runs 300] [--json]

The loops alternate in blocks so that drift on a busy machine hits all of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.runtime.backend import select_backend  # noqa: E402
from edge_agent.runtime.delegates.litert_cpu import LiteRtCpuConfig  # noqa: E402
from edge_agent.runtime.loader import load_model  # noqa: E402
from edge_agent.runtime.native_log import native_stderr_to_debug_log  # noqa: E402

_BLOCKS = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/mobilenet_v2_int8.tflite")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from ai_edge_litert import compiled_model as cm

    quiet = logging.getLogger("bench_compiled")
    backend = select_backend("litert")
    with native_stderr_to_debug_log(quiet):
        agent_interp = load_model(args.model, backend, [], args.threads)
        agent_cm = load_model(args.model, backend, [LiteRtCpuConfig()], args.threads)
        interp = backend.interpreter_class(model_path=str(args.model), num_threads=args.threads)
        interp.allocate_tensors()
        options = cm.Options(
            hardware_accelerators=cm.HardwareAccelerator.CPU,
            cpu_options=cm.CpuOptions(num_threads=args.threads),
        )
        compiled = cm.CompiledModel.from_file(str(args.model), options=options)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rng = np.random.default_rng(0)
    frame = rng.integers(-128, 127, size=inp["shape"]).astype(inp["dtype"])
    ins, outs = compiled.create_input_buffers(0), compiled.create_output_buffers(0)
    count, dtype = int(np.prod(out["shape"])), out["dtype"]

    def bare_interpreter() -> None:
        interp.set_tensor(inp["index"], frame)
        interp.invoke()
        interp.get_tensor(out["index"])

    def bare_compiled() -> None:
        ins[0].write(frame)
        compiled.run_by_index(0, ins, outs)
        outs[0].read(count, dtype)

    def compiled_zero_copy() -> None:
        # The frame's memory as the input buffer: no write of the frame into LiteRT's own.
        buffer = cm.TensorBuffer.create_from_host_memory(frame)
        compiled.run_by_index(0, [buffer], outs)
        outs[0].read(count, dtype)

    def agent_on(model: Any) -> Callable[[], None]:
        return lambda: model.dequantize(model.run(frame))

    loops: dict[str, Callable[[], None]] = {
        "interpreter_bare": bare_interpreter,
        "interpreter_agent": agent_on(agent_interp),
        "compiled_bare": bare_compiled,
        "compiled_zero_copy_input": compiled_zero_copy,
        "compiled_agent": agent_on(agent_cm),
    }
    zero_copy = _try(compiled_zero_copy)
    if zero_copy:
        del loops["compiled_zero_copy_input"]
    copy_us = _input_write_us(ins[0], frame)
    times: dict[str, list[float]] = {name: [] for name in loops}
    for fn in loops.values():
        for _ in range(10):
            fn()
    for block in range(_BLOCKS):
        order = list(loops.items())
        for name, fn in order if block % 2 == 0 else reversed(order):
            for _ in range(args.runs // _BLOCKS):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    p50 = {name: statistics.median(t) * 1000 for name, t in times.items()}
    report = {
        "model": str(
            args.model.relative_to(ROOT) if args.model.is_relative_to(ROOT) else args.model
        ),
        "threads": args.threads,
        "runs": len(times["compiled_bare"]),
        "p50_ms": {name: round(v, 3) for name, v in p50.items()},
        "mean_ms": {name: round(statistics.fmean(t) * 1000, 3) for name, t in times.items()},
        "compiled_vs_interpreter_bare_pct": _pct(p50["compiled_bare"], p50["interpreter_bare"]),
        "agent_overhead_interpreter_pct": _pct(p50["interpreter_agent"], p50["interpreter_bare"]),
        "agent_overhead_compiled_pct": _pct(p50["compiled_agent"], p50["compiled_bare"]),
        "zero_copy_vs_write_pct": (
            zero_copy or _pct(p50["compiled_zero_copy_input"], p50["compiled_bare"])
        ),
        "input_write_us": round(copy_us, 1),
        "input_bytes": int(frame.nbytes),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:36} {value}")
    return 0


def _try(fn: Callable[[], None]) -> str:
    """ "" if `fn` runs, else why not, in one line."""
    try:
        with native_stderr_to_debug_log(logging.getLogger("bench_compiled")):
            fn()
    except RuntimeError as exc:
        return "not available: " + " ".join(str(exc).split())
    return ""


def _input_write_us(buffer: Any, frame: np.ndarray) -> float:
    """The copy zero-copy input would save: one write of the frame into its buffer."""
    started = time.perf_counter()
    for _ in range(200):
        buffer.write(frame)
    return (time.perf_counter() - started) / 200 * 1e6


def _pct(value: float, base: float) -> float:
    return round((value / base - 1) * 100, 2)


if __name__ == "__main__":
    sys.exit(main())
