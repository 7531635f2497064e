"""DirectoryWatcher on a real directory: inotify, and the scanning fallback."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.watch import DirectoryWatcher, Waker

MODES = [pytest.param(True, id="inotify"), pytest.param(False, id="scan")]


@pytest.fixture(params=MODES)
def watcher(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DirectoryWatcher]:
    with DirectoryWatcher(tmp_path, fallback_interval=0.05, use_inotify=request.param) as w:
        if request.param:
            assert w.using_inotify
        yield w


def wait_for(watcher: DirectoryWatcher, name: str, timeout: float = 3.0) -> set[str]:
    """Everything seen until `name` shows up (the scanner may report it in a later pass)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while name not in seen and time.monotonic() < deadline:
        seen |= watcher.wait(deadline - time.monotonic())
    return seen


def test_write_in_place(watcher: DirectoryWatcher) -> None:
    config = watcher.directory / "agent.toml"
    config.write_text("a = 1\n")
    assert "agent.toml" in wait_for(watcher, "agent.toml")
    time.sleep(0.06)
    watcher.wait(0.1)  # let the scanner settle on the first version
    with config.open("a") as out:
        out.write("b = 22\n")
    assert "agent.toml" in wait_for(watcher, "agent.toml")


def test_atomic_rename_replace(watcher: DirectoryWatcher) -> None:
    config = watcher.directory / "agent.toml"
    config.write_text("a = 1\n")
    wait_for(watcher, "agent.toml")
    tmp = watcher.directory / ".agent.toml.swp"
    tmp.write_text("a = 2\n")
    os.replace(tmp, config)
    assert "agent.toml" in wait_for(watcher, "agent.toml")


def test_new_and_deleted_files(watcher: DirectoryWatcher) -> None:
    (watcher.directory / "new.jpg").write_bytes(b"x")
    assert "new.jpg" in wait_for(watcher, "new.jpg")
    (watcher.directory / "new.jpg").unlink()
    changes = watcher.wait_changes(3.0)
    while "new.jpg" not in changes.removed and changes:
        changes = watcher.wait_changes(3.0)
    assert "new.jpg" in changes.removed


def test_settled_after_close_write(watcher: DirectoryWatcher) -> None:
    deadline = time.monotonic() + 3
    settled: set[str] = set()
    with (watcher.directory / "big.png").open("wb") as out:
        out.write(b"part one")
        out.flush()
        first = watcher.wait_changes(0.2)
        assert "big.png" not in first.settled
        out.write(b"part two")
    while "big.png" not in settled and time.monotonic() < deadline:
        settled |= watcher.wait_changes(0.5).settled
    assert "big.png" in settled


def test_timeout_returns_empty(watcher: DirectoryWatcher) -> None:
    assert watcher.wait(0.05) == set()


def test_close_wakes_a_blocked_wait(watcher: DirectoryWatcher) -> None:
    result: list[set[str]] = []
    thread = threading.Thread(target=lambda: result.append(watcher.wait(None)))
    thread.start()
    time.sleep(0.1)
    assert thread.is_alive()
    watcher.close()
    thread.join(2)
    assert not thread.is_alive()
    assert result == [set()]
    assert watcher.closed
    assert watcher.wait(None) == set()


def test_directory_removed_and_back(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    with DirectoryWatcher(folder, fallback_interval=0.05) as watcher:
        folder.rmdir()
        watcher.wait(0.2)
        folder.mkdir()
        (folder / "agent.toml").write_text("x")
        assert "agent.toml" in wait_for(watcher, "agent.toml")


def test_missing_directory_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    with DirectoryWatcher(folder, fallback_interval=0.05) as watcher:
        assert watcher.wait(0.1) == set()
        folder.mkdir()
        (folder / "a.jpg").write_bytes(b"x")
        assert "a.jpg" in wait_for(watcher, "a.jpg")


def test_waker_wakes_select() -> None:
    waker = Waker()
    assert not waker.wait(0.01)
    threading.Timer(0.05, waker.set).start()
    assert waker.wait(2)
    waker.clear()
    assert not waker.is_set()
    waker.close()
