"""Source and delegate plugins, installed for real with pip: a source kind and a delegate
from a user's package run in the agent from a config file, and a config naming a kind or
delegate that does not exist (or whose plugin does not import) is told so in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import MODELS

ROOT = Path(__file__).resolve().parents[1]

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "edge-agent-test-plugins"
version = "0.1.0"

[tool.setuptools]
py-modules = ["ticker_source", "fake_npu", "broken_source"]

[project.entry-points."edge_agent.sources"]
ticker = "ticker_source:TickerConfig"
broken = "broken_source:BrokenConfig"

[project.entry-points."edge_agent.delegates"]
fake_npu = "fake_npu:FakeNpuConfig"
"""

# A finite source of flat gray images, each marked in its metadata.
TICKER_SOURCE = """
import time
from typing import Literal

import numpy as np
from pydantic import Field

from edge_agent.sources import EndOfStream, Frame, Source, SourceConfig


class TickerConfig(SourceConfig):
    kind: Literal["ticker"] = "ticker"
    count: int = Field(3, ge=1, description="Frames before the end.")


class TickerSource(Source):
    def open(self) -> None:
        self.sent = 0

    def read(self) -> Frame:
        if self.sent >= self.config.count:
            raise EndOfStream
        image = np.full((28, 28), 40 * self.sent, np.uint8)
        self.sent += 1
        return Frame(image, time.monotonic(), time.time(), self.sent - 1, {"tick": self.sent})
"""

# The test delegate library (tests/fixtures/fake_delegate.c) under a name and option of its own.
FAKE_NPU = """
from typing import Literal

from pydantic import Field

from edge_agent.runtime.delegates import DelegateConfig


class FakeNpuConfig(DelegateConfig):
    name: Literal["fake_npu"] = "fake_npu"
    mode: Literal["claim_noop", "refuse"] = Field("claim_noop", description="What it does.")

    def options(self) -> dict[str, str]:
        return {"mode": self.mode}
"""

BROKEN_SOURCE = """
import edge_agent_no_such_dependency  # not installed: the import fails
"""

# Runs the agent from a config file in a fresh interpreter (the registries are read at
# import), until the source has ended, and prints what came out.
RUN_AGENT = """
import json, sys
from pathlib import Path
from edge_agent.agent import Agent
from edge_agent.config.load import load_settings
from tests.agent_helpers import ListSink, wait_until

sink = ListSink()
agent = Agent(load_settings(Path(sys.argv[1])), sink=sink)
agent.start()
try:
    wait_until(lambda: len(sink.of("ticks")) >= 3, timeout=30, what="3 results")
finally:
    agent.stop()
print(json.dumps([{"delegate": r.delegate, "source": r.source} for r in sink.of("ticks")]))
"""


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package built and installed by pip into a folder of its own."""
    base = tmp_path_factory.mktemp("plugins")
    package = base / "test-plugins"
    package.mkdir()
    for name, text in {
        "pyproject.toml": PYPROJECT,
        "ticker_source.py": TICKER_SOURCE,
        "fake_npu.py": FAKE_NPU,
        "broken_source.py": BROKEN_SOURCE,
    }.items():
        (package / name).write_text(textwrap.dedent(text))
    site = base / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), package],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return site


def write_config(tmp_path: Path, delegate: str, source: str) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[device]\nid = "t"\nstate_dir = "{tmp_path / "state"}"\n\n'
        f'[runtime]\ndelegates = [{delegate}, "cpu"]\n\n'
        f'[models.digits]\npath = "{MODELS / "digits_int8.tflite"}"\nthreads = 1\n\n'
        f"[sources.ticks]\n{source}\n\n"
        '[pipelines.ticks]\nsource = "ticks"\nmodel = "digits"\n'
    )
    return config


def run(plugins: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(ROOT)])},
        timeout=120,
    )


def test_a_plugin_source_and_delegate_run_from_a_config_file(
    plugins: Path, fake_delegate: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        f'{{name = "fake_npu", library = "{fake_delegate}"}}',
        'kind = "ticker"\ncount = 3\nfps = 20',
    )
    proc = run(plugins, "-c", RUN_AGENT, str(config))
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["source"] for r in results] == [
        {"name": "ticks", "index": i, "tick": i + 1} for i in range(3)
    ]
    assert {r["delegate"] for r in results} == {"fake_npu"}


def test_unknown_names_are_one_line_listing_the_plugins_too(plugins: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, '"fake_tpu"', 'kind = "tickr"')
    proc = run(plugins, "-m", "edge_agent", "config", "validate", str(config))
    assert proc.returncode == 2
    delegate, source = proc.stderr.splitlines()
    assert delegate == (
        f"{config}:6: runtime.delegates.0: unknown delegate 'fake_tpu' (known: armnn, cpu, "
        "edgetpu, external, fake_npu, gpu, litert_cpu, litert_gpu, litert_npu, qnn, teflon, "
        "vx; a plugin adds its own through the entry-point group edge_agent.delegates)"
    )
    assert source == (
        f"{config}:12: sources.ticks: unknown source kind 'tickr' (known: camera, iio, "
        "image_dir, lines, synthetic, ticker; a plugin adds its own through the entry-point "
        "group edge_agent.sources)"
    )


def test_a_kind_whose_plugin_does_not_import_says_why(plugins: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, '"cpu"', 'kind = "broken"')
    proc = run(plugins, "-m", "edge_agent", "config", "validate", str(config))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"{config}:12: sources.ticks: source kind 'broken' cannot be used: broken = "
        "broken_source:BrokenConfig: cannot import: ModuleNotFoundError: No module named "
        "'edge_agent_no_such_dependency'"
    ]
    # Without the plugin folder the same config names only the built-in kinds.
    bare = subprocess.run(
        [sys.executable, "-m", "edge_agent", "config", "validate", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert "unknown source kind 'broken' (known: camera, iio, image_dir, lines, synthetic;" in (
        bare.stderr
    )
