"""Decoder plugins, installed for real with pip and run in the agent: the example from
docs/decoders.md, one that does not import and one that raises on every frame."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_helpers import ListSink, start_agent
from tests.conftest import MODELS
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]

BAD_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "edge-agent-bad-decoders"
version = "0.1.0"

[tool.setuptools]
py-modules = ["bad_decoders", "needs_missing"]

[project.entry-points."edge_agent.decoders"]
raises_on_frames = "bad_decoders:RaisesOnFrames"
needs_missing = "needs_missing:NeedsMissing"
"""

BAD_DECODERS = """
from edge_agent.runtime.decoders import Options


class RaisesOnFrames:
    class Config(Options):
        pass

    def __init__(self, config, context):
        pass

    def __call__(self, outputs, geometry=None):
        raise ValueError("this decoder fails on every frame")
"""

NEEDS_MISSING = """
import edge_agent_no_such_dependency  # not installed: the import fails

class NeedsMissing:
    pass
"""


def doc_files(doc: Path) -> dict[str, str]:
    """The files of docs/decoders.md's example: code blocks that start with `# FILE: name`."""
    blocks = re.findall(r"```\w*\n# FILE: (\S+)\n(.*?)```", doc.read_text(), re.S)
    return dict(blocks)


@pytest.fixture(scope="module")
def plugins(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both plugin packages built and installed by pip into a folder of their own."""
    base = tmp_path_factory.mktemp("plugins")
    example = base / "label-alarm"
    bad = base / "bad-decoders"
    files = doc_files(ROOT / "docs" / "decoders.md")
    assert set(files) == {"pyproject.toml", "label_alarm.py"}
    for folder, content in (
        (example, files),
        (
            bad,
            {
                "pyproject.toml": BAD_PYPROJECT,
                "bad_decoders.py": BAD_DECODERS,
                "needs_missing.py": NEEDS_MISSING,
            },
        ),
    ):
        folder.mkdir()
        for name, text in content.items():
            (folder / name).write_text(text)
    site = base / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(example),
            str(bad),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return site


def digits_with_task(tmp_path: Path, task: str, decode: dict[str, object]) -> Path:
    """A copy of the digits model whose manifest names `task`."""
    model = tmp_path / f"digits_{task.replace(':', '_')}.tflite"
    model.write_bytes((MODELS / "digits_int8.tflite").read_bytes())
    manifest = json.loads((MODELS / "digits_int8.json").read_text())
    manifest.update(file=model.name, task=task, decode=decode)
    model.with_suffix(".json").write_text(json.dumps(manifest))
    return model


def test_the_documented_plugin_runs_in_edge_agent_infer(plugins: Path, tmp_path: Path) -> None:
    model = digits_with_task(tmp_path, "label_alarm", {"label": "3", "min_score": 0.5})
    samples = [MODELS / "samples" / f"digit_{d}.png" for d in (3, 0)]
    env = {**os.environ, "PYTHONPATH": str(plugins)}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "infer", str(model), *map(str, samples), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    three, zero = (json.loads(line)["result"] for line in proc.stdout.splitlines())
    assert three["label"] == "3" and three["alarm"] is True and three["score"] > 0.5
    assert zero["alarm"] is False and zero["score"] < 0.5


def test_a_bad_plugin_option_stops_the_load_with_one_line(plugins: Path, tmp_path: Path) -> None:
    model = digits_with_task(tmp_path, "label_alarm", {"label": "3", "min_scor": 0.5})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "infer",
            str(model),
            str(MODELS / "samples" / "digit_3.png"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(plugins)},
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "edge-agent: model digits: decode.min_scor: Extra inputs are not permitted "
        "(decoder label_alarm)"
    ]


def test_failing_plugins_are_said_once_counted_and_the_other_pipelines_go_on(
    plugins: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.syspath_prepend(str(plugins))
    models = {
        "good": digits_with_task(tmp_path, "classification", {"top_k": 1}),
        "missing": digits_with_task(tmp_path, "needs_missing", {}),
        "raising": digits_with_task(tmp_path, "raises_on_frames", {}),
    }
    body = "".join(
        f'[models.{name}]\npath = "{path}"\nthreads = 1\n\n'
        f'[pipelines.{name}]\nsource = "pattern"\nmodel = "{name}"\n\n'
        for name, path in models.items()
    )
    source = '\n[sources.pattern]\nkind = "synthetic"\npattern = "moving_box"\nfps = 50\n\n'
    sink = ListSink()
    with caplog.at_level(logging.ERROR):
        agent = start_agent(tmp_path, source + body, sink=sink, models="")
        try:
            wait_until(lambda: len(sink.of("good")) >= 20, timeout=30, what="20 good results")
            stats = {name: agent.pipelines[name].stats.snapshot() for name in models}
        finally:
            agent.stop()
    assert all(len(r.result["top"]) == 1 for r in sink.of("good"))
    assert sink.of("missing") == [] and sink.of("raising") == []
    assert stats["good"]["errors"] == 0
    assert stats["missing"]["errors"] >= 10 and stats["raising"]["errors"] >= 10
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    missing = [m for m in lines if "needs_missing" in m]
    raising = [m for m in lines if "raises_on_frames" in m]
    assert len(missing) == 1 and "cannot import" in missing[0]
    assert "edge_agent_no_such_dependency" in missing[0]
    assert len(raising) == 1 and "this decoder fails on every frame" in raising[0]
    assert "Traceback" not in caplog.text
