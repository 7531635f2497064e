"""Shared fixtures: the runtime under test (LiteRT, or tflite-runtime in the legacy
environment), the shipped models, and the CLI run as a real process."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from edge_agent.runtime.backend import Backend, select_backend

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.mqtt_fixtures import Broker
    from tests.operator import Operator
    from tests.update_helpers import Keys

# Real Mosquitto brokers and a TCP proxy, for every test that talks MQTT.
pytest_plugins = ["tests.mqtt_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BACKEND = os.environ.get("EDGE_AGENT_TEST_BACKEND", "litert")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A CLI run in this process (`run`, a reload that changes the log format) puts its own
    handler on the root logger, on the stderr of that moment: pytest's capture, closed
    after the test. Left there, every later log line in the process ends in a 'Logging
    error' on the next test's stderr."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope="session")
def backend() -> Backend:
    return select_backend(BACKEND)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def models() -> Path:
    return MODELS


@pytest.fixture
def operator(broker: Broker) -> Iterator[Operator]:
    """An operator on the test's broker: sends commands, collects replies and events."""
    from tests.operator import Operator

    op = Operator(broker)
    with op:  # Subscriber.__enter__ is typed as returning a Subscriber
        yield op


def raw_interpreter(backend: Backend, path: Path, threads: int = 2) -> Any:
    """The runtime's own interpreter, used the plain way, as the reference."""
    interpreter = backend.interpreter_class(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    if "--runtime" not in args and args and args[0] in ("infer", "bench"):
        args = (args[0], "--runtime", BACKEND, *args[1:])
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """An operator's Ed25519 key pair; `keys.config()` is the [updates] trust line."""
    from tests.update_helpers import Keys

    return Keys(tmp_path / "keys")


@pytest.fixture(scope="session")
def fake_delegate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "a C compiler is needed to build the test delegate"
    out = tmp_path_factory.mktemp("delegate") / "libfake_delegate.so"
    source = ROOT / "tests" / "fixtures" / "fake_delegate.c"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(out), str(source)], check=True)
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A module skipped whole (pytest.skip at import, as the real-systemd tests are without
    root or nspawn) says why in one line, even in a plain `pytest -q` run; with -rs pytest's
    own summary says it instead."""
    if terminalreporter.hasopt("s"):
        return
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report, pytest.CollectReport) and isinstance(report.longrepr, tuple):
            reason = report.longrepr[2].removeprefix("Skipped: ")
            terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
