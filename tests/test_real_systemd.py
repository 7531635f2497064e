"""The unit under a real systemd: Debian 12's systemd 252 as PID 1 of a systemd-nspawn
container (tests/nspawn.py), edge-agent installed in it by scripts/install.sh from a
wheelhouse, offline. One container for the module; each test leaves the service running the
base config with no drop-ins.

Needs root, systemd-nspawn, debootstrap and a Debian root built by scripts/nspawn_root.sh;
elsewhere the module is skipped whole, with one line saying why. Outside CI nothing is
fetched unasked: where only the tools or the root are missing, the line says so, and
EDGE_AGENT_TEST_NSPAWN=1 lets the tests apt-get install the tools and debootstrap the root
(or run scripts/nspawn_root.sh once). With CI=true it must run: the tools and the root are
fetched as needed, and a machine that cannot run it fails instead. The wheelhouse is built on
the first run; both are cached in ~/.cache/edge-agent (docs/deploy.md has the times)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests import nspawn
from tests.waiting import WaitTimedOut

CI = os.environ.get("CI") == "true"


def _not_tried() -> str | None:
    """Why the module is skipped outside CI, in one line, or None to run it. Decided at import,
    cheaply: no network, nothing installed or built."""
    why = nspawn.unavailable()
    if why:
        return f"real systemd (systemd-nspawn) not available: {why}"
    missing = nspawn.needs_fetching()
    if missing and os.environ.get(nspawn.OPT_IN) != "1":
        return (
            f"real systemd (systemd-nspawn) not tried: {missing}; {nspawn.OPT_IN}=1 lets the "
            "tests apt-get install the tools and debootstrap a Debian root (network, ~1.5 min), "
            "or run scripts/nspawn_root.sh as root once"
        )
    return None


if not CI and (_WHY := _not_tried()):
    pytest.skip(_WHY, allow_module_level=True)

UNIT = "edge-agent.service"
CONFIG = "/etc/edge-agent/agent.toml"
DELEGATE = "/usr/local/lib/libfake_delegate.so"

BASE = """\
[device]
id = "nspawn-test"
state_dir = "/var/lib/edge-agent"

[models.digits]
path = "/opt/edge-agent/models/digits_int8.tflite"
threads = 1

[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = 30

[pipelines.digits]
source = "pattern"
model = "digits"

[service]
stuck_after_s = 1

[logging]
status_interval_s = 0
"""

SECOND_PIPELINE = """
[pipelines.second]
source = "pattern"
model = "digits"
"""

# The test delegate claims every node and, after 40 invokes, never returns from one.
HANG = f"""
[models.digits.batch]
max_batch = 1

[[runtime.delegates]]
name = "external"
library = "{DELEGATE}"
label = "wedged-npu"
options = {{ mode = "hang", hang_after = "40" }}
"""

# No /etc/edge-agent/credentials/mqtt-password: the unit's SetCredential= fallback (one
# newline) is what the agent reads.
MQTT_WITH_CREDENTIAL = """
[mqtt]
enabled = true
host = "127.0.0.1"
username = "cam"
password_file = "credential:mqtt-password"
"""

# In the agent's own mount namespace, as a given user: try to open each path for writing
# (creating it when absent, removed again) and say what happened.
PROBE = """
import json, os, sys
found = {}
for path in sys.argv[1:]:
    existed = os.path.exists(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    except OSError as exc:
        found[path] = exc.strerror
        continue
    if not existed:
        os.unlink(path)
    found[path] = "written"
print(json.dumps(found))
"""
READ_ONLY = "Read-only file system"


class Box:
    """The container with the agent installed, and the state tests return it to."""

    def __init__(self, container: nspawn.Container, install_log: str) -> None:
        self.c = container
        self.install_log = install_log
        self.config = ""

    def wait(self, check: Callable[[], object], timeout: float, what: str) -> None:
        """As tests.waiting.wait_until, polling every 0.2 s: each look is a few processes."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise WaitTimedOut(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.2)

    def props(self, *names: str) -> dict[str, str]:
        return self.c.show(UNIT, *names)

    def write_config(self, text: str) -> None:
        self.c.write(CONFIG, text, mode=0o640, group="edge-agent")
        self.config = text

    def dropin(self, name: str, text: str) -> None:
        self.c.write(f"/etc/systemd/system/{UNIT}.d/{name}.conf", "[Service]\n" + text)
        self.c.run("systemctl", "daemon-reload")

    def known_state(self) -> None:
        """The base config running, no drop-ins, no failure (nor start-limit) remembered."""
        changed = False
        dropins = self.c.root / f"etc/systemd/system/{UNIT}.d"
        if dropins.exists():
            shutil.rmtree(dropins)
            self.c.run("systemctl", "daemon-reload")
            changed = True
        if self.config != BASE:
            self.write_config(BASE)
            changed = True
        self.c.run("systemctl", "reset-failed", UNIT, check=False)
        if changed or self.props("ActiveState")["ActiveState"] != "active":
            self.c.run("systemctl", "restart", UNIT)
        assert self.props("ActiveState")["ActiveState"] == "active"

    def now(self) -> str:
        """The container's clock, for `journalctl --since`."""
        return "@" + self.c.run("date", "+%s.%N").stdout.strip()

    def probe(self, user: str, *paths: str) -> dict[str, str]:
        """What `user` may write, seen from inside the running agent's sandbox (its mounts)."""
        pid = self.props("MainPID")["MainPID"]
        uid = self.c.run("id", "-u", user).stdout.strip()
        gid = self.c.run("id", "-g", user).stdout.strip()
        enter = ["nsenter", "-t", pid, "-m", "-S", uid, "-G", gid, "--"]
        out = self.c.run(*enter, "/usr/bin/python3", "-c", PROBE, *paths).stdout
        found: dict[str, str] = json.loads(out)
        return found


def _cannot_run(why: str) -> NoReturn:
    if CI:
        pytest.fail(f"CI=true, but the real-systemd tests cannot run here: {why}")
    pytest.skip(f"real systemd (systemd-nspawn) not available: {why}")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Box]:
    why = nspawn.unavailable()
    if why:
        _cannot_run(why)
    # Containers of sessions killed before their teardown (SIGKILL): powered off, removed.
    nspawn.clean_stale()
    fake_delegate: Path = request.getfixturevalue("fake_delegate")
    try:
        tarball = nspawn.root_tarball()
        wheels = nspawn.wheelhouse()
    except nspawn.Unavailable as exc:
        _cannot_run(str(exc))
    container = nspawn.Container(
        tmp_path_factory.mktemp("nspawn"),
        f"edge-agent-test-{os.getpid()}",
        binds=[(nspawn.REPO, nspawn.SOURCE), (wheels, nspawn.WHEELS)],
    )
    # SIGTERM or SIGHUP to pytest: the session ends as with Ctrl-C, through the blocks below.
    with nspawn.ended_by_signals():
        try:
            container.unpack(tarball)
            # Built on this machine for the same Debian 12 (glibc, architecture) as the container.
            shutil.copy(fake_delegate, container.root / DELEGATE.lstrip("/"))
            with container:
                install = container.run(
                    f"{nspawn.SOURCE}/scripts/install.sh",
                    "--source",
                    nspawn.SOURCE,
                    env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": nspawn.WHEELS},
                    timeout=600,
                )
                found = Box(container, install.stdout)
                # The installed default config ran; the tests' own config from here on.
                assert found.props("ActiveState")["ActiveState"] == "active", install.stdout
                found.known_state()
                yield found
        finally:
            container.remove()


@pytest.fixture
def agent(box: Box) -> Iterator[Box]:
    yield box
    box.known_state()


def test_installed_offline_and_started_with_the_default_config(box: Box) -> None:
    assert "started edge-agent.service" in box.install_log
    assert "installed the edge-agent package into /opt/edge-agent/venv" in box.install_log
    # No procps in a minimal root: the reason ExecReload= is not /bin/kill.
    assert not (box.c.root / "usr/bin/kill").exists()


def test_systemd_analyze_verify_passes_in_the_minimal_root(box: Box) -> None:
    done = box.c.run("systemd-analyze", "verify", f"/etc/systemd/system/{UNIT}", check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_exposure_on_the_live_system_is_at_most_1_5(box: Box) -> None:
    out = box.c.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    [line] = [line for line in out.splitlines() if "Overall exposure level" in line]
    score = float(line.split(":")[1].split()[0])
    assert score <= 1.5, line


def test_start_reaches_active_through_ready(agent: Box) -> None:
    started = time.monotonic()
    agent.c.run("systemctl", "restart", UNIT)  # Type=notify: returns once READY=1 came
    took = time.monotonic() - started
    props = agent.props("Type", "NotifyAccess", "ActiveState", "SubState", "StatusText")
    assert (props["Type"], props["NotifyAccess"]) == ("notify", "main")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    # The status line comes with READY=1, in the same datagram.
    assert "digits:" in props["StatusText"] and "fps" in props["StatusText"], props
    assert took < 60


def test_reload_returns_once_the_new_config_runs(agent: Box) -> None:
    agent.write_config(BASE + SECOND_PIPELINE)
    agent.c.run("systemctl", "reload", UNIT)
    # Read at once, no waiting: the new pipeline is already in the status line.
    props = agent.props("ActiveState", "SubState", "StatusText")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert "second:" in props["StatusText"], props


def test_an_invalid_edit_keeps_the_old_settings_and_says_why(agent: Box) -> None:
    since = agent.now()
    agent.write_config(BASE.replace("fps = 30", "fps = -3"))
    done = agent.c.run("systemctl", "reload", UNIT, check=False)
    assert done.returncode != 0  # the reload job failed; the service runs on
    props = agent.props("ActiveState", "SubState", "StatusText", "MainPID")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    status = props["StatusText"]
    assert "digits:" in status  # the old pipeline still runs
    assert "config not reloaded" in status and "old settings kept" in status, status
    assert "fps" in status
    shown = agent.c.run("systemctl", "status", "--no-pager", UNIT, check=False).stdout
    assert "config not reloaded" in shown
    # ExecReload='s own line: the agent's reason, in the journal beside systemd's verdict.
    messages = [str(e.get("MESSAGE")) for e in agent.c.journal("-u", UNIT, f"--since={since}")]
    assert any(m.startswith("edge-agent: config not reloaded") for m in messages), messages

    agent.write_config(BASE)
    agent.c.run("systemctl", "reload", UNIT)
    assert "last problem" not in agent.props("StatusText")["StatusText"]


def test_state_is_writable_and_program_and_credentials_are_not(agent: Box) -> None:
    agent.wait(lambda: (agent.c.root / "var/lib/edge-agent/outbox.db").exists(), 30, "outbox")
    found = agent.probe(
        "edge-agent",
        "/var/lib/edge-agent/.probe",
        "/var/lib/edge-agent/outbox.db",
        "/opt/edge-agent/.probe",
        "/opt/edge-agent/venv/bin/edge-agent",
        "/etc/edge-agent/credentials/.probe",
        "/run/credentials/edge-agent.service/.probe",
        "/run/credentials/edge-agent.service/mqtt-password",
    )
    assert found.pop("/var/lib/edge-agent/.probe") == "written"
    assert found.pop("/var/lib/edge-agent/outbox.db") == "written"
    assert found.pop("/etc/edge-agent/credentials/.probe") == "Permission denied"
    assert all(result != "written" for result in found.values()), found
    # /opt is read-only as a mount: not even root could write there from inside the sandbox.
    paths = ("/opt/edge-agent/.probe", "/opt/edge-agent/venv/bin/edge-agent")
    assert agent.probe("root", *paths) == dict.fromkeys(paths, READ_ONLY)
    owner = agent.c.run("stat", "-c", "%U", "/var/lib/edge-agent/outbox.db").stdout.strip()
    assert owner == "edge-agent"


def test_the_config_is_read_only_to_the_agent(agent: Box) -> None:
    # The documented default (ReadOnlyPaths=/etc/edge-agent): read-only as a mount, so not
    # even root could write there from inside the sandbox.
    paths = ("/etc/edge-agent/agent.toml", "/etc/edge-agent/.probe")
    assert "written" not in agent.probe("edge-agent", *paths).values()
    assert agent.probe("root", *paths) == dict.fromkeys(paths, READ_ONLY)


def test_stop_takes_under_5_s(agent: Box) -> None:
    started = time.monotonic()
    agent.c.run("systemctl", "stop", UNIT)
    took = time.monotonic() - started
    props = agent.props("ActiveState", "Result", "ExecMainStatus")
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == (
        "inactive",
        "success",
        "0",
    )
    assert took < 5, took


def test_kill_9_leads_to_a_restart(agent: Box) -> None:
    agent.dropin("quick", "RestartSec=1\n")
    before = agent.props("MainPID", "NRestarts")
    agent.c.run("systemctl", "kill", "--signal=SIGKILL", "--kill-who=main", UNIT)

    def restarted() -> bool:
        now = agent.props("MainPID", "NRestarts", "SubState")
        return (
            int(now["NRestarts"]) == int(before["NRestarts"]) + 1
            and now["SubState"] == "running"
            and now["MainPID"] not in ("0", before["MainPID"])
        )

    agent.wait(restarted, 120, "a restart after SIGKILL")


def test_a_missing_credential_exits_78_without_a_restart(agent: Box) -> None:
    agent.dropin("quick", "RestartSec=1\n")
    since = agent.now()
    before = agent.props("NRestarts")["NRestarts"]
    agent.write_config(BASE + MQTT_WITH_CREDENTIAL)
    done = agent.c.run("systemctl", "restart", UNIT, check=False)
    assert done.returncode != 0
    time.sleep(3)  # RestartSec=1: a restart would have happened by now
    props = agent.props("ActiveState", "Result", "ExecMainStatus", "NRestarts", "StatusText")
    assert (props["ActiveState"], props["Result"], props["ExecMainStatus"]) == (
        "failed",
        "exit-code",
        "78",
    ), props
    assert props["NRestarts"] == before
    entries = agent.c.journal("-u", UNIT, f"--since={since}", "_TRANSPORT=stdout")
    lines = [str(e.get("MESSAGE")) for e in entries if "mqtt-password" in str(e.get("MESSAGE"))]
    assert len(lines) == 1 and "not provisioned" in lines[0], lines


def test_a_hung_inference_is_killed_by_the_watchdog_and_restarted(agent: Box) -> None:
    # A short watchdog for the test (30 s in the unit): pings every 4 s while healthy.
    agent.dropin("watchdog", "WatchdogSec=8\nRestartSec=1\n")
    since = agent.now()
    before = int(agent.props("NRestarts")["NRestarts"])
    agent.write_config(BASE + HANG)
    agent.c.run("systemctl", "restart", UNIT)
    agent.wait(
        lambda: int(agent.props("NRestarts")["NRestarts"]) >= before + 2, 120, "two restarts"
    )
    entries = agent.c.journal("-u", UNIT, f"--since={since}")
    killed = [e["INVOCATION_ID"] for e in entries if "Watchdog timeout" in str(e.get("MESSAGE"))]
    unhealthy: dict[str, int] = {}
    for entry in entries:
        if "unhealthy, watchdog pings stopped" in str(entry.get("MESSAGE")):
            assert entry["PRIORITY"] == "3"  # an error in the journal
            key = entry["_SYSTEMD_INVOCATION_ID"]
            unhealthy[key] = unhealthy.get(key, 0) + 1
    assert len(killed) >= 2
    # One error line per hang, though the check runs every 4 s with the hang's age growing.
    assert all(unhealthy.get(invocation) == 1 for invocation in killed), (killed, unhealthy)
    assert all(count == 1 for count in unhealthy.values()), unhealthy


# The harness itself: what a killed session leaves behind is cleaned up by the next one.


def _fake_nspawn(root: Path, name: str) -> subprocess.Popen[bytes]:
    """A process whose command line is `systemd-nspawn ... -D root ... -M name` (Python,
    sleeping), standing in for a container's nspawn."""
    argv = ["systemd-nspawn", "-c", "import time; time.sleep(60)", "-D", str(root), "-M", name]
    return subprocess.Popen(argv, executable=sys.executable)


def _record(folder: Path, name: str, nspawn_pid: int, session: int) -> Path:
    """A container's folder and its record, as Container.unpack and boot leave them."""
    (folder / "root").mkdir(parents=True)
    nspawn.RECORDS.mkdir(exist_ok=True)
    record = nspawn.RECORDS / f"{name}.json"
    started = nspawn._started(session)
    found: dict[str, object] = {"name": name, "folder": str(folder), "root": str(folder / "root")}
    found |= {"nspawn": nspawn_pid, "session": session, "session_started": started}
    record.write_text(json.dumps(found))
    return record


def _dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(nspawn, "RECORDS", tmp_path / "containers")
    return tmp_path


def test_a_dead_sessions_container_is_stopped_and_removed(records: Path) -> None:
    folder = records / "nspawn0"
    fake = _fake_nspawn(folder / "root", "edge-agent-test-1")
    try:
        record = _record(folder, "edge-agent-test-1", fake.pid, session=_dead_pid())
        assert nspawn.clean_stale() == ["edge-agent-test-1"]
        assert fake.wait(5) == -signal.SIGTERM  # nspawn's cue for an orderly poweroff
        assert not folder.exists() and not record.exists()
    finally:
        fake.kill()


@pytest.mark.parametrize("other", ["a dead pid", "another program", "another container"])
def test_a_stale_record_never_signals_a_process_that_is_not_its_nspawn(
    records: Path, other: str
) -> None:
    folder = records / "nspawn0"
    if other == "another program":
        bystander = subprocess.Popen(["sleep", "60"])
    else:
        bystander = _fake_nspawn(records / "elsewhere" / "root", "edge-agent-test-2")
    try:
        pid = _dead_pid() if other == "a dead pid" else bystander.pid
        record = _record(folder, "edge-agent-test-1", pid, session=_dead_pid())
        assert nspawn.clean_stale() == ["edge-agent-test-1"]
        assert bystander.poll() is None  # still running
        assert not folder.exists() and not record.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_running_sessions_container_is_left_alone(records: Path) -> None:
    folder = records / "nspawn0"
    fake = _fake_nspawn(folder / "root", "edge-agent-test-1")
    try:
        record = _record(folder, "edge-agent-test-1", fake.pid, session=os.getpid())
        assert nspawn.clean_stale() == []
        assert fake.poll() is None
        assert folder.exists() and record.exists()
    finally:
        fake.kill()
        fake.wait()


def test_nspawn_gets_sigterm_when_the_session_is_killed() -> None:
    # A stand-in session starts a stand-in nspawn as Container.boot does, and is killed -9.
    session = subprocess.Popen(
        [sys.executable, "-c", SESSION, str(nspawn.REPO)], stdout=subprocess.PIPE, text=True
    )
    assert session.stdout is not None
    child = int(session.stdout.readline())
    root = f"/nonexistent/{session.pid}"
    assert nspawn._is_nspawn(child, root, "edge-agent-test-1")
    session.kill()
    session.wait()
    deadline = time.monotonic() + 10
    while nspawn._is_nspawn(child, root, "edge-agent-test-1"):
        assert time.monotonic() < deadline, "the session's nspawn outlived it"
        time.sleep(0.05)


SESSION = """
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from tests import nspawn
argv = ["systemd-nspawn", "-c", "import time; time.sleep(60)",
        "-D", f"/nonexistent/{os.getpid()}", "-M", "edge-agent-test-1"]
child = subprocess.Popen(argv, executable=sys.executable, start_new_session=True,
                         preexec_fn=nspawn._terminated_with(os.getpid()))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_sigterm_ends_the_session_through_its_teardown() -> None:
    before = signal.getsignal(signal.SIGTERM)
    ended = pytest.raises(pytest.exit.Exception, match="ended by SIGTERM")
    with ended, nspawn.ended_by_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) == before
