"""Log lines for journald, terminals and log shippers, and repeats held back."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_under_journald_lines_carry_syslog_levels_and_no_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "stream"
    with out.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        setup_logging("auto", "debug", stream)
        log = logging.getLogger("edge_agent.link")
        log.info("connected")
        log.warning("connection lost")
        log.error("refused\nsecond line")
    assert lines(out) == [
        "<6>edge_agent.link: connected",
        "<4>edge_agent.link: connection lost",
        "<3>edge_agent.link: refused",
        "<3>second line",
    ]


def test_elsewhere_lines_are_for_people(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A journal stream that is not ours (stderr redirected to a file): plain text.
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    out = tmp_path / "stream"
    with out.open("w") as stream:
        setup_logging("auto", "info", stream)
        logging.getLogger("edge_agent").info("started")
        logging.getLogger("edge_agent").debug("not shown")
    [line] = lines(out)
    assert line.endswith(" INFO edge_agent: started") and line[:4].isdigit()


def test_json_lines_for_log_shippers(tmp_path: Path) -> None:
    out = tmp_path / "stream"
    with out.open("w") as stream:
        setup_logging("json", "info", stream)
        logging.getLogger("edge_agent.outbox").warning("disk %s full", "/var")
    [line] = lines(out)
    body = json.loads(line)
    assert body["level"] == "warning" and body["logger"] == "edge_agent.outbox"
    assert body["msg"] == "disk /var full" and body["ts"] > 0


def test_repeats_are_held_back_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "stream"
    with out.open("w") as stream:
        setup_logging("journal", "info", stream, burst=3, window_s=0.3)
        log = logging.getLogger("edge_agent.link")
        for _ in range(1000):
            log.warning("cannot connect to %s", "broker:1883")
        log.warning("something else")
        time.sleep(0.35)
        log.warning("cannot connect to %s", "broker:1883")
    assert lines(out) == [
        "<4>edge_agent.link: cannot connect to broker:1883",
        "<4>edge_agent.link: cannot connect to broker:1883",
        "<4>edge_agent.link: cannot connect to broker:1883",
        "<4>edge_agent.link: something else",
        "<4>edge_agent.link: cannot connect to broker:1883 "
        "[997 more like this in the last 0.3 s were not logged]",
    ]
