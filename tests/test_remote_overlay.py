"""Remote configuration as an overlay: set_config writes remote.toml in the state directory,
merged over the operator's file, which is never rewritten. The real agent process runs
here (`edge-agent run`), steered through a real broker: the change is live, survives a
restart, stays on top when the operator edits the file, and a corrupt overlay is set aside
at start with one log line while the operator's settings run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib

from edge_agent.agent import Agent
from tests.agent_helpers import config_text, mqtt_table, pattern_pipeline, start_agent
from tests.conftest import MODELS, ROOT, run_cli
from tests.mqtt_fixtures import Broker
from tests.operator import DEVICE, Operator


class AgentProcess:
    """`edge-agent run` as a user starts it, its log lines kept."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "EDGE_AGENT_DEVICE__ID": DEVICE},
        )
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def lines(self, fragment: str) -> list[str]:
        return [line for line in list(self.log) if fragment in line]

    def online(self, operator: Operator, timeout: float = 60.0) -> None:
        """Returns once the agent answers a ping over the broker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}: {self.log}")
            try:
                operator.call("ping", timeout=1.0)
                return
            except TimeoutError:
                continue
        raise AssertionError(f"agent never answered: {self.log}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()


def start(processes: list[AgentProcess], config: Path, operator: Operator) -> AgentProcess:
    agent = AgentProcess(config)
    processes.append(agent)
    agent.online(operator)
    return agent


def shipped_config(tmp_path: Path, port: int) -> Path:
    """configs/agent.toml as shipped, comments and all, with a broker table added; its
    relative paths (../models, ../var) land in tmp_path."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "models").symlink_to(MODELS)
    config = tmp_path / "configs" / "agent.toml"
    config.write_text((ROOT / "configs" / "agent.toml").read_text() + mqtt_table(port))
    return config


def small_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path / "state", pattern_pipeline("boxes", "detector")))
    config.write_text(config.read_text() + mqtt_table(port))
    return config


def effective(operator: Operator) -> dict[str, Any]:
    reply = operator.call("get_config")
    assert reply["status"] == "ok", reply
    return dict(reply["result"])


def test_set_config_leaves_the_file_byte_for_byte_is_live_and_survives_a_restart(
    tmp_path: Path, broker: Broker, operator: Operator, processes: list[AgentProcess]
) -> None:
    config = shipped_config(tmp_path, broker.port)
    before = config.read_bytes()
    assert before.count(b"\n#") >= 40  # the shipped file's comments
    agent = start(processes, config, operator)

    changes = {"pipelines": {"boxes": {"queue_size": 7}}, "telemetry": {"interval_s": 12}}
    reply = operator.call("set_config", changes=changes)
    assert reply["status"] == "ok", reply
    overlay = tmp_path / "var" / "remote.toml"
    assert reply["result"]["overlay"] == str(overlay)
    assert reply["result"]["overlay_keys"] == [
        "pipelines.boxes.queue_size",
        "telemetry.interval_s",
    ]
    assert config.read_bytes() == before
    assert effective(operator)["pipelines"]["boxes"]["queue_size"] == 7  # live

    assert agent.stop() == 0
    agent = start(processes, config, operator)
    settings = effective(operator)
    assert settings["pipelines"]["boxes"]["queue_size"] == 7
    assert settings["telemetry"]["interval_s"] == 12
    assert settings["pipelines"]["boxes"]["decode"]["score_threshold"] == 0.5  # the file's

    # null takes one key back out of the overlay: the operator's value runs again.
    undo = operator.call("set_config", changes={"pipelines": {"boxes": {"queue_size": None}}})
    assert undo["status"] == "ok", undo
    assert undo["result"]["overlay_keys"] == ["telemetry.interval_s"]
    assert effective(operator)["pipelines"]["boxes"]["queue_size"] == 2
    assert tomllib.loads(overlay.read_text()) == {"telemetry": {"interval_s": 12}}
    assert config.read_bytes() == before
    assert agent.stop() == 0


@pytest.mark.parametrize(
    "overlay_text, problem",
    [
        ("[pipelines.boxes\nqueue_size = 7\n", "not valid TOML"),
        ("[pipelines.boxes]\nqueue_size = -1\n", "pipelines.boxes.queue_size"),
        # Valid once, no longer allowed: the device's own file decides.
        ("[mqtt]\nkeepalive_s = 10\n", "mqtt.keepalive_s is not in commands.remote_keys"),
    ],
    ids=["not-toml", "invalid-value", "not-allowed"],
)
def test_a_corrupt_overlay_is_set_aside_at_start_and_the_operators_settings_run(
    tmp_path: Path,
    broker: Broker,
    operator: Operator,
    processes: list[AgentProcess],
    overlay_text: str,
    problem: str,
) -> None:
    config = small_config(tmp_path, broker.port)
    overlay = tmp_path / "state" / "remote.toml"
    overlay.parent.mkdir()
    overlay.write_text(overlay_text)
    agent = start(processes, config, operator)

    [line] = agent.lines("remote.toml")
    assert str(overlay) in line and "set aside as remote.toml.corrupt-" in line, line
    assert problem in line and "ERROR" in line, line
    [aside] = overlay.parent.glob("remote.toml.corrupt-*")
    assert aside.read_text() == overlay_text and not overlay.exists()
    settings = effective(operator)
    assert settings["pipelines"]["boxes"]["queue_size"] == 2
    assert settings["mqtt"]["keepalive_s"] == 5  # the operator's file
    status = operator.call("status")["result"]
    [listed] = [p for p in status["problems"] if p["key"] == "remote overlay"]
    assert str(overlay) in listed["problem"] and problem in listed["problem"], listed
    assert agent.stop() == 0


def test_an_operator_edit_reloads_with_the_overlay_on_top(
    tmp_path: Path, broker: Broker, operator: Operator, processes: list[AgentProcess]
) -> None:
    config = small_config(tmp_path, broker.port)
    overlay = tmp_path / "state" / "remote.toml"
    overlay.parent.mkdir()
    overlay.write_text("[pipelines.boxes]\nqueue_size = 7\n")
    agent = start(processes, config, operator)
    assert effective(operator)["pipelines"]["boxes"]["queue_size"] == 7

    # The operator sets the same key and another one, replacing the file as editors do.
    text = config.read_text().replace(
        'model = "detector"\n', 'model = "detector"\nqueue_size = 3\ngate = { enabled = true }\n'
    )
    temporary = config.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, config)
    deadline = time.monotonic() + 20
    while not agent.lines("reloaded") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.lines("reloaded"), agent.log
    settings = effective(operator)
    assert settings["pipelines"]["boxes"]["gate"]["enabled"] is True  # the edit
    assert settings["pipelines"]["boxes"]["queue_size"] == 7  # the overlay still wins
    assert overlay.exists()

    # Deleting remote.toml and reloading undoes every remote change.
    overlay.unlink()
    agent.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while len(agent.lines("reloaded")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert effective(operator)["pipelines"]["boxes"]["queue_size"] == 3
    assert agent.stop() == 0


@pytest.fixture
def agent(tmp_path: Path, broker: Broker) -> Iterator[Agent]:
    body = pattern_pipeline("boxes", "detector") + mqtt_table(broker.port)
    agent = start_agent(tmp_path, body, online=True)
    yield agent
    agent.stop()


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"mqtt": {"keepalive_s": 10}}, ["mqtt.keepalive_s", "commands.remote_keys"]),
        ({"service": {"stuck_after_s": 5}}, ["service.stuck_after_s", "commands.remote_keys"]),
        ({"device": {"groups": ["x"]}}, ["device.groups", "commands.remote_keys"]),
        (
            {"models": {"detector": {"labels": "/etc/passwd"}}},
            ["models.*.labels", "commands.remote_paths"],
        ),
        ({"mqtt": {"port": 1884}}, ["mqtt.port", "commands.allow_remote_security_changes"]),
    ],
)
def test_a_key_outside_the_allow_list_is_refused_naming_the_local_setting(
    agent: Agent, operator: Operator, changes: dict[str, Any], words: list[str]
) -> None:
    reply = operator.call("set_config", changes=changes)
    assert reply["status"] == "error", reply
    assert all(word in reply["reason"] for word in words), reply["reason"]
    assert not (agent.settings.device.state_dir / "remote.toml").exists()
    # What the default list names is taken.
    ok = operator.call("set_config", changes={"pipelines": {"boxes": {"queue_size": 4}}})
    assert ok["status"] == "ok", ok


def test_the_devices_own_file_sets_the_allow_list(
    tmp_path: Path, broker: Broker, operator: Operator
) -> None:
    body = pattern_pipeline("boxes", "detector") + mqtt_table(broker.port)
    body += '\n[commands]\nremote_keys = ["mqtt.keepalive_s"]\n'
    agent = start_agent(tmp_path, body, online=True)
    try:
        ok = operator.call("set_config", changes={"mqtt": {"keepalive_s": 10}})
        assert ok["status"] == "ok", ok
        assert ok["result"]["restart_required"] == ["mqtt.keepalive_s"]
        # The list replaces the default: pipelines are no longer named.
        no = operator.call("set_config", changes={"pipelines": {"boxes": {"queue_size": 4}}})
        assert no["status"] == "error" and "commands.remote_keys" in no["reason"], no
    finally:
        agent.stop()


def test_the_status_page_cannot_be_opened_remotely_even_when_its_table_is_allowed(
    tmp_path: Path, broker: Broker, operator: Operator
) -> None:
    body = pattern_pipeline("boxes", "detector") + mqtt_table(broker.port)
    body += '\n[commands]\nremote_keys = ["http"]\n'
    agent = start_agent(tmp_path, body, online=True)
    try:
        for change in ({"enabled": True}, {"host": "0.0.0.0"}, {"port": 8080}):
            no = operator.call("set_config", changes={"http": change})
            assert no["status"] == "error", no
            assert "commands.allow_remote_security_changes" in no["reason"], no
        ok = operator.call("set_config", changes={"http": {"recent_events": 10}})
        assert ok["status"] == "ok", ok
    finally:
        agent.stop()


def test_config_show_prints_the_effective_settings_and_their_origins(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config = tmp_path / "agent.toml"
    body = pattern_pipeline("boxes", "detector") + f'\n[mqtt]\npassword_file = "{secret}"\n'
    config.write_text(config_text(tmp_path / "state", body))
    overlay = tmp_path / "state" / "remote.toml"
    overlay.parent.mkdir()
    overlay.write_text("# set by set_config\n[pipelines.boxes]\nqueue_size = 7\n")
    env = {"EDGE_AGENT_TELEMETRY__INTERVAL_S": "9"}

    proc = run_cli("config", "show", "--config", str(config), "--origin", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    file_lines = config.read_text().splitlines()
    threads_line = file_lines.index("threads = 1") + 1  # the first model's
    assert f"queue_size = 7  # {overlay}:3" in lines
    assert "interval_s = 9.0  # env EDGE_AGENT_TELEMETRY__INTERVAL_S" in lines
    assert f"threads = 1  # {config}:{threads_line}" in lines
    assert "keepalive_s = 30  # default" in lines
    [password] = [line for line in lines if line.startswith("password = ")]
    password_file_line = file_lines.index(f'password_file = "{secret}"') + 1
    assert password == f'password = "**********"  # {config}:{password_file_line}', password
    assert "s3cret" not in proc.stdout

    plain = run_cli("config", "show", "--config", str(config), env=env)
    assert plain.returncode == 0 and "#" not in plain.stdout, plain.stdout
    shown = tomllib.loads(plain.stdout)
    assert tomllib.loads(proc.stdout) == shown
    assert shown["pipelines"]["boxes"]["queue_size"] == 7
    assert shown["telemetry"]["interval_s"] == 9.0
    assert shown["device"]["state_dir"] == str(tmp_path / "state")

    # A bad overlay is named and left out, not moved: show changes nothing.
    overlay.write_text("[pipelines.boxes]\nqueue_size = 0\n")
    bad = run_cli("config", "show", "--config", str(config))
    assert bad.returncode == 0
    assert f"{overlay} left out" in bad.stderr and "queue_size" in bad.stderr, bad.stderr
    assert tomllib.loads(bad.stdout)["pipelines"]["boxes"]["queue_size"] == 2
    assert overlay.exists()
