"""A model loaded on an interpreter: quantized tensors in, raw outputs out, batched
when the model lets its batch dimension be resized."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.errors import UserError
from edge_agent.runtime.manifest import ModelManifest
from edge_agent.runtime.quantization import QuantParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    quant: QuantParams
    dynamic_batch: bool

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> TensorSpec:
        signature = detail.get("shape_signature")
        dynamic = signature is not None and len(signature) > 0 and int(signature[0]) == -1
        return cls(
            index=int(detail["index"]),
            name=str(detail["name"]),
            shape=tuple(int(d) for d in detail["shape"]),
            dtype=np.dtype(detail["dtype"]),
            quant=QuantParams.from_detail(detail),
            dynamic_batch=dynamic,
        )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input without the batch dimension."""
        return self.shape[1:]


@dataclass(frozen=True)
class DelegateAttempt:
    """One entry of the delegate chain and what became of it."""

    delegate: str
    used: bool
    reason: str


@dataclass(frozen=True)
class ModelInfo:
    """Identity of the loaded model, as results and reports name it."""

    name: str
    version: str
    sha256: str
    path: Path
    file_run: Path  # the CPU twin when the model itself could not run


class LoadedModel:
    """An interpreter with its model. Not thread-safe: one caller invokes at a time."""

    def __init__(
        self,
        interpreter: Any,
        *,
        first_invoke_s: float,
        info: ModelInfo,
        manifest: ModelManifest,
        labels: list[str],
        backend: str,
        rules: dict[str, str] | None = None,
        delegate: str,
        attempts: list[DelegateAttempt],
        threads: int,
    ) -> None:
        self.interpreter = interpreter
        self.first_invoke_s = first_invoke_s
        self.info = info
        self.manifest = manifest
        self.labels = labels
        # Which source chose each part of the description (runtime.describe).
        self.rules = rules or {}
        self.backend = backend
        self.delegate = delegate
        self.attempts = attempts
        self.threads = threads
        inputs = interpreter.get_input_details()
        if len(inputs) != 1:
            raise UserError(
                f"{info.path}: {len(inputs)} inputs; models with one input are supported"
            )
        self.input = TensorSpec.from_detail(inputs[0])
        self.outputs = [TensorSpec.from_detail(d) for d in interpreter.get_output_details()]
        self._batch = self.input.shape[0] if self.input.shape else 1
        self._resizable = self.input.dynamic_batch
        # "Interpreter", or "CompiledModel" for an entry run through LiteRT 2's API.
        self.api: str = getattr(interpreter, "api", "Interpreter")

    def run(self, batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """Invoke on `batch` (already in the input dtype, leading batch dimension) and
        return each output's raw tensor, batch first."""
        count = batch.shape[0]
        if count == self._batch:
            return self._invoke(batch)
        if self._resizable:
            try:
                self._resize(count)
            except RuntimeError as exc:
                # An accelerator may hold one compiled shape: batch 1 from then on.
                self._resizable = False
                log.warning(
                    "%s: a batch of %d refused (%s); running one by one",
                    self.info.name,
                    count,
                    " ".join(str(exc).split()),
                )
            else:
                return self._invoke(batch)
        # Fixed batch of 1: one invoke per input, same results.
        per_item = [self._invoke(batch[i : i + 1]) for i in range(count)]
        return [np.concatenate(parts) for parts in zip(*per_item, strict=True)]

    def _invoke(self, batch: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        interpreter = self.interpreter
        interpreter.set_tensor(self.input.index, batch)
        interpreter.invoke()
        return [interpreter.get_tensor(out.index) for out in self.outputs]

    def _resize(self, count: int) -> None:
        self.interpreter.resize_tensor_input(
            self.input.index, [count, *self.input.sample_shape], strict=False
        )
        self.interpreter.allocate_tensors()
        self._batch = count

    def dequantize(self, raw: list[npt.NDArray[Any]]) -> list[npt.NDArray[np.float32]]:
        return [spec.quant.dequantize(t) for spec, t in zip(self.outputs, raw, strict=True)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.info.name,
            "version": self.info.version,
            "sha256": self.info.sha256,
            "file": str(self.info.file_run),
            "backend": self.backend,
            "api": self.api,
            "delegate": self.delegate,
            "threads": self.threads,
            "delegate_attempts": [
                {"delegate": a.delegate, "used": a.used, "reason": a.reason} for a in self.attempts
            ],
        }
