#!/usr/bin/env python3
"""Memory and start of `edge-agent run`, as a user sees them, beside the script one would
write by hand for the same job, measured in the same run.

    .venv/bin/python scripts/bench_memory.py [--seconds 20] [--json]

Three configs, each run as its own `edge-agent run` process:
- demo: `configs/demo.toml`, what `scripts/run.sh` runs (BlazeFace on a clip of photos);
- default: `configs/agent.toml`, the documented config (two models on a synthetic source);
- sensor: a sensor-only config (an IIO accelerometer, a fake sysfs tree, into the anomaly
  model), like `configs/examples/iio-sensor-board.toml`.
For each: process start to the first result line on stdout, and after --seconds the peak
resident set (VmHWM), the private part (RssAnon) and the mapped files (RssFile) from
/proc/PID/status. The baseline is a hand-written script for the same job: import what it
needs, load the model, read one input, invoke, print one line, then stay alive.
State goes to a temporary folder (EDGE_AGENT_DEVICE__STATE_DIR); results to stdout.

Python runs as it does on a user's machine: with its bytecode cache. The package's modules
are compiled first (pip does the same when it installs the wheel) and PYTHONDONTWRITEBYTECODE
is removed from the environment; with it set and no cache, every start compiles the agent's
modules again (about 0.1 s more on the development machine). The sensor config's first
result also waits for its first window: 64 samples at 100 Hz, 0.64 s.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
AGENT = [str(ROOT / ".venv" / "bin" / "edge-agent"), "run", "--config"]
FIELDS = ("VmHWM", "RssAnon", "RssFile")

# What one writes by hand for each job: the libraries it needs, one inference, one line.
NAIVE_IMAGE = """
import json, sys, time
import cv2, numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
inp = interpreter.get_input_details()[0]
ok, frame = cv2.VideoCapture(sys.argv[2]).read()
h, w = inp["shape"][1:3]
x = cv2.resize(frame, (w, h)).astype(inp["dtype"])
interpreter.set_tensor(inp["index"], x[None])
interpreter.invoke()
out = interpreter.get_output_details()[0]
print(json.dumps({"shape": list(interpreter.get_tensor(out["index"]).shape)}), flush=True)
time.sleep(3600)
"""
NAIVE_SENSOR = """
import json, sys, time
from pathlib import Path
import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
inp = interpreter.get_input_details()[0]
device = Path(sys.argv[2])
rows = [[float((device / f"in_accel_{a}_raw").read_text()) for a in "xyz"] for _ in range(64)]
x = np.zeros(inp["shape"], dtype=inp["dtype"])
x.flat[: 64 * 3] = np.array(rows).ravel()[: x.size]
interpreter.set_tensor(inp["index"], x)
interpreter.invoke()
out = interpreter.get_output_details()[0]
print(json.dumps({"shape": list(interpreter.get_tensor(out["index"]).shape)}), flush=True)
time.sleep(3600)
"""


def sensor_config(work: Path) -> Path:
    device = work / "iio" / "iio:device0"
    device.mkdir(parents=True)
    (device / "name").write_text("lsm6dsl\n")
    for axis, value in zip("xyz", ("12", "-40", "980"), strict=True):
        (device / f"in_accel_{axis}_raw").write_text(value + "\n")
        (device / f"in_accel_{axis}_scale").write_text("0.001\n")
    config = work / "sensor.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [models.vibration]
            path = "{ROOT / "models" / "sensor_anomaly_int8.tflite"}"
            threads = 1
            [sources.accel]
            kind = "iio"
            device = "iio:device0"
            channels = ["accel_x", "accel_y", "accel_z"]
            rate_hz = 100
            window = 64
            hop = 32
            sysfs_root = "{work / "iio"}"
            [pipelines.vibration]
            source = "accel"
            model = "vibration"
            [output]
            jsonl = "-"
            """
        )
    )
    return config


def proc_status(pid: int) -> dict[str, int]:
    """kB figures of /proc/PID/status."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            found[key] = int(value.split()[0])
    return found


# Where resident pages go, by mapping: /proc/PID/smaps paths matched in this order.
PARTS = (
    ("OpenCV (cv2 and its bundled libs)", ("cv2/", "opencv_python")),
    ("LiteRT", ("ai_edge_litert", "tflite_runtime")),
    ("numpy", ("numpy",)),
    ("pydantic-core", ("pydantic_core",)),
    ("Python", ("libpython",)),
    ("heap (malloc: Python objects, SQLite, LiteRT)", ("[heap]",)),
    ("anonymous (Python arenas, arrays, tensors, stacks)", ("[anon]", "[stack")),
)


def breakdown(pid: int) -> dict[str, int]:
    """Resident kB of `pid` by PARTS; the rest as "other libraries"."""
    parts: dict[str, int] = dict.fromkeys([name for name, _ in PARTS], 0)
    parts["other libraries"] = 0
    where = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            where = fields[5] if len(fields) > 5 else "[anon]"
        elif fields and fields[0] == "Rss:":
            name = next(
                (n for n, keys in PARTS if any(k in where for k in keys)), "other libraries"
            )
            parts[name] += int(fields[1])
    return parts


def measure(command: list[str], env: dict[str, str], seconds: float) -> dict[str, Any]:
    """Start to the first stdout line, then /proc figures after `seconds`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    first = time.perf_counter() - started
    if not line:
        raise SystemExit(f"{' '.join(command)}: ended before its first result")
    out = proc.stdout
    # Keep reading so the pipe never blocks the process.
    threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
    time.sleep(seconds)
    figures: dict[str, Any] = {
        "first_result_s": first,
        **proc_status(proc.pid),
        "breakdown_kb": breakdown(proc.pid),
    }
    proc.send_signal(2)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    return figures


def run_all(seconds: float) -> dict[str, Any]:
    python = str(ROOT / ".venv" / "bin" / "python")
    demo_model = ROOT / "var" / "demo" / "face_detection_short_range.tflite"
    demo_clip = ROOT / "var" / "demo" / "photos.avi"
    if not demo_model.exists():
        raise SystemExit("var/demo is missing: run scripts/setup.sh first")
    results: dict[str, Any] = {}
    compileall.compile_dir(ROOT / "edge_agent", quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["EDGE_AGENT_DEVICE__STATE_DIR"] = str(work / "state")
        default_env = {**env, "EDGE_AGENT_OUTPUT__JSONL": "-"}
        sensor = sensor_config(work)
        device = work / "iio" / "iio:device0"
        runs = {
            "demo": (
                [*AGENT, str(ROOT / "configs" / "demo.toml")],
                env,
                [python, "-c", NAIVE_IMAGE, str(demo_model), str(demo_clip)],
            ),
            "default": (
                [*AGENT, str(ROOT / "configs" / "agent.toml")],
                default_env,
                [
                    python,
                    "-c",
                    NAIVE_IMAGE,
                    str(ROOT / "models" / "mobilenet_v2_int8.tflite"),
                    str(demo_clip),
                ],
            ),
            "sensor": (
                [*AGENT, str(sensor)],
                env,
                [
                    python,
                    "-c",
                    NAIVE_SENSOR,
                    str(ROOT / "models" / "sensor_anomaly_int8.tflite"),
                    str(device),
                ],
            ),
        }
        for name, (agent, agent_env, naive) in runs.items():
            results[name] = {
                "agent": measure(agent, agent_env, seconds),
                "naive": measure(naive, env, min(seconds, 3.0)),
            }
    return results


def report(results: dict[str, Any], seconds: float) -> None:
    targets = {"demo": 120, "default": 120, "sensor": 64}
    print(f"edge-agent run, figures after {seconds:.0f} s (MB = MiB; kB/1024)\n")
    print(f"{'config':<9}{'figure':<26}{'agent':>10}{'naive':>10}{'target':>10}")
    for name, pair in results.items():
        agent, naive = pair["agent"], pair["naive"]
        for key in FIELDS:
            target = f"<= {targets[name]}" if key == "VmHWM" else ""
            print(
                f"{name:<9}{key + ' [MB]':<26}{agent[key] / 1024:>10.1f}"
                f"{naive[key] / 1024:>10.1f}{target:>10}"
            )
        print(
            f"{name:<9}{'start to first result [s]':<26}{agent['first_result_s']:>10.2f}"
            f"{naive['first_result_s']:>10.2f}{'<= 0.5' if name == 'default' else '':>10}"
        )
    print("\nresident memory by mapping [MB], agent (naive)")
    names = list(next(iter(results.values()))["agent"]["breakdown_kb"])
    print(f"{'':<52}" + "".join(f"{name:>18}" for name in results))
    for part in names:
        cells = ""
        for pair in results.values():
            agent_kb, naive_kb = (pair[who]["breakdown_kb"][part] for who in ("agent", "naive"))
            cells += f"{agent_kb / 1024:>9.1f} ({naive_kb / 1024:>5.1f})"
        print(f"{part:<52}{cells}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true", help="one JSON object of the figures")
    args = parser.parse_args()
    results = run_all(args.seconds)
    if args.json:
        print(json.dumps(results))
    else:
        report(results, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
