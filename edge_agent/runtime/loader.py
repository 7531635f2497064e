"""Loads a model along the delegate chain: each entry is tried in order, each failure is
caught and recorded with its reason, and the CPU always remains."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edge_agent.errors import UserError
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.delegates import CpuConfig, DelegateConfig
from edge_agent.runtime.delegates.base import LiteRtAcceleratorConfig
from edge_agent.runtime.delegates.external import ExternalConfig
from edge_agent.runtime.delegates.litert_npu import LiteRtNpuConfig
from edge_agent.runtime.describe import Description, describe
from edge_agent.runtime.manifest import (
    ModelManifest,
    bare_manifest,
    load_manifest,
    manifest_path,
    read_sidecar,
    verify_sha256,
)
from edge_agent.runtime.model import DelegateAttempt, LoadedModel, ModelInfo, TensorSpec
from edge_agent.runtime.model_file import read_model_file
from edge_agent.runtime.native_log import native_stderr_to_debug_log

log = logging.getLogger(__name__)

_CUSTOM_OP_MARK = "unresolved custom op"


class _Opened(NamedTuple):
    interpreter: Any  # an Interpreter, or a CompiledEngine that answers like one
    note: str  # how it runs, when that is worth saying
    first_invoke_s: float
    graph: Any = None  # an Interpreter to read tensors and ops from, where not the above

    @property
    def readable(self) -> Any:
        return self.interpreter if self.graph is None else self.graph


class _Skip(Exception):
    """This chain entry cannot run the model; the message says why."""


@dataclass(frozen=True)
class _Request:
    """One model to load: its file, what describes it, and how it is to run."""

    path: Path
    content: bytes
    sidecar: tuple[ModelManifest, list[str]] | None
    overrides: Mapping[str, Any] | None
    sha256: str
    backend: Backend
    threads: int


def load_model(
    path: Path,
    backend: Backend,
    delegates: Sequence[DelegateConfig] = (),
    threads: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """`overrides`: the config's `[models.NAME]` settings over the model's description."""
    sidecar = read_sidecar(path)
    manifest = sidecar[0] if sidecar is not None else bare_manifest(path)
    content = read_model_file(path)
    sha256 = verify_sha256(content, manifest, path)
    threads = threads or os.cpu_count() or 1
    request = _Request(path, content, sidecar, overrides, sha256, backend, threads)
    chain = _with_cpu_last(delegates)
    if manifest.compiled_for is not None:
        return _load_aot(request, chain)
    attempts: list[DelegateAttempt] = []
    for entry in chain:
        try:
            opened = _try(request, entry, attempts)
        except _Skip as skip:
            reason = str(skip)
            if isinstance(entry, CpuConfig) and _CUSTOM_OP_MARK in reason and manifest.cpu_twin:
                _log_skipped(path, attempts)
                return _load_twin(request, attempts, reason)
            attempts.append(DelegateAttempt(_label(entry), used=False, reason=reason))
            continue
        _log_skipped(path, attempts)
        return _loaded(request, opened, attempts)
    *others, cpu = attempts
    tried = (
        f" (also tried {'; '.join(f'{a.delegate}: {a.reason}' for a in others)})" if others else ""
    )
    raise UserError(f"{path}: cannot run on the CPU: {cpu.reason}{tried}")


def _try(request: _Request, entry: DelegateConfig, attempts: list[DelegateAttempt]) -> _Opened:
    """The model opened by `entry`, recorded as the attempt used; _Skip when it cannot."""
    with native_stderr_to_debug_log(log):
        opened = _open(request.backend, entry, request.content, request.threads)
    attempts.append(DelegateAttempt(_label(entry), used=True, reason=opened.note))
    return opened


def _loaded(
    request: _Request,
    opened: _Opened,
    attempts: list[DelegateAttempt],
    twin: tuple[Path, bytes] | None = None,
) -> LoadedModel:
    """What runs: the model as opened (the last attempt's entry), or its CPU `twin`
    (file and bytes) under the model's own name."""
    run_path, content = twin or (request.path, request.content)
    description = _describe(
        request.path, content, opened.readable, request.sidecar, request.overrides
    )
    manifest = description.manifest
    return LoadedModel(
        opened.interpreter,
        first_invoke_s=opened.first_invoke_s,
        info=ModelInfo(manifest.name, manifest.version, request.sha256, request.path, run_path),
        manifest=manifest,
        labels=description.labels,
        rules=description.rules,
        backend=request.backend.name,
        delegate=attempts[-1].delegate,
        attempts=attempts,
        threads=request.threads,
    )


def _load_aot(request: _Request, chain: Sequence[DelegateConfig]) -> LoadedModel:
    """A model compiled ahead of time for an NPU: only a `litert_npu` entry of its vendor can
    run it (no other entry nor the CPU reads its dispatch op), else its CPU twin runs, else
    it is refused."""
    assert request.sidecar is not None  # only a manifest says it was compiled ahead of time
    manifest = request.sidecar[0]
    target = manifest.compiled_for
    assert target is not None
    attempts: list[DelegateAttempt] = []
    for entry in chain:
        if not (isinstance(entry, LiteRtNpuConfig) and entry.vendor == target.vendor):
            continue
        try:
            opened = _try(request, entry, attempts)
        except _Skip as skip:
            attempts.append(DelegateAttempt(_label(entry), used=False, reason=str(skip)))
            continue
        return _loaded(request, opened, attempts)
    why = "; ".join(f"{a.delegate}: {a.reason}" for a in attempts) or (
        f'no litert_npu entry with vendor = "{target.vendor}" in runtime.delegates'
    )
    reason = f"compiled ahead of time for {target}, not usable here: {why}"
    if manifest.cpu_twin:
        return _load_twin(request, attempts, reason)
    raise UserError(f"{request.path}: {reason}, and its manifest names no cpu_twin")


def _log_skipped(path: Path, attempts: list[DelegateAttempt]) -> None:
    for attempt in attempts:
        if not attempt.used:
            log.warning("%s: delegate %s skipped: %s", path.name, attempt.delegate, attempt.reason)


def describe_interpreter(
    path: Path,
    content: bytes,
    interpreter: Any,
    sidecar: tuple[ModelManifest, list[str]] | None,
    overrides: Mapping[str, Any] | None,
) -> Description:
    """The model's description, with its tensors and ops read from a built interpreter."""
    inputs = [TensorSpec.from_detail(d) for d in interpreter.get_input_details()]
    outputs = [TensorSpec.from_detail(d) for d in interpreter.get_output_details()]
    ops = {op["op_name"] for op in interpreter._get_ops_details()} - {"DELEGATE"}
    return describe(path, content, inputs, outputs, ops, sidecar, overrides)


def _describe(
    path: Path,
    content: bytes,
    interpreter: Any,
    sidecar: tuple[ModelManifest, list[str]] | None,
    overrides: Mapping[str, Any] | None,
) -> Description:
    description = describe_interpreter(path, content, interpreter, sidecar, overrides)
    log.info("%s: %s", path.name, description.summary())
    return description


def _load_twin(request: _Request, attempts: list[DelegateAttempt], reason: str) -> LoadedModel:
    """A model compiled for an accelerator (an Edge TPU custom op, an NPU ahead of time)
    runs as its CPU twin."""
    path, sidecar = request.path, request.sidecar
    assert sidecar is not None and sidecar[0].cpu_twin is not None
    twin_path = path.parent / sidecar[0].cpu_twin
    twin_content = read_model_file(twin_path)
    if manifest_path(twin_path).exists():
        verify_sha256(twin_content, load_manifest(twin_path)[0], twin_path)
    try:
        with native_stderr_to_debug_log(log):
            opened = _open(request.backend, CpuConfig(), twin_content, request.threads)
    except _Skip as skip:
        raise UserError(f"{twin_path}: CPU twin of {path.name} cannot run: {skip}") from None
    log.warning("%s: %s; running its CPU twin %s", path.name, reason, twin_path.name)
    attempts.append(
        DelegateAttempt(
            "cpu",
            used=True,
            reason=f"{reason}; running CPU twin {twin_path.name}"
            + (f"; {opened.note}" if opened.note else ""),
        )
    )
    return _loaded(request, opened, attempts, twin=(twin_path, twin_content))


def _with_cpu_last(delegates: Sequence[DelegateConfig]) -> list[DelegateConfig]:
    chain = list(delegates)
    if not chain or not isinstance(chain[-1], CpuConfig):
        chain = [d for d in chain if not isinstance(d, CpuConfig)] + [
            next((d for d in chain if isinstance(d, CpuConfig)), CpuConfig())
        ]
    return chain


def _label(entry: DelegateConfig) -> str:
    if isinstance(entry, ExternalConfig):
        return entry.label or Path(entry.library).name
    return entry.name


def _open(backend: Backend, entry: DelegateConfig, content: bytes, threads: int) -> _Opened:
    """An allocated interpreter that has run once, and a note on how it runs."""
    if isinstance(entry, CpuConfig):
        return _open_cpu(backend, entry, content, threads)
    if isinstance(entry, LiteRtAcceleratorConfig):
        return _open_compiled(backend, entry, content, threads)
    with _quiet_delegate_teardown():
        delegate = _load_delegate(backend, entry)
        # Without XNNPACK, every DELEGATE node in the graph is this delegate's: a way to
        # see that it took something. What it leaves runs on the built-in kernels.
        opened = _build(
            backend,
            content,
            threads,
            delegates=[delegate],
            resolver=backend.without_default_delegates,
        )
        if _delegated_nodes(opened.interpreter) == 0:
            raise _Skip("delegate took no operation of this model")
        return opened


def _load_delegate(backend: Backend, entry: DelegateConfig) -> Any:
    # The reason is raised outside the except blocks so that no traceback keeps the
    # half-built Delegate alive past _quiet_delegate_teardown.
    try:
        return backend.load_delegate(entry.library, entry.options())
    except OSError as exc:
        reason = f"library not loaded: {_one_line(exc)}"
    except AttributeError:
        reason = f"{entry.library} is not a TFLite delegate (no tflite_plugin_create_delegate)"
    except ValueError as exc:
        reason = f"delegate refused to start: {_one_line(exc)}"
    raise _Skip(reason)


def _open_compiled(
    backend: Backend, entry: LiteRtAcceleratorConfig, content: bytes, threads: int
) -> _Opened:
    """Through LiteRT 2's CompiledModel; the Interpreter only reads the graph's tensors."""
    if backend.name != "litert":
        raise _Skip(f"needs ai-edge-litert 2's CompiledModel; the {backend.name} backend has none")
    # Before the graph is read: a model compiled for an absent NPU never reaches an Interpreter.
    missing = entry.missing()
    if missing:
        raise _Skip(missing)
    from edge_agent.runtime.compiled import CompiledUnavailable, open_compiled

    try:
        graph, _ = open_graph(backend, content, threads)
        engine, note, first_s = open_compiled(entry, content, threads, graph)
    except (UserError, CompiledUnavailable) as exc:
        raise _Skip(str(exc)) from None
    return _Opened(engine, note, first_s, graph)


def _open_cpu(backend: Backend, entry: CpuConfig, content: bytes, threads: int) -> _Opened:
    resolver = backend.without_default_delegates
    if not entry.xnnpack:
        return _build(backend, content, threads, resolver=resolver, note="XNNPACK off by config")
    try:
        return _build(backend, content, threads)
    except _Skip as skip:
        if _CUSTOM_OP_MARK in str(skip):
            raise
        # XNNPACK refuses some valid graphs; the built-in kernels run them.
        note = f"XNNPACK refused the graph ({skip}); running on built-in kernels"
        return _build(backend, content, threads, resolver=resolver, note=note)


def _build(
    backend: Backend,
    content: bytes,
    threads: int,
    delegates: list[Any] | None = None,
    resolver: Any = None,
    note: str = "",
) -> _Opened:
    kwargs: dict[str, Any] = {"model_content": content, "num_threads": threads}
    if delegates:
        kwargs["experimental_delegates"] = delegates
    if resolver is not None:
        kwargs["experimental_op_resolver_type"] = resolver
    try:
        interpreter = backend.interpreter_class(**kwargs)
    except (ValueError, RuntimeError) as exc:
        raise _Skip(f"cannot apply to the graph: {_one_line(exc)}") from None
    try:
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise _Skip(f"cannot prepare the graph: {_one_line(exc)}") from None
    started = time.perf_counter()
    try:
        _first_invoke(interpreter)
    except (ValueError, RuntimeError) as exc:
        raise _Skip(f"first invoke failed: {_one_line(exc)}") from None
    return _Opened(interpreter, note, time.perf_counter() - started)


def _first_invoke(interpreter: Any) -> None:
    # Some delegates only fail once they run: a trial on zeros finds out at load time.
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()


def _delegated_nodes(interpreter: Any) -> int:
    """Nodes a delegate replaced: each shows as a DELEGATE node in the graph."""
    return sum(1 for op in interpreter._get_ops_details() if op.get("op_name") == "DELEGATE")


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return ": ".join(lines) if lines else type(exc).__name__


@contextlib.contextmanager
def _quiet_delegate_teardown() -> Iterator[None]:
    """A failed `load_delegate` leaves a half-built Delegate whose __del__ raises
    'Exception ignored in Delegate.__del__' onto the terminal. Collect it here, quietly."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if getattr(unraisable.object, "__qualname__", "") != "Delegate.__del__":
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous


def open_graph(backend: Backend, content: bytes, threads: int) -> tuple[Any, str]:
    """The model's graph on the built-in kernels, to look at: the interpreter, and why it
    cannot be prepared where it cannot (a custom op this runtime lacks). Tensors and ops
    can be read either way."""
    kwargs: dict[str, Any] = {
        "model_content": content,
        "num_threads": threads,
        "experimental_op_resolver_type": backend.without_default_delegates,
    }
    with native_stderr_to_debug_log(log):
        try:
            interpreter = backend.interpreter_class(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"cannot read the graph: {_one_line(exc)}") from None
        try:
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            return interpreter, f"cannot prepare the graph: {_one_line(exc)}"
    return interpreter, ""


def build_for_inspection(
    backend: Backend, entry: DelegateConfig, content: bytes, threads: int
) -> Any:
    """An allocated interpreter with `entry` applied (XNNPACK for the CPU entry) that has
    run once; UserError says why there is none."""
    with native_stderr_to_debug_log(log):
        try:
            if isinstance(entry, CpuConfig):
                return _build(backend, content, threads).interpreter
            return _open(backend, entry, content, threads).interpreter
        except _Skip as skip:
            raise UserError(str(skip)) from None


def delegate_label(entry: DelegateConfig) -> str:
    return _label(entry)
