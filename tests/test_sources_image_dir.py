"""The image directory source on real files: backlog, new files, the journal across
restarts, undecodable files, decompression bombs and broken links set aside."""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import psutil
import pytest

from edge_agent.sources import create_source
from edge_agent.sources.base import Frame, SourceState
from edge_agent.sources.image_dir import ImageDirConfig, ImageDirSource
from tests.sources_helpers import Collector, numbered_image, start_runner


def put_image(folder: Path, name: str, i: int = 0, age: float = 0.0) -> Path:
    """Write an image as an uploader would: aside first, then renamed in."""
    path = folder / name
    tmp = folder / f".{name}.part"
    ok, data = cv2.imencode(path.suffix, numbered_image(i, 64, 48))
    assert ok
    tmp.write_bytes(data.tobytes())
    if age:
        past = time.time() - age
        os.utime(tmp, (past, past))
    os.replace(tmp, path)
    return path


def image_dir(folder: Path, state: Path, **fields: object) -> ImageDirSource:
    config = ImageDirConfig.model_validate(
        {
            "kind": "image_dir",
            "path": str(folder),
            "settle_s": 0.2,
            "scan_interval_s": 0.05,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            **fields,
        }
    )
    source = create_source("drop", config, state)
    assert isinstance(source, ImageDirSource)
    return source


def names(collector: Collector) -> list[str]:
    return [Path(f.meta["file"]).name for f in collector.frames]


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    folder, state = tmp_path / "in", tmp_path / "state"
    folder.mkdir()
    return folder, state


def test_backlog_in_name_order_then_new_files_once(folders: tuple[Path, Path]) -> None:
    folder, state = folders
    for i, name in enumerate(["c.jpg", "a.png", "b.JPG"]):
        put_image(folder, name, i, age=5)
    (folder / "notes.txt").write_text("not an image pattern")
    collector = Collector()
    runner = start_runner(image_dir(folder, state), collector)
    try:
        assert collector.wait_frames(3)
        assert names(collector) == ["a.png", "b.JPG", "c.jpg"]
        assert collector.frames[0].data.shape == (48, 64, 3)
        put_image(folder, "d.bmp", 3)
        put_image(folder, "e.jpeg", 4)
        assert collector.wait_frames(5)
        # A hard link and a symbolic link: created, never written.
        elsewhere = put_image(folder.parent, "f.jpg", 5)
        os.link(elsewhere, folder / "f.jpg")
        os.symlink(elsewhere, folder / "g.jpg")
        assert collector.wait_frames(7)
        # Touching a processed file is not a new file.
        os.utime(folder / "a.png")
        time.sleep(0.3)
    finally:
        runner.stop()
    assert sorted(names(collector)[3:]) == ["d.bmp", "e.jpeg", "f.jpg", "g.jpg"]
    assert len(collector.frames) == 7
    assert [f.index for f in collector.frames] == list(range(7))


def test_restart_remembers(folders: tuple[Path, Path]) -> None:
    folder, state = folders
    put_image(folder, "one.jpg", age=5)
    put_image(folder, "two.jpg", age=5)
    # Each frame's results are stored (the outbox writer would call this on commit).
    first = Collector(on_frame=lambda frame: frame.on_durable and frame.on_durable())
    runner = start_runner(image_dir(folder, state), first)
    assert first.wait_frames(2)
    runner.stop()
    journal = state / "image_dir-drop.processed"
    assert journal.read_text().splitlines() == ['"one.jpg"', '"two.jpg"']

    (folder / "one.jpg").unlink()  # forgotten at the next compaction
    put_image(folder, "three.jpg", age=5)
    second = Collector(on_frame=lambda frame: frame.on_durable and frame.on_durable())
    runner = start_runner(image_dir(folder, state), second)
    assert second.wait_frames(1)
    time.sleep(0.3)
    runner.stop()
    assert names(second) == ["three.jpg"]
    assert journal.read_text().splitlines() == ['"two.jpg"', '"three.jpg"']


def test_a_file_whose_result_was_never_stored_is_taken_again(
    folders: tuple[Path, Path],
) -> None:
    """At least once: a file is journaled only when its results are durable, so one read
    just before a crash is read again at the next start, never skipped."""
    folder, state = folders
    put_image(folder, "stored.jpg", age=5)
    put_image(folder, "in-flight.jpg", age=5)

    def store_only_the_first(frame: Frame) -> None:
        if frame.meta["file"].endswith("stored.jpg") and frame.on_durable:
            frame.on_durable()

    first = Collector(on_frame=store_only_the_first)
    runner = start_runner(image_dir(folder, state), first)
    assert first.wait_frames(2)
    runner.stop()
    second = Collector()
    runner = start_runner(image_dir(folder, state), second)
    assert second.wait_frames(1)
    time.sleep(0.3)
    runner.stop()
    assert names(second) == ["in-flight.jpg"]


def test_undecodable_file_is_set_aside_and_counted(folders: tuple[Path, Path]) -> None:
    folder, state = folders
    (folder / "bad.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    past = time.time() - 5
    os.utime(folder / "bad.jpg", (past, past))
    put_image(folder, "good.jpg", age=5)
    source = image_dir(folder, state)
    collector = Collector()
    runner = start_runner(source, collector)
    try:
        assert collector.wait_frames(1)
        (folder / "empty.png").write_bytes(b"")
        assert collector.wait(lambda: source.counters.get("rejected_files", 0) == 2)
    finally:
        runner.stop()
    assert names(collector) == ["good.jpg"]
    assert sorted(p.name for p in (folder / ".rejected").iterdir()) == ["bad.jpg", "empty.png"]
    assert not (folder / "bad.jpg").exists()
    assert runner.snapshot()["counters"] == {"rejected_files": 2}


def test_file_being_written_waits_until_complete(folders: tuple[Path, Path]) -> None:
    folder, state = folders
    ok, data = cv2.imencode(".png", numbered_image(1, 64, 48))
    assert ok
    collector = Collector()
    runner = start_runner(image_dir(folder, state), collector)
    try:
        assert collector.wait_state(SourceState.RUNNING)
        with (folder / "slow.png").open("wb") as out:
            out.write(data[:100].tobytes())
            out.flush()
            time.sleep(0.3)
            assert collector.frames == []  # half a file: not taken, not rejected
            out.write(data[100:].tobytes())
        assert collector.wait_frames(1)
    finally:
        runner.stop()
    assert collector.frames[0].data.shape == (48, 64, 3)
    assert collector.frames[0].meta == {"file": str(folder / "slow.png")}


def test_missing_directory_reconnects(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    collector = Collector()
    runner = start_runner(image_dir(folder, tmp_path / "state"), collector)
    try:
        assert collector.wait_state(SourceState.RECONNECTING)
        folder.mkdir()
        put_image(folder, "x.jpg", age=5)
        assert collector.wait_frames(1)
    finally:
        runner.stop()
    assert runner.reconnects >= 1


def bomb_png(width: int, height: int) -> bytes:
    """A valid all-black grayscale PNG: 20000 x 20000 packs into under 2 MB and decodes
    (as BGR) to 1.2 GB."""
    row = bytes(width + 1)  # filter type 0, then the pixels
    rows_per_call = max(1, (16 << 20) // len(row))
    deflate = zlib.compressobj(1)
    parts = []
    for start in range(0, height, rows_per_call):
        parts.append(deflate.compress(row * min(rows_per_call, height - start)))
    parts.append(deflate.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


class PeakRss:
    """The highest resident set size of this process while it runs, sampled often enough to
    see a decode of a second or so."""

    def __init__(self, interval: float = 0.005) -> None:
        self.peak = 0
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_decompression_bomb_is_set_aside_undecoded(
    folders: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    folder, state = folders
    bomb = bomb_png(20_000, 20_000)
    assert len(bomb) < 2 << 20
    put_image(folder, "a.png", 1, age=5)
    (folder / "bomb.png").write_bytes(bomb)
    past = time.time() - 5
    os.utime(folder / "bomb.png", (past, past))
    put_image(folder, "c.jpg", 2, age=5)
    caplog.set_level(logging.INFO, logger="edge_agent.sources.image_dir")
    before = psutil.Process().memory_info().rss
    source = image_dir(folder, state)
    collector = Collector()
    with PeakRss() as rss:
        runner = start_runner(source, collector)
        try:
            assert collector.wait_frames(2)
            assert collector.wait(lambda: source.counters.get("rejected_files", 0) == 1)
            put_image(folder, "d.png", 3)  # and it goes on taking new files
            assert collector.wait_frames(3)
        finally:
            runner.stop()
    assert names(collector) == ["a.png", "c.jpg", "d.png"]
    assert (folder / ".rejected" / "bomb.png").read_bytes() == bomb
    # Decoded, it would have taken 1.2 GB.
    assert rss.peak - before < 100 << 20, f"RSS rose {(rss.peak - before) >> 20} MB"
    lines = [r.getMessage() for r in caplog.records if "bomb.png" in r.getMessage()]
    assert lines == [
        f"source drop: {folder / 'bomb.png'} is 20000x20000 pixels (400.0 MP), over "
        f"max_pixels (50.0 MP); moved to {folder / '.rejected' / 'bomb.png'}"
    ]


def test_max_pixels_is_a_setting(folders: tuple[Path, Path]) -> None:
    folder, state = folders
    put_image(folder, "big.png", 1, age=5)  # 64 x 48
    (folder / "small.png").write_bytes(cv2.imencode(".png", numbered_image(2, 40, 30))[1].tobytes())
    os.utime(folder / "small.png", (time.time() - 5,) * 2)
    source = image_dir(folder, state, max_pixels=40 * 30)
    collector = Collector()
    runner = start_runner(source, collector)
    try:
        assert collector.wait_frames(1)
        assert collector.wait(lambda: source.counters.get("rejected_files", 0) == 1)
    finally:
        runner.stop()
    assert names(collector) == ["small.png"]
    assert [p.name for p in (folder / ".rejected").iterdir()] == ["big.png"]


def test_formats_whose_header_gives_no_size_are_set_aside_undecoded(
    folders: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """cv2 decodes these, but their size cannot be checked first: not decoded blind."""
    folder, state = folders
    caplog.set_level(logging.INFO, logger="edge_agent.sources.image_dir")
    image = numbered_image(1, 64, 48)
    unsized = {".hdr": image.astype("float32"), ".pfm": image.astype("float32"), ".ras": image}
    for suffix, pixels in unsized.items():
        (folder / f"x{suffix}").write_bytes(cv2.imencode(suffix, pixels)[1].tobytes())
        os.utime(folder / f"x{suffix}", (time.time() - 5,) * 2)
    put_image(folder, "y.webp", 2, age=5)
    put_image(folder, "z.tiff", 3, age=5)
    patterns = ["*.hdr", "*.pfm", "*.ras", "*.webp", "*.tiff"]
    source = image_dir(folder, state, patterns=patterns)
    collector = Collector()
    runner = start_runner(source, collector)
    try:
        assert collector.wait_frames(2)
        assert collector.wait(lambda: source.counters.get("rejected_files", 0) == 3)
    finally:
        runner.stop()
    assert names(collector) == ["y.webp", "z.tiff"]
    assert sorted(p.name for p in (folder / ".rejected").iterdir()) == ["x.hdr", "x.pfm", "x.ras"]
    assert caplog.text.count("has no image size in its header") == 3


@pytest.mark.parametrize("when", ["backlog", "new"])
def test_symlink_loops_and_links_to_nothing_are_set_aside_with_one_line_each(
    folders: tuple[Path, Path], caplog: pytest.LogCaptureFixture, when: str
) -> None:
    folder, state = folders
    caplog.set_level(logging.INFO, logger="edge_agent.sources.image_dir")

    def make_links() -> None:
        os.symlink("loop-b.jpg", folder / "loop-a.jpg")  # a -> b -> a
        os.symlink("loop-a.jpg", folder / "loop-b.jpg")
        os.symlink("self.jpg", folder / "self.jpg")
        os.symlink("missing.jpg", folder / "dangling.jpg")

    if when == "backlog":
        make_links()
    put_image(folder, "good.jpg", 1, age=5)
    source = image_dir(folder, state)
    collector = Collector()
    runner = start_runner(source, collector)
    try:
        assert collector.wait_frames(1)
        if when == "new":
            make_links()
            put_image(folder, "later.jpg", 2)
            assert collector.wait_frames(2)
        assert collector.wait(lambda: source.counters.get("rejected_files", 0) == 4)
        time.sleep(0.3)  # nothing more is logged about them
    finally:
        runner.stop()
    links = ["dangling.jpg", "loop-a.jpg", "loop-b.jpg", "self.jpg"]
    assert sorted(p.name for p in (folder / ".rejected").iterdir()) == links
    assert not any(os.path.lexists(folder / name) for name in links)
    for name in links:
        lines = [r.getMessage() for r in caplog.records if f"/{name} " in r.getMessage()]
        assert len(lines) == 1, (name, lines)
        assert "symbolic link" in lines[0], lines
