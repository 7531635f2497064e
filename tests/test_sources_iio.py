"""The IIO source against a faked sysfs tree (real files laid out as the kernel does)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_agent.sources import create_source
from edge_agent.sources.base import SourceState, SourceUnusable
from edge_agent.sources.iio import IioConfig, IioSource
from edge_agent.sources.windows import Windower
from tests.sources_helpers import Collector, start_runner


def fake_device(root: Path, number: int, name: str, files: dict[str, str]) -> Path:
    device = root / f"iio:device{number}"
    device.mkdir(parents=True)
    (device / "name").write_text(name + "\n")
    for file, value in files.items():
        (device / file).write_text(value + "\n")
    return device


ACCEL = {
    "in_accel_x_raw": "100",
    "in_accel_y_raw": "-20",
    "in_accel_z_raw": "4",
    "in_accel_scale": "0.5",  # shared by the three
    "in_accel_offset": "10",
    "in_accel_z_scale": "2",  # its own wins
    "in_temp_raw": "3000",
}


def iio(root: Path, state: Path, **fields: object) -> IioSource:
    config = IioConfig.model_validate(
        {
            "kind": "iio",
            "device": "lsm6dsl",
            "channels": ["accel_x", "accel_y", "accel_z"],
            "rate_hz": 1000,
            "window": 8,
            "hop": 4,
            "sysfs_root": str(root),
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            **fields,
        }
    )
    source = create_source("imu", config, state)
    assert isinstance(source, IioSource)
    return source


def test_scale_offset_and_windows(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    fake_device(root, 0, "other-adc", {"in_voltage0_raw": "1"})
    device = fake_device(root, 1, "lsm6dsl", ACCEL)
    source = iio(root, tmp_path)
    source.open()
    try:
        first = source.read()
        assert first is not None
        assert first.data.shape == (8, 3) and first.data.dtype == np.float32
        np.testing.assert_allclose(first.data, [[55.0, -5.0, 28.0]] * 8)
        (device / "in_accel_x_raw").write_text("0\n")
        second = source.read()
        assert second is not None
        # A hop of 4: four old samples, then four new ones.
        np.testing.assert_allclose(second.data[:, 0], [55.0] * 4 + [5.0] * 4)
        assert [first.index, second.index] == [0, 1]
    finally:
        source.close()


def test_device_by_node_name_and_defaults(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    fake_device(root, 3, "ads1015", {"in_voltage0_raw": "7", "in_voltage1_raw": "9"})
    source = iio(root, tmp_path, device="iio:device3", channels=["voltage0", "voltage1"])
    source.open()
    try:
        frame = source.read()
    finally:
        source.close()
    assert frame is not None
    np.testing.assert_allclose(frame.data, [[7.0, 9.0]] * 8)  # scale 1, offset 0


def test_unknown_channel_is_unusable(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    fake_device(root, 0, "lsm6dsl", ACCEL)
    with pytest.raises(SourceUnusable, match=r"no channel 'gyro_x'.*accel_x"):
        iio(root, tmp_path, channels=["gyro_x"]).open()


def test_bad_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    device = fake_device(root, 0, "lsm6dsl", ACCEL)
    (device / "in_accel_y_raw").write_text("garbage\n")
    source = iio(root, tmp_path, window=4, hop=4)
    collector = Collector()
    runner = start_runner(source, collector)
    try:
        assert collector.wait(lambda: source.counters.get("bad_samples", 0) >= 5)
        assert collector.frames == []
        (device / "in_accel_y_raw").write_text("2\n")
        assert collector.wait_frames(2)
    finally:
        runner.stop()
    np.testing.assert_allclose(collector.frames[-1].data[:, 1], [6.0] * 4)


def test_missing_device_reconnects_then_runs(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    root.mkdir()
    collector = Collector()
    runner = start_runner(iio(root, tmp_path), collector)
    try:
        assert collector.wait_state(SourceState.RECONNECTING)
        assert "'lsm6dsl' not found" in runner.last_error
        device = fake_device(root, 0, "lsm6dsl", ACCEL)
        assert collector.wait_frames(3)
        shutil.rmtree(device)  # unplugged
        assert collector.wait(lambda: collector.state_names().count(SourceState.RECONNECTING) == 2)
        assert "gone" in runner.last_error or "not found" in runner.last_error
    finally:
        runner.stop()
    assert collector.state_names()[:3] == [
        SourceState.RECONNECTING,
        SourceState.RUNNING,
        SourceState.RECONNECTING,
    ]


def test_windower_hops() -> None:
    windower = Windower(window=4, hop=2, channels=1)
    out = [windower.push([float(i)]) for i in range(10)]
    windows = [w[:, 0].tolist() for w in out if w is not None]
    assert windows == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]]
    sparse = Windower(window=2, hop=3, channels=2)
    got = [w for w in (sparse.push([i, -i]) for i in range(8)) if w is not None]
    assert [w[:, 0].tolist() for w in got] == [[0, 1], [3, 4], [6, 7]]
    assert got[0].shape == (2, 2) and got[0].dtype == np.float32
