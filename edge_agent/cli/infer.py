"""`edge-agent infer MODEL INPUT... [--json]`: one-shot inference on image or .npy files."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    from edge_agent.cli.runtime_args import add_runtime_options

    parser = commands.add_parser("infer", help="run a model once on image or .npy inputs")
    parser.add_argument(
        "model",
        type=Path,
        help=".tflite model; described by its manifest beside it, else by the file itself "
        "(and by a [models.NAME] entry of --config whose path is this file)",
    )
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="image or .npy")
    parser.add_argument("--json", action="store_true", help="one JSON object per input")
    add_runtime_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from edge_agent.cli.inspect import runtime_and_overrides
    from edge_agent.runtime.backend import select_backend
    from edge_agent.runtime.loader import load_model
    from edge_agent.runtime.predictor import Predictor

    runtime, overrides = runtime_and_overrides(args)
    backend = select_backend(runtime.backend)
    model = load_model(args.model, backend, runtime.delegates, runtime.threads, overrides)
    predictor = Predictor(model)
    # Every input is checked before any inference, so a bad one fails the run up front.
    loaded = [predictor.load_input(path) for path in args.inputs]
    started = time.perf_counter()
    predictions = predictor.predict([s for s, _ in loaded], [g for _, g in loaded])
    infer_ms = (time.perf_counter() - started) * 1000 / len(loaded)
    identity = {
        "name": model.info.name,
        "version": model.info.version,
        "sha256": model.info.sha256,
        "delegate": model.delegate,
    }
    for path, prediction in zip(args.inputs, predictions, strict=True):
        if args.json:
            record = {
                "input": str(path),
                "model": identity,
                "task": model.manifest.task,
                "result": prediction.result,
                "infer_ms": round(infer_ms, 3),
                "outputs": {k: v.tolist() for k, v in prediction.outputs.items()},
            }
            sys.stdout.write(json.dumps(record) + "\n")
        else:
            sys.stdout.write(f"{path}: {summary(prediction.result, prediction.outputs)}\n")
    if not args.json:
        sys.stdout.write(
            f"model {model.info.name} {model.info.version} on {model.delegate} "
            f"({model.backend}), {infer_ms:.2f} ms per input\n"
        )
    return 0


def summary(result: dict[str, Any], outputs: dict[str, Any]) -> str:
    if "top" in result:
        return ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top"])
    if "detections" in result:
        found = result["detections"]
        boxes = "; ".join(
            f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.0f}' for v in d['box'])}]"
            for d in found
        )
        return f"{len(found)} detection(s)" + (f": {boxes}" if found else "")
    if "score" in result:
        anomalous = result.get("anomalous")
        flag = "" if anomalous is None else " ANOMALY" if anomalous else " normal"
        return f"score {result['score']:.4f}{flag}"
    if "values" in result:
        return " ".join(f"{v:.4f}" for v in result["values"])
    if "areas" in result:
        areas = ", ".join(f"{a['label']} {a['area']:.1%}" for a in result["areas"])
        return f"areas of {result['mask_size'][0]}x{result['mask_size'][1]}: {areas or 'none'}"
    return ", ".join(f"{name} {list(value.shape)}" for name, value in outputs.items())
