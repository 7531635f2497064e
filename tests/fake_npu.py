"""An NPU for the tests, since none exists here: it stands in for LiteRT 2's
`compiled_model` module where a vendor's dispatch library would answer, and runs the model
on LiteRT's real CPU kernels. It can be told to take only part of a model (LiteRT then
refuses the NPU alone with "not accelerated" and compiles with the CPU added) and to hold
one compiled input shape (a resize is refused), as real NPUs do."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ai_edge_litert import compiled_model as real

# LiteRT 2.3's own words (libLiteRt) for a model the accelerator takes only part of.
_PARTIAL_LOG = (
    b"ERROR: [compiled_model.cc:516] Some ops are not accelerated. Add "
    b"kLiteRtHwAcceleratorCpu to the compilation accelerator set to allow using the CPU "
    b"to run those.\n"
)


@dataclass
class FakeOptions:
    asked: Any  # the HardwareAccelerator flags asked for
    cpu_options: Any


class FakeNpu:
    """Used as the `compiled_model` module: `monkeypatch.setattr(ai_edge_litert,
    "compiled_model", FakeNpu(...))` and the same in sys.modules."""

    HardwareAccelerator = real.HardwareAccelerator
    CpuOptions = real.CpuOptions

    def __init__(self, *, takes_every_op: bool, fixed_shape: bool) -> None:
        self.takes_every_op = takes_every_op
        self.fixed_shape = fixed_shape
        self.compiled_with: list[Any] = []  # the accelerators of each compile that worked
        fake = self

        class Environment:
            @staticmethod
            def create(**paths: str) -> dict[str, str]:
                return paths  # the dispatch library it names is never loaded

        class CompiledModel:
            @staticmethod
            def from_buffer(content: bytes, environment: Any, options: FakeOptions) -> Any:
                return fake.compile(content, options)

        self.Environment = Environment
        self.CompiledModel = CompiledModel

    def Options(self, hardware_accelerators: Any, cpu_options: Any) -> FakeOptions:
        return FakeOptions(hardware_accelerators, cpu_options)

    def compile(self, content: bytes, options: FakeOptions) -> Any:
        npu, cpu = real.HardwareAccelerator.NPU, real.HardwareAccelerator.CPU
        alone = not (options.asked & cpu)
        if options.asked & npu and alone and not self.takes_every_op:
            # What LiteRT does: the cause on stderr, a bare location in the exception.
            os.write(2, _PARTIAL_LOG)
            raise RuntimeError("ERROR: [compiled_model.cc:412]")
        model = real.CompiledModel.from_buffer(
            content,
            options=real.Options(hardware_accelerators=cpu, cpu_options=options.cpu_options),
        )
        self.compiled_with.append(options.asked)
        return _OnNpu(model, fully=alone, fixed_shape=self.fixed_shape)


class _OnNpu:
    """The compiled model as the NPU would hand it back."""

    def __init__(self, model: Any, fully: bool, fixed_shape: bool) -> None:
        self._model = model
        self._fully = fully
        self._fixed_shape = fixed_shape

    def is_fully_accelerated(self) -> bool:
        return self._fully

    def resize_input_tensor(self, *args: Any) -> None:
        if self._fixed_shape:
            raise RuntimeError("ERROR: [dispatch.cc:51] the NPU holds one compiled shape")
        self._model.resize_input_tensor(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
