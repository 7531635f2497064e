"""`edge-agent models inspect MODEL [--json]` and `edge-agent models manifest MODEL [-o FILE]`:
what a model file holds, how the agent would feed and read it (with the rule that chose
each part), which ops XNNPACK and each configured delegate take; and a sidecar manifest
written from the same description, for the user to edit."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.config.settings import AgentSettings, RuntimeSettings
    from edge_agent.runtime.backend import Backend
    from edge_agent.runtime.model import TensorSpec


def add_actions(actions: Any) -> None:
    from edge_agent.cli.runtime_args import add_runtime_options

    inspect = actions.add_parser(
        "inspect", help="a model file: tensors, metadata, inferred description, ops, delegates"
    )
    inspect.add_argument("model", type=Path, help=".tflite file")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    add_runtime_options(inspect)
    inspect.set_defaults(handler=run_inspect)
    manifest = actions.add_parser(
        "manifest", help="write a sidecar manifest for a model, from what the file says"
    )
    manifest.add_argument("model", type=Path, help=".tflite file")
    manifest.add_argument(
        "-o", "--output", type=Path, help="where to write it (default: MODEL.json beside it)"
    )
    manifest.add_argument("--force", action="store_true", help="replace an existing file")
    add_runtime_options(manifest)
    manifest.set_defaults(handler=run_manifest)


def run_inspect(args: argparse.Namespace) -> int:
    report = inspect_model(args.model, *runtime_and_overrides(args))
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(render(report))
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    from edge_agent.errors import UserError
    from edge_agent.runtime.manifest import manifest_path, safe_file_name

    output = args.output or manifest_path(args.model)
    if safe_file_name(args.model.name) != args.model.name:
        raise UserError(
            f"{args.model}: a manifest names its model with letters, digits and _.+- only; "
            f"rename the file (for example to {safe_file_name(args.model.name)})"
        )
    if output.exists() and not args.force:
        raise UserError(f"{output}: already exists; --force replaces it")
    runtime, overrides = runtime_and_overrides(args)
    # The file's own description: an existing sidecar is what this replaces.
    report = inspect_model(args.model, runtime, overrides, use_sidecar=False)
    manifest = report["description"]["manifest"]
    manifest["sha256"] = report["sha256"]
    manifest["labels"] = report["description"]["labels"] or None
    _write_atomic(output, (json.dumps(manifest, indent=2) + "\n").encode())
    rules = report["description"]["rules"]
    sys.stdout.write(
        f"wrote {output}: task {manifest['task']} ({rules.get('task')}); "
        f"input {manifest['input']['kind']} ({rules.get('preprocessing')})\n"
    )
    return 0


def runtime_and_overrides(args: argparse.Namespace) -> tuple[RuntimeSettings, dict[str, Any]]:
    """The runtime settings the command line and config give, and the `[models.NAME]`
    overrides of a configured model whose path is this file."""
    from edge_agent.cli.runtime_args import runtime_settings
    from edge_agent.config.load import load_settings

    runtime = runtime_settings(args)
    overrides: dict[str, Any] = {}
    config = args.config or (
        Path(os.environ["EDGE_AGENT_CONFIG"]) if "EDGE_AGENT_CONFIG" in os.environ else None
    )
    if config is not None:
        settings: AgentSettings = load_settings(config)
        target = args.model.resolve()
        for model in settings.models.values():
            if model.path.resolve() == target:
                overrides = model.overrides()
    return runtime, overrides


def inspect_model(
    path: Path, runtime: RuntimeSettings, overrides: dict[str, Any], use_sidecar: bool = True
) -> dict[str, Any]:
    from edge_agent.errors import UserError
    from edge_agent.runtime.backend import select_backend
    from edge_agent.runtime.delegates import CpuConfig
    from edge_agent.runtime.describe import describe
    from edge_agent.runtime.loader import open_graph
    from edge_agent.runtime.manifest import read_sidecar
    from edge_agent.runtime.metadata import read_metadata
    from edge_agent.runtime.model import TensorSpec
    from edge_agent.runtime.model_file import read_model_file

    content = read_model_file(path)
    backend = select_backend(runtime.backend)
    threads = runtime.threads or 1
    try:
        plain, problem = open_graph(backend, content, threads)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    inputs = [TensorSpec.from_detail(d) for d in plain.get_input_details()]
    outputs = [TensorSpec.from_detail(d) for d in plain.get_output_details()]
    ops = _ops(plain)
    sidecar = read_sidecar(path) if use_sidecar else None
    op_names = {op["op_name"] for op in ops}
    description = describe(path, content, inputs, outputs, op_names, sidecar, overrides)
    metadata = description.metadata or read_metadata(content)
    delegates = [("xnnpack", CpuConfig())] + [
        (_label(d), d) for d in runtime.delegates if not isinstance(d, CpuConfig)
    ]
    return {
        "file": str(path),
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "runtime": f"{backend.name} {backend.version}",
        "builtin_kernels": problem or "run it",
        "inputs": [_tensor(t) for t in inputs],
        "outputs": [_tensor(t) for t in outputs],
        "tensors": _quantization_summary(plain),
        "metadata": metadata.as_dict(),
        "description": {
            "manifest": description.manifest.model_dump(mode="json"),
            "labels": description.labels,
            "rules": description.rules,
        },
        "ops": dict(Counter(op["op_name"] for op in ops).most_common()),
        "delegates": {
            name: _delegated(backend, entry, content, threads, len(ops))
            for name, entry in delegates
        },
    }


def _label(entry: Any) -> str:
    from edge_agent.runtime.loader import delegate_label

    return delegate_label(entry)


def _ops(interpreter: Any) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = interpreter._get_ops_details()
    return [op for op in ops if op.get("op_name") != "DELEGATE"]


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    info: dict[str, Any] = {"name": spec.name, "shape": list(spec.shape), "dtype": str(spec.dtype)}
    quant = spec.quant
    if quant.is_quantized:
        scales = [float(s) for s in quant.scales]
        zeros = [int(z) for z in quant.zero_points]
        if len(scales) == 1:
            info["quantization"] = {"scale": scales[0], "zero_point": zeros[0]}
        else:
            info["quantization"] = {"axis": quant.axis, "scales": scales, "zero_points": zeros}
    return info


def _quantization_summary(interpreter: Any) -> dict[str, int]:
    """How the model's tensors (weights included) are quantized."""
    counts = {"per_channel": 0, "per_tensor": 0, "not_quantized": 0}
    for detail in interpreter.get_tensor_details():
        scales = (detail.get("quantization_parameters") or {}).get("scales")
        size = 0 if scales is None else len(scales)
        key = "per_channel" if size > 1 else "per_tensor" if size == 1 else "not_quantized"
        counts[key] += 1
    return counts


def _delegated(
    backend: Backend, entry: Any, content: bytes, threads: int, total: int
) -> dict[str, Any]:
    """Which ops a delegate took, read from its DELEGATE nodes: each replaces the original
    nodes between its input and output tensors."""
    from edge_agent.errors import UserError
    from edge_agent.runtime.loader import build_for_inspection

    try:
        interpreter = build_for_inspection(backend, entry, content, threads)
    except UserError as exc:
        return {"available": False, "reason": str(exc)}
    if getattr(interpreter, "api", "") == "CompiledModel":
        # CompiledModel does not list the ops it placed, only whether it took them all.
        return {"available": True, "api": "CompiledModel", "whole": interpreter.fully_accelerated}
    try:
        nodes: list[dict[str, Any]] = interpreter._get_ops_details()
    except (AttributeError, RuntimeError, ValueError):
        return {"available": True, "reason": "this runtime cannot say which ops it takes"}
    taken = _taken_ops(nodes)
    ops = {op["index"]: op["op_name"] for op in nodes if op.get("op_name") != "DELEGATE"}
    by_op = Counter(ops[i] for i in taken)
    left = Counter(name for i, name in ops.items() if i not in taken)
    return {
        "available": True,
        "taken": len(taken),
        "of": total,
        "taken_by_op": dict(by_op.most_common()),
        "left_by_op": dict(left.most_common()),
    }


def _taken_ops(nodes: list[dict[str, Any]]) -> set[int]:
    producer = {
        int(t): op for op in nodes if op.get("op_name") != "DELEGATE" for t in op["outputs"]
    }
    taken: set[int] = set()
    for node in nodes:
        if node.get("op_name") != "DELEGATE":
            continue
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        seen: set[int] = set()
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen:
                continue
            seen.add(tensor)
            op = producer.get(tensor)
            if op is None or op["index"] in taken:
                continue
            taken.add(int(op["index"]))
            stack.extend(int(t) for t in op["inputs"] if t >= 0)
    return taken


def render(report: dict[str, Any]) -> str:
    lines = [
        f"{report['file']}: {report['size']:,} bytes, sha256 {report['sha256']}",
        f"runtime: {report['runtime']}; built-in kernels (no delegate): "
        f"{report['builtin_kernels']}",
    ]
    for kind in ("inputs", "outputs"):
        for t in report[kind]:
            lines.append(f"{kind[:-1]} {t['name']}: {t['shape']} {t['dtype']}{_quant_text(t)}")
    tensors = report["tensors"]
    lines.append(
        f"tensors: {tensors['per_channel']} per-channel quantized, "
        f"{tensors['per_tensor']} per-tensor, {tensors['not_quantized']} not quantized"
    )
    meta = report["metadata"]
    found = [k for k in ("name", "inputs", "outputs", "ultralytics") if k in meta]
    if found:
        lines.append(f"metadata: {json.dumps({k: meta[k] for k in found})}")
    else:
        lines.append(f"metadata: none (entries: {', '.join(meta['entries']) or 'none'})")
    if meta.get("files"):
        lines.append(f"associated files: {', '.join(meta['files'])}")
    if meta.get("note"):
        lines.append(f"metadata note: {meta['note']}")
    desc = report["description"]
    manifest = desc["manifest"]
    rules = desc["rules"]
    shown = {k: v for k, v in manifest["input"].items() if v is not None}
    lines.append(f"input: {json.dumps(shown)}  <- {rules.get('input')}")
    lines.append(f"preprocessing: {rules.get('preprocessing')}")
    lines.append(
        f"task: {manifest['task']} {json.dumps(manifest['decode'])}  <- {rules.get('task')}"
    )
    lines.append(f"labels: {len(desc['labels'])}  <- {rules.get('labels')}")
    ops = report["ops"]
    lines.append(f"ops ({sum(ops.values())}): " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    for name, info in report["delegates"].items():
        if not info["available"]:
            lines.append(f"{name}: cannot run here: {info['reason']}")
        elif "taken" not in info:
            lines.append(f"{name}: {info['reason']}")
        else:
            left = ", ".join(f"{k} {v}" for k, v in info["left_by_op"].items()) or "nothing"
            lines.append(f"{name}: takes {info['taken']} of {info['of']} ops; leaves {left}")
    return "\n".join(lines) + "\n"


def _quant_text(tensor: dict[str, Any]) -> str:
    quant = tensor.get("quantization")
    if quant is None:
        return ""
    if "scale" in quant:
        return f", scale {quant['scale']:.6g} zero point {quant['zero_point']}"
    return f", per channel on axis {quant['axis']} ({len(quant['scales'])} scales)"


def _write_atomic(path: Path, data: bytes) -> None:
    from edge_agent.durable import fsync_dir, write_synced
    from edge_agent.errors import UserError

    temporary = path.with_name(f".{path.name}.tmp")
    try:
        write_synced(temporary, data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write: {exc.strerror}") from None
    fsync_dir(path.parent)
