"""A model run through LiteRT 2's CompiledModel, behind the part of the Interpreter's
interface that LoadedModel and the bench use: the worker, batching, hot swap and health
watch do not know which API runs a model. `ai_edge_litert.compiled_model` is imported
only when a chain entry asks for it."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import re
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.delegates.base import LiteRtAcceleratorConfig
from edge_agent.runtime.native_log import native_stderr_to_debug_log

log = logging.getLogger(__name__)

_SIGNATURE = 0  # models the agent runs have one input and one signature
# Where LiteRT prefixes a message with its source location: "ERROR: [file.cc:12]" or
# absl's "E0000 00:00:17.81 3104 file.cc:736]".
_LOCATION = re.compile(r"^(└\s*)?((ERROR|WARNING): \[[^\]]*\]|E\d{4} [^\]]*\])\s*")
_PARTIAL_MARK = "not accelerated"
# What LiteRT logs when the accelerator itself is absent; it then also says "not
# accelerated", which would otherwise read as a partly supported model.
_ABSENT_MARKS: dict[str, tuple[str, ...]] = {
    "GPU": ("No adapters found", "GPU accelerator could not be loaded"),
    "NPU": ("NPU accelerator could not be loaded",),
    "CPU": (),
}


class CompiledUnavailable(Exception):
    """This entry cannot run the model through CompiledModel; the message says why.
    `partial`: the accelerator is there but cannot take every op of the model."""

    def __init__(self, reason: str, partial: bool = False) -> None:
        super().__init__(reason)
        self.partial = partial


class CompiledEngine:
    """A CompiledModel with its input and output buffers. Tensor details (quantization,
    shape signature) come from the model's graph read by the Interpreter, which
    CompiledModel does not report; tensors are addressed by the same indices."""

    api = "CompiledModel"

    def __init__(
        self,
        compiled: Any,
        inputs: list[dict[str, Any]],
        outputs: list[dict[str, Any]],
        content: bytes,
        fully_accelerated: bool,
    ) -> None:
        self._compiled = compiled
        self._content = content  # from_buffer may keep reading the model's bytes
        self._inputs = inputs
        self._outputs = outputs
        self._input_position = {int(d["index"]): i for i, d in enumerate(inputs)}
        self._output_position = {int(d["index"]): i for i, d in enumerate(outputs)}
        self.fully_accelerated = fully_accelerated
        self._make_buffers()

    def _make_buffers(self) -> None:
        self.input_buffers = self._compiled.create_input_buffers(_SIGNATURE)
        self.output_buffers = self._compiled.create_output_buffers(_SIGNATURE)

    def get_input_details(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._inputs]

    def get_output_details(self) -> list[dict[str, Any]]:
        return [dict(d) for d in self._outputs]

    def set_tensor(self, index: int, value: npt.NDArray[Any]) -> None:
        self.input_buffers[self._input_position[index]].write(np.ascontiguousarray(value))

    def invoke(self) -> None:
        self._compiled.run_by_index(_SIGNATURE, self.input_buffers, self.output_buffers)

    def get_tensor(self, index: int) -> npt.NDArray[Any]:
        position = self._output_position[index]
        detail = self._outputs[position]
        shape = tuple(int(d) for d in detail["shape"])
        count = int(np.prod(shape))
        array: npt.NDArray[Any] = self.output_buffers[position].read(count, detail["dtype"])
        return array.reshape(shape)

    def resize_tensor_input(self, index: int, dims: list[int], strict: bool = False) -> None:
        """Raises RuntimeError where the accelerator cannot take a new shape."""
        position = self._input_position[index]
        self._compiled.resize_input_tensor(position, list(dims), _SIGNATURE, strict)
        key = self._compiled.get_signature_by_index(_SIGNATURE)["key"]
        in_shapes = [d["shape"] for d in self._compiled.get_input_tensor_details(key).values()]
        out_shapes = [d["shape"] for d in self._compiled.get_output_tensor_details(key).values()]
        for detail, shape in zip(self._inputs, in_shapes, strict=True):
            detail["shape"] = np.array(shape, dtype=np.int32)
        for detail, shape in zip(self._outputs, out_shapes, strict=True):
            detail["shape"] = np.array(shape, dtype=np.int32)
        self._make_buffers()

    def allocate_tensors(self) -> None:
        """Buffers are made on resize; nothing left to allocate."""

    def close(self) -> None:
        """Lets go of the model and its buffers, which hold LiteRT's environment: its
        teardown prints a line per accelerator, kept to the debug log here."""
        if self._compiled is None:
            return
        try:
            with native_stderr_to_debug_log(log):
                self.input_buffers = self.output_buffers = []
                self._compiled = None
        except Exception:  # at interpreter exit the capture may not work
            self.input_buffers = self.output_buffers = []
            self._compiled = None

    def __del__(self) -> None:
        self.close()


def open_compiled(
    entry: LiteRtAcceleratorConfig, content: bytes, threads: int, graph: Any
) -> tuple[CompiledEngine, str, float]:
    """The engine that has run once, a note on how it runs, and that first run's time.
    The caller has checked `entry.missing()`."""
    try:
        from ai_edge_litert import compiled_model as cm
    except ImportError:
        raise CompiledUnavailable(
            "needs ai-edge-litert 2 (ai_edge_litert.compiled_model), not installed"
        ) from None
    _quiet_teardown()
    accelerator = cm.HardwareAccelerator[entry.accelerator]
    note = ""
    try:
        compiled = _compile(cm, entry, content, accelerator, threads)
    except CompiledUnavailable as exc:
        # Accelerator alone first: with the CPU in the set LiteRT quietly runs everything
        # on the CPU when the accelerator is absent, and the chain could not tell.
        if not (exc.partial and entry.cpu_for_other_ops):
            raise
        compiled = _compile(cm, entry, content, accelerator | cm.HardwareAccelerator.CPU, threads)
        note = f"ops the {entry.accelerator} cannot take run on the CPU"
    engine = CompiledEngine(
        compiled,
        graph.get_input_details(),
        graph.get_output_details(),
        content,
        fully_accelerated=bool(compiled.is_fully_accelerated()),
    )
    started = time.perf_counter()
    try:
        with native_stderr_to_debug_log(log) as lines:
            for detail in engine.get_input_details():
                engine.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            engine.invoke()
    except (RuntimeError, ValueError) as exc:
        raise CompiledUnavailable(f"first run failed: {_reason(exc, lines)}") from None
    return engine, note, time.perf_counter() - started


@functools.cache
def _quiet_teardown() -> None:
    """LiteRT keeps environments of its own that it destroys only as the process ends,
    printing an INFO line for each accelerator ("DestroyAccelerator: ptr=...") on stderr,
    where journald files it beside the agent's own lines. Registered before the agent's
    exit handlers, this runs after them: once they are done, stderr is let go."""

    def let_go() -> None:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    atexit.register(let_go)


def _compile(
    cm: Any, entry: LiteRtAcceleratorConfig, content: bytes, accelerator: Any, threads: int
) -> Any:
    paths = entry.environment_paths()
    options = cm.Options(
        hardware_accelerators=accelerator, cpu_options=cm.CpuOptions(num_threads=threads)
    )
    try:
        with native_stderr_to_debug_log(log) as lines:
            environment = cm.Environment.create(**paths) if paths else None
            try:
                return cm.CompiledModel.from_buffer(
                    content, environment=environment, options=options
                )
            except (RuntimeError, ValueError) as exc:
                # Let go inside the capture: the failed call's frames hold LiteRT's
                # environment, whose teardown prints a line per accelerator.
                exc.__traceback__ = None
                environment = None
                raise
    except (RuntimeError, ValueError) as exc:
        absent = [
            line for line in lines if any(m in line for m in _ABSENT_MARKS[entry.accelerator])
        ]
        if absent:
            cause = _LOCATION.sub("", absent[0].strip())
            raise CompiledUnavailable(f"no {entry.accelerator} here: {cause}") from None
        # LiteRT says so in the exception or, with a bare location there, in its log.
        said = [str(exc), *lines]
        partial = entry.accelerator != "CPU" and any(_PARTIAL_MARK in text for text in said)
        reason = f"cannot compile for the {entry.accelerator}: {_reason(exc, lines)}"
        raise CompiledUnavailable(reason, partial) from None


def _reason(exc: BaseException, native: list[str]) -> str:
    """One line: the first error LiteRT logged (the cause; the exception itself often
    carries only a source location), then what the exception adds."""
    parts: list[str] = []
    logged = [line for line in native if line.strip().startswith(("ERROR", "E0"))]
    for line in logged[:1] + str(exc).splitlines():
        text = _LOCATION.sub("", line.strip()).strip()
        if text and text not in parts:
            parts.append(text)
    return ": ".join(parts) if parts else type(exc).__name__
