"""Command-line options shared by the commands that load a model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from edge_agent.config.load import load_settings
from edge_agent.config.settings import RuntimeSettings
from edge_agent.errors import UserError, validation_lines
from edge_agent.runtime.backend import select_backend
from edge_agent.runtime.delegates import REGISTRY, DelegateConfig, DelegateEntry
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.model import LoadedModel

_ENTRY = TypeAdapter(DelegateEntry)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="agent TOML file whose [runtime] is used")
    parser.add_argument(
        "--runtime", choices=["auto", "litert", "tflite-runtime"], help="interpreter package"
    )
    parser.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    parser.add_argument(
        "--delegate",
        action="append",
        metavar="NAME[:KEY=VALUE,...]",
        help=f"delegate to try, in order; repeat for a chain ({', '.join(REGISTRY)})",
    )


def runtime_settings(args: argparse.Namespace) -> RuntimeSettings:
    config = args.config or (
        Path(os.environ["EDGE_AGENT_CONFIG"]) if "EDGE_AGENT_CONFIG" in os.environ else None
    )
    runtime = load_settings(config).runtime
    update: dict[str, object] = {}
    if args.runtime:
        update["backend"] = args.runtime
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads: {args.threads} is not a positive number")
        update["threads"] = args.threads
    if args.delegate:
        update["delegates"] = [parse_delegate(spec) for spec in args.delegate]
    return runtime.model_copy(update=update)


def parse_delegate(spec: str) -> DelegateConfig:
    """`edgetpu:device=usb`, `external:library=/x.so,mode=fast`; for `external`, keys
    other than library and label are the library's options."""
    name, _, rest = spec.partition(":")
    fields: dict[str, object] = {"name": name}
    options: dict[str, str] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--delegate {spec}: {pair!r} is not KEY=VALUE")
        if name == "external" and key not in ("library", "label"):
            options[key] = value
        else:
            fields[key] = value
    if options:
        fields["options"] = options
    try:
        return _ENTRY.validate_python(fields)
    except ValidationError as exc:
        raise UserError(validation_lines(exc, f"--delegate {spec}")[0]) from None


def open_model(path: Path, runtime: RuntimeSettings) -> LoadedModel:
    backend = select_backend(runtime.backend)
    return load_model(path, backend, runtime.delegates, runtime.threads)
