"""Every thread the agent runs is watched: when one ends by a bug (an exception that escapes
its loop) while the agent is not stopping, `Agent.health()` names it, and the systemd
watchdog pings stop. The source thread's case is in tests/test_agent.py."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.commands.handlers import HANDLERS
from edge_agent.config.load import load_settings
from edge_agent.link import topics
from edge_agent.service import Service
from edge_agent.systemd import Notifier
from tests.agent_helpers import config_text, mqtt_table, pattern_pipeline, start_online, wait_until
from tests.mqtt_fixtures import Broker
from tests.operator import DEVICE, Operator
from tests.test_systemd import NotifySocket

STUCK_AFTER_S = 20.0

# The threads are meant to die here: their tracebacks are expected.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


COMMANDS = topics.Command("edge", topics.ANY, device=DEVICE).topic  # the device's own


def a_bug(*args: Any, **kwargs: Any) -> Any:
    # SystemExit escapes every `except Exception` and is not printed by threading.excepthook.
    raise SystemExit("a bug that escapes every handler")


def body(port: int) -> str:
    return pattern_pipeline("boxes", "detector") + mqtt_table(port)


@pytest.fixture
def agent(tmp_path: Path, broker: Broker) -> Iterator[Agent]:
    agent = start_online(tmp_path, body(broker.port))
    yield agent
    agent.stop()


def kill_link(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug in a handler of incoming messages: paho raises it out of the network loop.
    assert agent.link is not None
    agent.link.subscribe(COMMANDS, a_bug)
    operator.send("ping")


def kill_sender(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.outbox, "pending_after", a_bug)


def kill_marks(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.outbox, "mark_delivered", a_bug)


def kill_writer(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.outbox, "append", a_bug)


def kill_worker(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent.workers["detector"].queue, "take", a_bug)


def kill_commands(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(HANDLERS, "ping", dataclasses.replace(HANDLERS["ping"], run=a_bug))
    operator.send("ping")


def kill_long_command(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    # A long command runs on a thread of its own: the `commands` thread lives on.
    slow = dataclasses.replace(HANDLERS["ping"], run=a_bug, long_running=True)
    monkeypatch.setitem(HANDLERS, "ping", slow)
    operator.send("ping")


def kill_update(agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    # A half-done download is resumed on a thread of the updater's own.
    monkeypatch.setattr(agent.updater, "update", a_bug)
    folder = agent.updater.downloads / "detector-2.0.0"
    folder.mkdir(parents=True)
    (folder / "update.json").write_text('{"name": "detector", "version": "2.0.0"}')
    agent.updater.resume_downloads()


Kill = Callable[[Agent, Operator, pytest.MonkeyPatch], None]


@pytest.mark.parametrize(
    ("kill", "problem"),
    [
        (kill_link, "mqtt link thread died"),
        (kill_sender, "mqtt sender thread died"),
        (kill_marks, "mqtt sender thread died"),
        (kill_writer, "outbox writer thread died"),
        (kill_worker, "model detector: an inference thread died"),
        (kill_commands, "commands thread died"),
        (kill_long_command, "commands thread died"),
        (kill_update, "update thread died"),
    ],
    ids=["link", "sender", "marks", "writer", "worker", "commands", "long-command", "updater"],
)
def test_health_names_each_thread_that_died(
    agent: Agent, operator: Operator, monkeypatch: pytest.MonkeyPatch, kill: Kill, problem: str
) -> None:
    wait_until(lambda: agent.pipelines["boxes"].stats.results > 2, what="results")
    assert agent.health(STUCK_AFTER_S) == []
    kill(agent, operator, monkeypatch)
    wait_until(lambda: bool(agent.health(STUCK_AFTER_S)), what="the dead thread noticed")
    assert agent.health(STUCK_AFTER_S) == [problem]


def test_threads_ended_by_the_agent_stopping_are_not_problems(
    tmp_path: Path, broker: Broker
) -> None:
    agent = start_online(tmp_path, body(broker.port))
    wait_until(lambda: agent.pipelines["boxes"].stats.results > 2, what="results")
    agent.stop()
    # The outbox writer's `alive` does not tell a stop from a death; nothing asks after a
    # stop (the service loop has ended), so it is left out here.
    assert agent.health(STUCK_AFTER_S) == ["outbox writer thread died"]


def test_watchdog_pings_stop_when_the_link_thread_dies(
    tmp_path: Path, broker: Broker, operator: Operator
) -> None:
    """The real service loop against a real $NOTIFY_SOCKET (pings every 0.5 s)."""
    notify = NotifySocket(tmp_path / "notify.sock")
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", body(broker.port)))
    agent = Agent(load_settings(path), config_path=path)
    notifier = Notifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    service = Service(agent, path, notifier)
    seen: dict[str, Any] = {}

    def unhealthy() -> list[str]:
        return [m["STATUS"] for _, m in notify.messages if "unhealthy" in m.get("STATUS", "")]

    def drive() -> None:
        try:
            wait_until(lambda: agent.link is not None and agent.link.connected.is_set(), 30)
            wait_until(lambda: len(notify.having("WATCHDOG")) >= 2, 10, "watchdog pings")
            assert agent.link is not None
            agent.link.subscribe(COMMANDS, a_bug)
            operator.send("ping")
            wait_until(lambda: bool(unhealthy()), 10, "the dead link reported")
            seen["last_ping"] = notify.having("WATCHDOG")[-1][0]
            time.sleep(2.0)  # systemd would have restarted it after 1 s
            seen["pings_after"] = [t for t, _ in notify.having("WATCHDOG")]
            seen["unhealthy"] = set(unhealthy())
        except BaseException as exc:  # reported on the test's thread
            seen["error"] = exc
        finally:
            service.events.put(("stop", "test over"))

    driver = threading.Thread(target=drive, name="test-driver", daemon=True)
    driver.start()
    try:
        assert service.run() == 0  # on this (the main) thread: it installs signal handlers
    finally:
        driver.join(10)
        notify.close()
    if "error" in seen:
        raise seen["error"]
    assert seen["pings_after"][-1] == seen["last_ping"]
    assert seen["unhealthy"] == {"unhealthy: mqtt link thread died"}


def test_a_damaged_half_done_download_is_abandoned_not_a_crash(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart would meet the same file again: it is removed, and health stays clear."""
    folder = agent.updater.downloads / "detector-2.0.0"
    folder.mkdir(parents=True)
    (folder / "update.json").write_bytes(b"{not json")
    agent.updater.resume_downloads()
    wait_until(lambda: not folder.exists(), what="the damaged download removed")
    assert agent.health(STUCK_AFTER_S) == []
    assert any("download abandoned" in r.getMessage() for r in caplog.records)
