"""The delegate chain against real delegate libraries: one the tests compile with gcc
(tests/fixtures/fake_delegate.c, failing on purpose in each way a delegate can), a
library that is not a delegate, a missing one, and a model that needs the Edge TPU."""

from __future__ import annotations

import ctypes.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import UserError
from edge_agent.runtime import delegates
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.delegates import DELEGATES, REGISTRY, CpuConfig
from edge_agent.runtime.delegates.edgetpu import EdgeTpuConfig
from edge_agent.runtime.delegates.external import ExternalConfig
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.predictor import Predictor
from tests.conftest import MODELS, raw_interpreter, run_cli

pytestmark = pytest.mark.runtime

DIGITS = MODELS / "digits_int8.tflite"


def fake(library: Path, mode: str) -> ExternalConfig:
    return ExternalConfig(library=str(library), label=f"fake-{mode}", options={"mode": mode})


def libm() -> str:
    return ctypes.util.find_library("m") or "libm.so.6"


def test_each_failure_is_skipped_with_its_reason_and_the_cpu_runs(
    backend: Backend, fake_delegate: Path
) -> None:
    chain = [
        ExternalConfig(library="/nonexistent/libmissing.so", label="missing"),
        ExternalConfig(library=libm(), label="not-a-delegate"),
        fake(fake_delegate, "refuse"),
        fake(fake_delegate, "prepare_fail"),
        fake(fake_delegate, "none"),
        fake(fake_delegate, "invoke_fail"),
        CpuConfig(),
    ]
    model = load_model(DIGITS, backend, chain)
    assert model.delegate == "cpu"
    reasons = {a.delegate: a.reason for a in model.attempts if not a.used}
    assert "cannot open shared object file" in reasons["missing"]
    assert "is not a TFLite delegate" in reasons["not-a-delegate"]
    assert "delegate refused to start" in reasons["fake-refuse"]
    assert "refused (mode=refuse)" in reasons["fake-refuse"]
    assert "cannot apply to the graph" in reasons["fake-prepare_fail"]
    assert "took no operation" in reasons["fake-none"]
    assert "first invoke failed" in reasons["fake-invoke_fail"]
    assert [a.delegate for a in model.attempts] == [c.label or "cpu" for c in chain[:-1]] + ["cpu"]
    assert model.attempts[-1].used

    # And the CPU's answers are the real ones.
    reference = raw_interpreter(backend, DIGITS)
    x = np.random.default_rng(1).integers(-128, 127, size=model.input.shape).astype(np.int8)
    reference.set_tensor(reference.get_input_details()[0]["index"], x)
    reference.invoke()
    expected = reference.get_tensor(reference.get_output_details()[0]["index"])
    assert np.array_equal(model.run(x)[0], expected)


def test_a_delegate_that_takes_the_graph_is_the_one_that_runs(
    backend: Backend, fake_delegate: Path
) -> None:
    chain = [
        ExternalConfig(library="/nonexistent/libedgetpu.so.1"),
        fake(fake_delegate, "claim_noop"),
    ]
    model = load_model(DIGITS, backend, chain)
    assert model.delegate == "fake-claim_noop"
    assert [(a.delegate, a.used) for a in model.attempts] == [
        ("libedgetpu.so.1", False),
        ("fake-claim_noop", True),
    ]
    counters = ctypes.CDLL(str(fake_delegate))
    assert ctypes.c_int.in_dll(counters, "fake_delegate_kernel_invoke_calls").value > 0


def test_edgetpu_model_falls_back_to_its_cpu_twin(backend: Backend) -> None:
    model = load_model(
        MODELS / "digits_int8_edgetpu.tflite", backend, [EdgeTpuConfig(), CpuConfig()]
    )
    assert model.delegate == "cpu"
    assert model.info.file_run.name == "digits_int8.tflite"
    assert model.info.name == "digits_edgetpu"
    edgetpu, cpu = model.attempts
    assert not edgetpu.used and "libedgetpu.so.1" in edgetpu.reason
    assert cpu.used and "edgetpu-custom-op" in cpu.reason and "CPU twin" in cpu.reason
    predictor = Predictor(model)
    sample, geometry = predictor.load_input(MODELS / "samples" / "digit_7.png")
    assert predictor.predict([sample], [geometry])[0].result["top"][0]["label"] == "7"


def test_edgetpu_model_without_a_twin_says_what_it_needs(backend: Backend, tmp_path: Path) -> None:
    shutil.copy(MODELS / "digits_int8_edgetpu.tflite", tmp_path)
    manifest = json.loads((MODELS / "digits_int8_edgetpu.json").read_text())
    manifest["cpu_twin"] = None
    (tmp_path / "digits_int8_edgetpu.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="edgetpu-custom-op") as err:
        load_model(tmp_path / "digits_int8_edgetpu.tflite", backend, [EdgeTpuConfig()])
    assert "libedgetpu.so.1" in str(err.value)


def test_xnnpack_refusing_a_valid_graph_falls_back_to_builtin_kernels(backend: Backend) -> None:
    path = MODELS / "xnnpack_refusal_f32.tflite"
    model = load_model(path, backend)
    assert model.delegate == "cpu"
    if backend.name == "litert":
        assert "XNNPACK refused the graph" in model.attempts[-1].reason
    x = np.random.default_rng(2).standard_normal(model.input.shape).astype(np.float32)
    [out] = model.run(x)
    expected = float(np.dot(x.reshape(-1), np.arange(1, 7, dtype=np.float32)))
    assert float(out.reshape(-1)[0]) == pytest.approx(expected, rel=1e-5)


def test_xnnpack_can_be_turned_off(backend: Backend) -> None:
    model = load_model(DIGITS, backend, [CpuConfig(xnnpack=False)])
    assert model.attempts[-1].reason == "XNNPACK off by config"


def test_failed_delegates_print_their_reasons_and_no_teardown_noise(fake_delegate: Path) -> None:
    proc = run_cli(
        "infer",
        str(DIGITS),
        str(MODELS / "samples" / "digit_3.png"),
        "--delegate",
        "external:library=/nonexistent/libmissing.so",
        "--delegate",
        f"external:library={libm()}",
        "--delegate",
        f"external:library={fake_delegate},mode=refuse",
        "--delegate",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 3, proc.stderr
    assert "libmissing.so skipped: library not loaded" in lines[0]
    assert "is not a TFLite delegate" in lines[1]
    assert "refused" in lines[2]
    assert "Exception ignored" not in proc.stderr
    assert proc.stdout.startswith(f"{MODELS / 'samples' / 'digit_3.png'}: 3 ")


def test_every_delegate_module_is_registered() -> None:
    """A delegate added to runtime/delegates/ but not to pyproject.toml would not exist."""
    folder = Path(delegates.__file__).parent
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "base"}
    ours = {c.__module__ for c in REGISTRY.values() if c.__module__.startswith("edge_agent.")}
    assert {name.rsplit(".", 1)[1] for name in ours} == modules
    assert DELEGATES.broken == {}
