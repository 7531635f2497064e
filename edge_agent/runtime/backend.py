"""Chooses the interpreter package. The only module that imports LiteRT or tflite-runtime."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from edge_agent.errors import UserError

BackendName = Literal["auto", "litert", "tflite-runtime"]

# Import path and distribution name of each supported package, in order of preference.
_PACKAGES: dict[str, tuple[str, str]] = {
    "litert": ("ai_edge_litert.interpreter", "ai-edge-litert"),
    "tflite-runtime": ("tflite_runtime.interpreter", "tflite-runtime"),
}


@dataclass(frozen=True)
class Backend:
    """The interpreter API of one package; both packages expose the same one."""

    name: str
    version: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any]
    # Resolver that leaves out XNNPACK, for graphs XNNPACK refuses to prepare.
    without_default_delegates: Any


def select_backend(preference: BackendName = "auto") -> Backend:
    """LiteRT unless told otherwise; tflite-runtime where it is the only one installed."""
    names = list(_PACKAGES) if preference == "auto" else [preference]
    missing = []
    for name in names:
        module_name, dist = _PACKAGES[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(dist)
            continue
        version = importlib.metadata.version(dist)
        if name == "tflite-runtime":
            _check_numpy_for_tflite_runtime(version)
        return Backend(
            name=name,
            version=version,
            interpreter_class=module.Interpreter,
            load_delegate=module.load_delegate,
            without_default_delegates=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
    raise UserError(
        f"runtime.backend: {preference!r} is not installed (missing {' and '.join(missing)}); "
        "pip install ai-edge-litert, or tflite-runtime with numpy<2"
    )


def _check_numpy_for_tflite_runtime(version: str) -> None:
    # tflite-runtime wheels are built against NumPy 1: with NumPy 2 the import works but
    # Interpreter() dies with an opaque SystemError, so say it up front.
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise UserError(
            f"runtime.backend: tflite-runtime {version} needs numpy<2, "
            f"but numpy {numpy.__version__} is installed; "
            "use ai-edge-litert, or install the tflite extra (pip install 'edge-agent[tflite]')"
        )
