"""The synthetic source: shapes, determinism, anomalies; and the source registry."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from edge_agent import sources
from edge_agent.sources import CONFIGS, KINDS, REGISTRY, SourceEntry, create_source
from edge_agent.sources.camera import CameraConfig
from edge_agent.sources.iio import IioConfig
from edge_agent.sources.synthetic import SyntheticConfig, SyntheticSource
from tests.sources_helpers import read_all


def synthetic(tmp_path: Path, **fields: object) -> SyntheticSource:
    config = SyntheticConfig.model_validate({"kind": "synthetic", "count": 6, **fields})
    source = create_source("test", config, tmp_path)
    assert isinstance(source, SyntheticSource)
    return source


@pytest.mark.parametrize("pattern", ["bars", "moving_box", "noise"])
def test_images(tmp_path: Path, pattern: str) -> None:
    frames = read_all(synthetic(tmp_path, pattern=pattern, width=320, height=240))
    assert len(frames) == 6
    for frame in frames:
        assert frame.data.shape == (240, 320, 3)
        assert frame.data.dtype == np.uint8
        assert frame.is_image
        assert frame.data.flags.writeable
    changed = not np.array_equal(frames[0].data, frames[1].data)
    assert changed == (pattern != "bars")


def test_default_size(tmp_path: Path) -> None:
    frame = read_all(synthetic(tmp_path, count=1))[0]
    assert frame.data.shape == (480, 640, 3)


@pytest.mark.parametrize("pattern", ["moving_box", "noise", "sine"])
def test_same_seed_same_frames(tmp_path: Path, pattern: str) -> None:
    first = read_all(synthetic(tmp_path, pattern=pattern, seed=7, width=64, height=48))
    again = read_all(synthetic(tmp_path, pattern=pattern, seed=7, width=64, height=48))
    other = read_all(synthetic(tmp_path, pattern=pattern, seed=8, width=64, height=48))
    assert all(np.array_equal(a.data, b.data) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a.data, b.data) for a, b in zip(first, other, strict=True))


def test_sine_windows_slide_and_carry_anomalies(tmp_path: Path) -> None:
    source = synthetic(tmp_path, pattern="sine", channels=3, window=16, hop=4, anomaly_every=3)
    frames = read_all(source)
    assert [f.data.shape for f in frames] == [(16, 3)] * 6
    assert frames[0].data.dtype == np.float32
    assert not frames[0].is_image
    # Windows overlap by window - hop samples.
    for a, b in itertools.pairwise(frames):
        np.testing.assert_array_equal(a.data[4:], b.data[:12])
    assert [f.meta["anomaly"] for f in frames] == [False, False, True, False, False, True]
    assert np.abs(frames[2].data).max() > np.abs(frames[1].data).max()


def test_registry_and_entries(tmp_path: Path) -> None:
    adapter: TypeAdapter[object] = TypeAdapter(SourceEntry)
    entry = adapter.validate_python({"kind": "synthetic", "pattern": "noise"})
    assert isinstance(entry, SyntheticConfig)
    assert isinstance(adapter.validate_python({"kind": "camera", "device": "0"}), CameraConfig)
    with pytest.raises(ValidationError, match=r"unknown source kind 'radar' \(known: camera, "):
        adapter.validate_python({"kind": "radar"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        adapter.validate_python({"kind": "synthetic", "colour": "red"})
    with pytest.raises(ValidationError):
        adapter.validate_python({"kind": "iio", "device": "x", "channels": ["../etc"]})
    assert set(REGISTRY) >= {"camera", "image_dir", "iio", "lines", "synthetic"}
    mislabelled = IioConfig(device="d", channels=["a"]).model_copy(update={"kind": "camera"})
    with pytest.raises(TypeError, match="needs a CameraConfig"):
        create_source("x", mislabelled, tmp_path)


def test_every_source_module_is_registered() -> None:
    """A kind added to edge_agent/sources/ but not to pyproject.toml would not exist."""
    folder = Path(sources.__file__).parent
    helpers = {"__init__", "base", "runner", "windows", "jpeg"}
    modules = {p.stem for p in folder.glob("*.py")} - helpers
    ours = {kind for kind, config in CONFIGS.items() if config.__module__.startswith("edge_agent.")}
    assert {CONFIGS[kind].__module__.rsplit(".", 1)[1] for kind in ours} == modules
    assert KINDS.broken == {}


def test_every_field_is_described() -> None:
    union = get_args(get_args(SourceEntry)[0])
    assert set(union) == set(CONFIGS.values())
    for config in union:
        for name, field in config.model_fields.items():
            assert field.description, f"{config.__name__}.{name}"
