"""Staging: a new model version loaded in an interpreter of its own, with the delegate
chain the running one uses, checked on its golden set and timed against the running
model on the same input, before anything running is touched."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.backend import Backend
from edge_agent.runtime.delegates import DelegateConfig
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.model import LoadedModel
from edge_agent.updates.manifest import UpdateRefused

_TIMED_RUNS = 30  # invokes timed per model: enough for a stable median on a busy board


@dataclass(frozen=True)
class StageReport:
    delegate: str
    golden_agreement: float | None
    latency_ms: float  # median invoke of the new model
    baseline_ms: float | None  # the running model, same input, same run

    @property
    def latency_ratio(self) -> float | None:
        if not self.baseline_ms:
            return None
        return self.latency_ms / self.baseline_ms

    def as_dict(self) -> dict[str, object]:
        return {
            "delegate": self.delegate,
            "golden_agreement": self.golden_agreement,
            "latency_ms": round(self.latency_ms, 3),
            "baseline_ms": None if self.baseline_ms is None else round(self.baseline_ms, 3),
        }


def stage(
    model_path: Path,
    backend: Backend,
    delegates: Sequence[DelegateConfig],
    threads: int | None,
    *,
    golden: Path | None,
    min_agreement: float,
    required_delegates: Sequence[str],
    running_path: Path | None,
) -> StageReport:
    """Raises UpdateRefused with the reason when the version must not go live."""
    try:
        model = load_model(model_path, backend, delegates, threads)
    except Exception as exc:  # any load failure is a refusal, never a crash
        raise UpdateRefused(f"staging: the new model does not load: {exc}") from None
    if required_delegates and model.delegate not in required_delegates:
        raise UpdateRefused(
            f"staging: needs delegate {' or '.join(required_delegates)}, "
            f"but it runs on {model.delegate} here"
        )
    agreement = None
    if golden is not None:
        agreement = golden_agreement(model, golden)
        if agreement < min_agreement:
            raise UpdateRefused(
                f"staging: golden set agreement {agreement:.3f} is under {min_agreement:.3f}"
            )
    sample = np.zeros(model.input.sample_shape or (1,), dtype=model.input.dtype)
    latency = _median_invoke_ms(model, sample)
    baseline = None
    if running_path is not None:
        try:
            running = load_model(running_path, backend, delegates, threads)
            if running.input.shape == model.input.shape:
                baseline = _median_invoke_ms(running, sample.astype(running.input.dtype))
        except Exception:
            baseline = None  # no baseline, so no latency gate at staging
    return StageReport(model.delegate, agreement, latency, baseline)


def golden_agreement(model: LoadedModel, golden: Path) -> float:
    """Share of golden inputs whose argmax of the first output is the expected class."""
    try:
        with np.load(golden) as data:
            inputs, expected = data["inputs"], data["expected"]
    except (OSError, KeyError, ValueError) as exc:
        raise UpdateRefused(f"staging: golden set {golden.name} unreadable: {exc}") from None
    if len(inputs) == 0 or len(inputs) != len(expected):
        raise UpdateRefused(
            f"staging: golden set has {len(inputs)} inputs and {len(expected)} expected values"
        )
    if tuple(inputs.shape[1:]) != tuple(model.input.shape[1:]):
        raise UpdateRefused(
            f"staging: golden inputs are {tuple(inputs.shape[1:])}, "
            f"the model takes {tuple(model.input.shape[1:])}"
        )
    quant = model.input.quant
    # Float golden inputs are real values: quantized with the model's own parameters.
    if inputs.dtype.kind == "f" and quant.is_quantized:
        tensor = quant.quantize(inputs).astype(model.input.dtype)
    else:
        tensor = inputs.astype(model.input.dtype)
    hits = 0
    for i in range(len(tensor)):
        out = model.dequantize(model.run(tensor[i : i + 1]))[0]
        hits += int(np.argmax(out[0]) == int(expected[i]))
    return hits / len(tensor)


def _median_invoke_ms(model: LoadedModel, sample: npt.NDArray[Any]) -> float:
    batch = sample[None]
    model.run(batch)  # the first invoke prepares; not timed
    times = []
    for _ in range(_TIMED_RUNS):
        started = time.perf_counter()
        model.run(batch)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000
