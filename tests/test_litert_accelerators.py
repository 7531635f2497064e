"""Entries run through LiteRT 2's CompiledModel: litert_gpu on a machine without a GPU
adapter, litert_npu without its vendor's package, and litert_cpu, the same kernels as
the Interpreter by the other API, on real models."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.config.load import load_settings
from edge_agent.errors import UserError
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.delegates import CpuConfig
from edge_agent.runtime.delegates.litert_cpu import LiteRtCpuConfig
from edge_agent.runtime.delegates.litert_gpu import LiteRtGpuConfig
from edge_agent.runtime.delegates.litert_npu import LiteRtNpuConfig
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.predictor import Predictor
from tests.agent_helpers import (
    SHIPPED_MODELS,
    ListSink,
    config_text,
    pattern_pipeline,
    start_agent,
    wait_until,
)
from tests.aot_model import aot_model
from tests.conftest import MODELS, ROOT

pytestmark = pytest.mark.runtime

MOBILENET = MODELS / "mobilenet_v2_int8.tflite"
DIGITS = MODELS / "digits_int8.tflite"


def _reason(model: object, name: str) -> str:
    return next(a.reason for a in model.attempts if a.delegate == name)  # type: ignore[attr-defined]


def test_gpu_without_an_adapter_falls_back_with_its_reason(backend: Backend) -> None:
    model = load_model(MOBILENET, backend, [LiteRtGpuConfig(), CpuConfig()], threads=2)
    gpu = model.attempts[0]
    if gpu.used:  # a machine with a GPU LiteRT can reach
        assert model.api == "CompiledModel"
        return
    assert model.delegate == "cpu" and model.api == "Interpreter"
    if backend.name == "litert":
        assert gpu.reason.startswith("no GPU here: ")
        assert "No adapters found" in gpu.reason
    else:
        assert (
            gpu.reason
            == "needs ai-edge-litert 2's CompiledModel; the tflite-runtime backend has none"
        )
    assert "\n" not in gpu.reason


@pytest.mark.parametrize(
    ("vendor", "package"),
    [
        ("qualcomm", "ai-edge-litert-sdk-qualcomm"),
        ("mediatek", "ai-edge-litert-sdk-mediatek"),
        ("intel", "ai-edge-litert-sdk-intel"),
        ("google_tensor", "ai-edge-litert-sdk-google-tensor"),
    ],
)
def test_npu_without_its_vendor_package_names_it(
    backend: Backend, vendor: str, package: str
) -> None:
    try:
        importlib.metadata.distribution(package)
        pytest.skip(f"{package} is installed here")
    except importlib.metadata.PackageNotFoundError:
        pass
    if backend.name != "litert":
        pytest.skip("the tflite-runtime backend refuses every CompiledModel entry first")
    model = load_model(DIGITS, backend, [LiteRtNpuConfig(vendor=vendor)], threads=1)  # type: ignore[arg-type]
    assert model.delegate == "cpu"
    assert _reason(model, "litert_npu") == f"{package} is not installed (pip install {package})"


def test_npu_with_a_dispatch_folder_that_has_no_library_says_so(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.name != "litert":
        pytest.skip("the tflite-runtime backend refuses every CompiledModel entry first")
    entry = LiteRtNpuConfig(vendor="intel", dispatch_library_path=str(tmp_path))
    model = load_model(DIGITS, backend, [entry], threads=1)
    assert _reason(model, "litert_npu") == f"no libLiteRtDispatch_*.so in {tmp_path}"


@pytest.mark.parametrize("path", [MOBILENET, DIGITS])
def test_compiled_model_on_the_cpu_gives_the_interpreter_s_outputs(
    backend: Backend, path: Path
) -> None:
    if backend.name != "litert":
        pytest.skip("CompiledModel is ai-edge-litert 2's")
    compiled = load_model(path, backend, [LiteRtCpuConfig()], threads=2)
    plain = load_model(path, backend, [], threads=2)
    assert (compiled.delegate, compiled.api) == ("litert_cpu", "CompiledModel")
    assert compiled.input == plain.input and compiled.outputs == plain.outputs
    rng = np.random.default_rng(3)
    # A batch of 3 too: resized where the model allows it, one by one where not.
    for count in (1, 3, 1):
        x = rng.integers(-128, 127, size=(count, *plain.input.sample_shape)).astype(np.int8)
        for ours, theirs in zip(compiled.run(x), plain.run(x), strict=True):
            assert np.array_equal(ours, theirs)


def test_a_compiled_model_predicts_through_the_same_predictor(backend: Backend) -> None:
    if backend.name != "litert":
        pytest.skip("CompiledModel is ai-edge-litert 2's")
    model = load_model(DIGITS, backend, [LiteRtGpuConfig(), LiteRtCpuConfig()], threads=1)
    assert model.delegate == "litert_cpu"
    predictor = Predictor(model)
    sample, geometry = predictor.load_input(MODELS / "samples" / "digit_7.png")
    assert predictor.predict([sample], [geometry])[0].result["top"][0]["label"] == "7"


def test_compiled_model_is_imported_only_when_an_entry_asks_for_it() -> None:
    code = (
        "import sys; from pathlib import Path;"
        "from edge_agent.runtime.backend import select_backend;"
        "from edge_agent.runtime.loader import load_model;"
        f"load_model(Path({str(DIGITS)!r}), select_backend('auto'), [], 1);"
        "print('ai_edge_litert.compiled_model' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def _npu_unusable() -> None:
    try:
        importlib.metadata.distribution("ai-edge-litert-sdk-qualcomm")
        pytest.skip("ai-edge-litert-sdk-qualcomm is installed here")
    except importlib.metadata.PackageNotFoundError:
        pass


@pytest.mark.parametrize(
    ("chain", "why"),
    [
        (
            [LiteRtNpuConfig(vendor="qualcomm"), CpuConfig()],
            "litert_npu: ",  # then the backend's or the missing package's reason
        ),
        (
            # Another vendor's NPU cannot run it and is not tried; nor is the CPU with its bytes.
            [LiteRtNpuConfig(vendor="mediatek"), LiteRtCpuConfig(), CpuConfig()],
            'no litert_npu entry with vendor = "qualcomm" in runtime.delegates',
        ),
    ],
)
def test_aot_npu_model_without_its_npu_runs_its_cpu_twin(
    backend: Backend,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    chain: list[Any],
    why: str,
) -> None:
    _npu_unusable()
    aot = aot_model(tmp_path, twin=True)
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime.loader"):
        model = load_model(aot, backend, chain, threads=1)
    assert model.delegate == "cpu" and model.api == "Interpreter"
    assert model.info.name == "digits_npu" and model.info.file_run == tmp_path / DIGITS.name
    cpu = model.attempts[-1]
    assert cpu.used and cpu.delegate == "cpu"
    assert cpu.reason.startswith("compiled ahead of time for the qualcomm NPU (SM8650)")
    assert why in cpu.reason and "running CPU twin digits_int8.tflite" in cpu.reason
    if chain[0].vendor == "qualcomm":
        npu = model.attempts[0]
        assert (npu.delegate, npu.used) == ("litert_npu", False)
        assert f"litert_npu: {npu.reason}" in cpu.reason
    else:
        assert [a.delegate for a in model.attempts] == ["cpu"]
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert line.startswith(f"{aot.name}: compiled ahead of time for the qualcomm NPU (SM8650)")
    predictor = Predictor(model)
    sample, geometry = predictor.load_input(MODELS / "samples" / "digit_7.png")
    assert predictor.predict([sample], [geometry])[0].result["top"][0]["label"] == "7"


@pytest.mark.parametrize(
    "chain", [[CpuConfig()], [LiteRtNpuConfig(vendor="qualcomm"), LiteRtCpuConfig()]]
)
def test_aot_npu_model_without_a_twin_is_refused_in_one_line(
    backend: Backend, tmp_path: Path, chain: list[Any]
) -> None:
    _npu_unusable()
    aot = aot_model(tmp_path, twin=False)
    with pytest.raises(UserError) as err:
        load_model(aot, backend, chain, threads=1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{aot}: compiled ahead of time for the qualcomm NPU (SM8650)")
    assert message.endswith("and its manifest names no cpu_twin")
    if len(chain) == 1:
        assert 'no litert_npu entry with vendor = "qualcomm"' in message
    elif backend.name == "litert":
        assert "litert_npu: ai-edge-litert-sdk-qualcomm is not installed" in message


def _with_npu_model(aot: Path) -> str:
    """Config text: the shipped models and the AOT one; the detector and the AOT model
    each read the same synthetic source."""
    return SHIPPED_MODELS + f'\n[models.npu]\npath = "{aot}"\nthreads = 1\n'


NPU_PIPELINES = """
[pipelines.npu_digits]
source = "pattern"
model = "npu"
"""


def _give_twin(aot: Path) -> None:
    """What an operator does to mend it: the CPU twin beside it, named in its manifest."""
    shutil.copy(DIGITS, aot.parent)
    shutil.copy(DIGITS.with_suffix(".json"), aot.parent)
    manifest_path = aot.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["cpu_twin"] = DIGITS.name
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest))
    tmp.replace(manifest_path)


def test_a_refused_aot_model_waits_while_the_other_models_run(tmp_path: Path) -> None:
    _npu_unusable()
    folder = tmp_path / "models"
    folder.mkdir()
    aot = aot_model(folder, twin=False)
    sink = ListSink()
    body = pattern_pipeline("boxes", "detector") + NPU_PIPELINES
    agent = start_agent(tmp_path, body, sink=sink, models=_with_npu_model(aot))
    config = tmp_path / "agent.toml"
    try:
        wait_until(lambda: len(sink.of("boxes")) >= 3, 15, "the detector's results")
        assert sorted(agent.pipelines) == ["boxes"] and sorted(agent.workers) == ["detector"]
        problem = agent.status.get("model npu")
        assert problem is not None
        assert "\n" not in problem.text
        assert problem.text.startswith(
            f"model npu not loaded: {aot}: compiled ahead of time for the qualcomm NPU (SM8650)"
        )
        assert problem.text.endswith("; pipeline npu_digits not started")
        assert agent.online_status()["last_error"] == problem.text
        # A reload with another change is not refused for it: the model stays refused.
        applied = agent.reload(load_settings(config))
        assert "model npu still not loaded" in applied.done
        assert agent.status.get("model npu") is not None
        # Mended, the next reload runs it and its pipeline.
        _give_twin(aot)
        applied = agent.reload(load_settings(config))
        assert "pipeline npu_digits started" in applied.done, applied.done
        wait_until(lambda: sink.of("npu_digits"), 15, "the twin's results")
        assert agent.status.get("model npu") is None
        assert agent.workers["npu"].model.info.file_run == folder / DIGITS.name
    finally:
        agent.stop()


def test_edge_agent_run_starts_without_the_refused_model_and_takes_it_once_mended(
    tmp_path: Path,
) -> None:
    """The real process: one error line at start, the detector's results, then the twin
    dropped in beside the AOT model starts its pipeline without a restart."""
    _npu_unusable()
    folder = tmp_path / "models"
    folder.mkdir()
    aot = aot_model(folder, twin=False)
    results = tmp_path / "results.jsonl"
    body = pattern_pipeline("boxes", "detector", fps=10) + NPU_PIPELINES
    body += f'\n[output]\njsonl = "{results}"\n'
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path / "state", body, models=_with_npu_model(aot)))
    log = tmp_path / "stderr.log"

    def pipelines_seen() -> set[str]:
        if not results.exists():
            return set()
        lines = results.read_text().splitlines()
        return {json.loads(line)["pipeline"] for line in lines if line.endswith("}")}

    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stderr=err,
            cwd=ROOT,
        )
        try:
            wait_until(lambda: "boxes" in pipelines_seen(), 30, "the detector's results")
            errors = [line for line in log.read_text().splitlines() if "ERROR" in line]
            assert len(errors) == 1, errors
            assert "model npu not loaded:" in errors[0]
            assert errors[0].endswith(
                "and its manifest names no cpu_twin; pipeline npu_digits not started"
            )
            _give_twin(aot)
            wait_until(lambda: "npu_digits" in pipelines_seen(), 30, "the twin's results")
            assert "resolved: model npu not loaded" in log.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


@pytest.fixture
def fake_npu(monkeypatch: pytest.MonkeyPatch, backend: Backend) -> Any:
    """Installs a FakeNpu of the given kind as LiteRT's compiled_model; the entry that
    reaches it (a dispatch folder with a library in it, as a vendor package lays out)."""
    if backend.name != "litert":
        pytest.skip("CompiledModel is LiteRT 2's; tflite-runtime has none")
    import ai_edge_litert

    from tests.fake_npu import FakeNpu

    def install(folder: Path, **kind: bool) -> tuple[FakeNpu, LiteRtNpuConfig]:
        npu = FakeNpu(**kind)
        monkeypatch.setattr(ai_edge_litert, "compiled_model", npu, raising=False)
        monkeypatch.setitem(sys.modules, "ai_edge_litert.compiled_model", npu)
        (folder / "libLiteRtDispatch_Fake.so").write_bytes(b"")
        return npu, LiteRtNpuConfig(vendor="qualcomm", dispatch_library_path=str(folder))

    return install


def _cpu_outputs(path: Path, batch: np.ndarray, backend: Backend) -> list[np.ndarray]:
    return load_model(path, backend, [CpuConfig()], threads=1).run(batch)


def test_an_npu_that_takes_part_of_a_model_runs_the_rest_on_the_cpu(
    backend: Backend, tmp_path: Path, fake_npu: Any
) -> None:
    npu, entry = fake_npu(tmp_path, takes_every_op=False, fixed_shape=False)
    model = load_model(DIGITS, backend, [entry, CpuConfig()], threads=1)
    assert (model.delegate, model.api) == ("litert_npu", "CompiledModel")
    [attempt] = model.attempts
    assert attempt.used and attempt.reason == "ops the NPU cannot take run on the CPU"
    NPU, CPU = npu.HardwareAccelerator.NPU, npu.HardwareAccelerator.CPU
    assert npu.compiled_with == [NPU | CPU]  # the NPU alone was tried first, and refused
    assert not model.interpreter.fully_accelerated
    sample = np.random.default_rng(1).integers(-128, 127, (1, 8, 8, 1), dtype=np.int8)
    for ours, cpus in zip(model.run(sample), _cpu_outputs(DIGITS, sample, backend), strict=True):
        np.testing.assert_array_equal(ours, cpus)


def test_an_npu_that_must_take_the_whole_model_is_skipped_with_why(
    backend: Backend, tmp_path: Path, fake_npu: Any
) -> None:
    npu, entry = fake_npu(tmp_path, takes_every_op=False, fixed_shape=False)
    strict = entry.model_copy(update={"cpu_for_other_ops": False})
    model = load_model(DIGITS, backend, [strict, CpuConfig()], threads=1)
    assert (model.delegate, model.api) == ("cpu", "Interpreter")
    npu_attempt = model.attempts[0]
    assert not npu_attempt.used
    assert npu_attempt.reason.startswith(
        "cannot compile for the NPU: Some ops are not accelerated. Add kLiteRtHwAcceleratorCpu"
    )
    assert npu.compiled_with == []


def test_a_batch_the_npu_cannot_take_runs_one_by_one_with_one_warning(
    backend: Backend, tmp_path: Path, fake_npu: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """MobileNetV2's batch is dynamic; the NPU holds the shape it compiled."""
    _, entry = fake_npu(tmp_path, takes_every_op=True, fixed_shape=True)
    model = load_model(MOBILENET, backend, [entry, CpuConfig()], threads=2)
    assert (model.delegate, model.api) == ("litert_npu", "CompiledModel")
    assert model.interpreter.fully_accelerated
    assert model.input.dynamic_batch
    batch = np.random.default_rng(2).integers(-128, 127, (3, 224, 224, 3), dtype=np.int8)
    with caplog.at_level(logging.WARNING, logger="edge_agent.runtime.model"):
        first = model.run(batch)
        again = model.run(batch)
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "a batch of 3 refused" in line and "the NPU holds one compiled shape" in line
    assert line.endswith("running one by one")
    expected = [
        np.concatenate(parts)
        for parts in zip(
            *(_cpu_outputs(MOBILENET, batch[i : i + 1], backend) for i in range(3)), strict=True
        )
    ]
    for result in (first, again):
        assert [o.shape[0] for o in result] == [3]
        for ours, cpus in zip(result, expected, strict=True):
            np.testing.assert_array_equal(ours, cpus)


def test_litert_s_own_teardown_lines_stay_off_stderr(backend: Backend) -> None:
    """LiteRT prints 'INFO: ... DestroyAccelerator' for each accelerator of every
    environment it tears down, up to the process's end; a user sees the one skip line."""
    if backend.name != "litert":
        pytest.skip("CompiledModel is LiteRT 2's")
    out = subprocess.run(
        [
            *(sys.executable, "-m", "edge_agent", "infer"),
            *("--delegate", "litert_gpu", "--delegate", "litert_cpu"),
            *(str(DIGITS), str(MODELS / "samples" / "digit_7.png")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "on litert_cpu" in out.stdout
    [line] = out.stderr.splitlines()
    assert "delegate litert_gpu skipped: no GPU here" in line


def test_the_agent_batches_and_swaps_a_model_run_through_compiled_model(
    backend: Backend, tmp_path: Path
) -> None:
    """Two pipelines on one source share MobileNetV2 on litert_cpu: frames are batched,
    a reload swaps the model between batches, and the health check sees nothing wrong."""
    if backend.name != "litert":
        pytest.skip("CompiledModel is LiteRT 2's")
    models = f"""
[models.cls]
path = "{MOBILENET}"
threads = 1
delegates = [{{ name = "litert_cpu" }}]
batch = {{ max_batch = 4, max_wait_ms = 30 }}
"""
    body = (
        pattern_pipeline("a", "cls", fps=15)
        + '\n[pipelines.b]\nsource = "pattern"\nmodel = "cls"\n'
    )
    sink = ListSink()
    agent = start_agent(tmp_path, body, sink=sink, models=models)
    try:
        worker = agent.workers["cls"]
        assert (worker.model.delegate, worker.model.api) == ("litert_cpu", "CompiledModel")
        wait_until(lambda: len(sink.of("a")) >= 10 and len(sink.of("b")) >= 10, 30, "results")
        results = len(sink.of("a")) + len(sink.of("b"))
        assert worker.invokes < results  # both pipelines' frames went in one invoke
        config = tmp_path / "agent.toml"
        config.write_text(config.read_text().replace("threads = 1", "threads = 2"))
        applied = agent.reload(load_settings(config))
        assert "model cls swapped, on litert_cpu" in applied.done, applied.done
        assert agent.workers["cls"] is worker and worker.model.threads == 2
        assert worker.model.api == "CompiledModel"
        before = len(sink.of("a"))
        wait_until(lambda: len(sink.of("a")) >= before + 5, 30, "results after the swap")
        assert agent.health(stuck_after_s=5) == []
    finally:
        agent.stop()
