"""The agent under systemd's eyes: a real unix datagram socket stands in for the service
manager's $NOTIFY_SOCKET, and the agent runs as a real process. READY=1 comes once the
models are loaded, WATCHDOG=1 keeps coming while it is healthy and stops when an inference
hangs, RELOADING=1/READY=1 frame a reload, STOPPING=1 comes at the end. `edge-agent reload`
(the unit's ExecReload=) returns only once the agent has applied the file, or refused it.
tests/test_real_systemd.py runs the installed unit under a real systemd."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.agent_helpers import config_text, wait_until
from tests.conftest import ROOT

BODY = """
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = 30

[pipelines.digits]
source = "pattern"
model = "digits"
{delegates}
[service]
stuck_after_s = 1

[logging]
status_interval_s = 0
"""

HANG = """
[models.digits.batch]
max_batch = 1

[[runtime.delegates]]
name = "external"
library = "{library}"
label = "wedged-npu"
options = {{ mode = "hang", hang_after = "40" }}
"""


class NotifySocket:
    """What a service manager would receive: every datagram, split into fields."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in list(self.messages) if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def start(tmp_path: Path, notify: NotifySocket, body: str) -> subprocess.Popen[bytes]:
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path / "state", body))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE)


@pytest.fixture
def notify(tmp_path: Path) -> NotifySocket:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock  # type: ignore[misc]
    sock.close()


def test_ready_watchdog_reload_and_stopping(tmp_path: Path, notify: NotifySocket) -> None:
    proc = start(tmp_path, notify, BODY.format(delegates=""))
    try:
        wait_until(lambda: notify.having("READY"), 30, "READY=1")
        [(ready_at, ready)] = notify.having("READY")
        assert "digits:" in ready["STATUS"] and "fps" in ready["STATUS"]
        # Pinged at half of WatchdogSec (1 s here): every 0.5 s.
        wait_until(lambda: len(notify.having("WATCHDOG")) >= 4, 10, "watchdog pings")
        status = notify.having("WATCHDOG")[-1][1]["STATUS"]
        assert "digits:" in status and "results" in status

        # `edge-agent reload` sends SIGHUP and returns once the agent is READY again.
        done = reload_cli(proc.pid, tmp_path / "state")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        wait_until(lambda: len(notify.having("READY")) == 2, 1, "READY=1 sent before it returned")
        [(reloading_at, reloading)] = notify.having("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert ready_at < reloading_at < notify.having("READY")[1][0]

        # An invalid edit: old settings kept, the reason in STATUS= and from the command.
        config = tmp_path / "agent.toml"
        config.write_text(config.read_text().replace("fps = 30", "fps = -3"))
        refused = reload_cli(proc.pid, tmp_path / "state")
        assert refused.returncode == 2
        [line] = refused.stderr.splitlines()
        # The file watch may see the edit first: its trigger is then named beside SIGHUP.
        assert line.startswith("edge-agent: config not reloaded (")
        assert "SIGHUP" in line.split(")")[0], line
        assert "old settings kept" in line and "fps" in line
        wait_until(
            lambda: any("config not reloaded" in m.get("STATUS", "") for _, m in notify.messages),
            10,
            "the rejected edit in STATUS=",
        )
        pings = len(notify.having("WATCHDOG"))
        wait_until(lambda: len(notify.having("WATCHDOG")) > pings + 1, 10, "pings go on")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert notify.having("STOPPING")


def reload_cli(pid: int, state_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edge_agent", "reload", "--pid", str(pid)]
    return subprocess.run(
        [*command, "--state-dir", str(state_dir), "--timeout", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_reload_command_says_why_it_cannot_wait(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    done = reload_cli(gone.pid, tmp_path)
    assert (done.returncode, done.stderr) == (2, f"edge-agent: no process {gone.pid}\n")
    done = reload_cli(os.getpid(), tmp_path / "nowhere")
    assert done.returncode == 2
    assert done.stderr == f"edge-agent: {tmp_path / 'nowhere'}: no such state directory\n"


def test_watchdog_pings_stop_when_an_inference_hangs(
    tmp_path: Path, notify: NotifySocket, fake_delegate: Path
) -> None:
    body = BODY.format(delegates=HANG.format(library=fake_delegate))
    proc = start(tmp_path, notify, body)
    try:
        wait_until(lambda: notify.having("READY"), 30, "READY=1")
        wait_until(
            lambda: any("unhealthy" in m.get("STATUS", "") for _, m in notify.messages),
            30,
            "the hang reported",
        )
        [reason] = {m["STATUS"] for _, m in notify.messages if "unhealthy" in m.get("STATUS", "")}
        assert "model digits: an inference has not returned" in reason
        assert len(notify.having("WATCHDOG")) >= 1  # it pinged while healthy
        last_ping = notify.having("WATCHDOG")[-1][0]
        time.sleep(2.5)  # systemd would have restarted it after 1 s
        assert notify.having("WATCHDOG")[-1][0] == last_ping
    finally:
        proc.kill()
        proc.wait(10)
    # Checked every 0.5 s with the hang's growing age in STATUS=; logged once.
    assert proc.stderr is not None
    unhealthy = [line for line in proc.stderr.read().decode().splitlines() if "unhealthy" in line]
    assert len(unhealthy) == 1, unhealthy


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "not found"),  # no file at all
        ("\n", "not provisioned"),  # the unit's SetCredential= fallback: one newline
    ],
)
def test_a_missing_or_empty_credential_exits_78_with_one_clear_line(
    tmp_path: Path, content: str | None, says: str
) -> None:
    body = BODY.format(delegates="") + (
        '\n[mqtt]\nenabled = true\nusername = "cam"\npassword_file = "credential:mqtt-password"\n'
    )
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path / "state", body))
    (tmp_path / "creds").mkdir()
    if content is not None:
        (tmp_path / "creds" / "mqtt-password").write_text(content)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 78  # RestartPreventExitStatus=78 in the unit: no restart loop
    [line] = proc.stderr.splitlines()
    assert "mqtt-password" in line and says in line
