"""The camera source on a real MJPG video file, an MJPEG stream over HTTP, and the cases
OpenCV cannot open."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

import pytest

from edge_agent.sources import create_source
from edge_agent.sources.base import SourceState
from edge_agent.sources.camera import (
    NO_GSTREAMER,
    CameraConfig,
    CameraSource,
    device_access_problem,
    device_kind,
    gstreamer_available,
)
from tests.sources_helpers import (
    Collector,
    MjpegServer,
    corrupt_jpeg_frame,
    read_all,
    start_runner,
    write_video,
)

FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2}


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", frames=30)


def camera(tmp_path: Path, device: int | str, **fields: object) -> CameraSource:
    config = CameraConfig.model_validate({"kind": "camera", "device": device, **FAST, **fields})
    source = create_source("cam", config, tmp_path)
    assert isinstance(source, CameraSource)
    return source


def test_device_kinds() -> None:
    assert device_kind(0) == "index"
    assert CameraConfig(device="2").device == 2
    assert device_kind("/dev/video0") == "v4l2"
    assert device_kind("rtsp://user:pw@10.0.0.5/stream") == "url"
    assert device_kind("https://cam.local/mjpg") == "url"
    assert device_kind("videotestsrc ! videoconvert ! appsink") == "gstreamer"
    assert device_kind("rtspsrc location=rtsp://x ! decodebin ! appsink") == "gstreamer"
    assert device_kind("clips/a.mp4") == "file"


def test_file_to_the_end(tmp_path: Path, video: Path) -> None:
    frames = read_all(camera(tmp_path, str(video)))
    assert len(frames) == 30
    assert frames[0].data.shape == (480, 640, 3)
    assert [f.index for f in frames] == list(range(30))
    positions = [f.meta["pos_ms"] for f in frames]
    assert positions == sorted(positions)
    assert positions[-1] > positions[0]


def test_file_loops(tmp_path: Path, video: Path) -> None:
    frames = read_all(camera(tmp_path, str(video), loop=True), limit=75)
    assert len(frames) == 75
    # The second pass starts again at the beginning.
    assert frames[30].meta["pos_ms"] < frames[29].meta["pos_ms"]


def test_corrupt_frame_is_skipped_and_counted(tmp_path: Path, video: Path) -> None:
    broken = tmp_path / "broken.avi"
    shutil.copy(video, broken)
    corrupt_jpeg_frame(broken, 10)
    source = camera(tmp_path, str(broken))
    frames = read_all(source)
    assert len(frames) == 29
    assert source.counters == {"corrupt_frames": 1}


def test_runner_plays_a_file_to_the_end(tmp_path: Path, video: Path) -> None:
    collector = Collector()
    runner = start_runner(camera(tmp_path, str(video)), collector)
    assert collector.wait_state(SourceState.ENDED)
    runner.stop()
    assert len(collector.frames) == 30
    assert collector.state_names() == [SourceState.RUNNING, SourceState.ENDED]
    assert runner.snapshot()["frames"] == 30


def test_fps_cap_paces_a_file(tmp_path: Path, video: Path) -> None:
    collector = Collector()
    runner = start_runner(camera(tmp_path, str(video), fps=50.0, loop=True), collector)
    assert collector.wait_frames(6)
    runner.stop()
    gaps = [b.captured - a.captured for a, b in itertools.pairwise(collector.frames)]
    # Paced, not dropped: every frame of the file, one after another, none early.
    assert min(gaps) > 0.005
    assert [f.index for f in collector.frames] == list(range(len(collector.frames)))


def test_missing_file_reconnects_until_it_appears(tmp_path: Path, video: Path) -> None:
    later = tmp_path / "later.avi"
    collector = Collector()
    runner = start_runner(camera(tmp_path, str(later)), collector)
    assert collector.wait_state(SourceState.RECONNECTING)
    assert "no such file" in runner.last_error
    shutil.copy(video, later)
    assert collector.wait_state(SourceState.RUNNING)
    assert collector.wait_state(SourceState.ENDED)
    runner.stop()
    assert runner.reconnects >= 1
    assert len(collector.frames) == 30


def test_missing_device_reconnects(tmp_path: Path) -> None:
    collector = Collector()
    runner = start_runner(camera(tmp_path, "/dev/video97"), collector)
    assert collector.wait_state(SourceState.RECONNECTING)
    assert collector.wait(lambda: runner.reconnects >= 2)
    runner.stop()
    assert "/dev/video97" in runner.last_error
    assert runner.state == SourceState.STOPPED


@pytest.mark.skipif(gstreamer_available(), reason="this OpenCV has GStreamer")
def test_gstreamer_without_support_fails_clearly(tmp_path: Path) -> None:
    collector = Collector()
    runner = start_runner(camera(tmp_path, "videotestsrc ! videoconvert ! appsink"), collector)
    assert collector.wait_state(SourceState.FAILED)
    runner.stop()
    assert runner.state == SourceState.FAILED
    assert runner.last_error == NO_GSTREAMER
    assert runner.reconnects == 0


def test_mjpeg_stream_cut_and_restored(tmp_path: Path) -> None:
    server = MjpegServer()
    server.start()
    collector = Collector()
    runner = start_runner(camera(tmp_path, server.url, timeout_s=2.0), collector)
    try:
        assert collector.wait_frames(5)
        assert collector.frames[0].data.shape == (240, 320, 3)
        server.stop()
        assert collector.wait_state(SourceState.RECONNECTING)
        # The first failure says why; later retries may say "could not be opened".
        details = [d for state, d in collector.states if state == SourceState.RECONNECTING]
        assert "no frame" in details[0]
        time.sleep(0.1)  # a reconnect or two find nobody listening
        seen = len(collector.frames)
        server.start()  # same port
        assert collector.wait(lambda: collector.state_names().count(SourceState.RUNNING) >= 2)
        assert collector.wait_frames(seen + 5)
    finally:
        runner.stop()
        server.stop()
    assert runner.reconnects >= 1


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to user nobody, which needs root")
def test_a_device_the_sandbox_refuses_is_named_with_the_fix(tmp_path: Path) -> None:
    """Root bypasses file modes, so a forked child drops to user nobody first; opening the
    node then really fails, and the message names DeviceAllow= and the video group rather
    than OpenCV's bare "could not be opened"."""
    node = tmp_path / "video0"
    node.write_bytes(b"")
    node.chmod(0o600)
    tmp_path.chmod(0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, the code is already loaded
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, str(device_access_problem(str(node))).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        message = pipe.read()
    assert "Permission denied" in message and "DeviceAllow=" in message, message
    assert "SupplementaryGroups=video" in message
