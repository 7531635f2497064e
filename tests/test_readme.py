"""The README's commands, run as a reader would run them, so the README cannot go stale.

Every line of a ```sh block in README.md is one command. Each is one of:
- a command that runs until Ctrl-C (the demo, `edge-agent run`, a broker): started in its own
  process group, checked to produce what the README says (results; a listening broker; with
  `EDGE_AGENT_MQTT__ENABLED=true`, a connection to that broker), and stopped with SIGINT at
  the end of its block, as Ctrl-C would; the agent must then exit 0;
- a command that finishes (`edge-agent ...`, `edge-fleet ...`): run while the block's
  long-running commands run, and must exit 0 with output;
- a listed exception that cannot run here (the test suite itself, installing on a device,
  systemctl/journalctl, activating the environment): checked to exist.
Anything else fails the test, so a new command cannot slip into the README untested.

The broker block starts its own Mosquitto: the port written in the README is replaced by a
free one in every command of that block, and every process runs with the MQTT port set to a
port nothing listens on, so no command here ever reaches the machine's own broker on 1883.
State (outbox, journals) goes to a temporary folder through EDGE_AGENT_DEVICE__STATE_DIR.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.mqtt_fixtures import find_mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEVICE_ID = "readme-check"
# Shell fences a reader would copy from; only `sh` is used, the others fail so that a block
# cannot hide from this test behind another tag.
SHELL_TAGS = {"sh", "bash", "shell", "console", "zsh"}
SHELL_OPERATORS = re.compile(r"^(\||\|\||&&?|;|[0-9]?>>?|<|\$\(.*)$")
FIRST_RESULT_S = 60.0  # scripts/run.sh checks its set-up and cached assets before starting
STOP_S = 10.0


@dataclass
class Command:
    line: int  # in README.md
    text: str
    env: dict[str, str]
    argv: list[str]

    @property
    def kind(self) -> str:
        return classify(self.argv)


@dataclass
class Block:
    line: int
    commands: list[Command] = field(default_factory=list)


def readme_blocks(text: str) -> list[Block]:
    """The ```sh blocks of the README, each line a command (continuations joined)."""
    blocks: list[Block] = []
    current: Block | None = None
    pending = ""
    pending_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fence = re.match(r"^\s*```\s*(\S*)", line)
        if fence:
            if current is None:
                tag = fence.group(1).lower()
                if tag in SHELL_TAGS - {"sh"}:
                    pytest.fail(f"README.md:{number}: write commands in ```sh blocks, not {tag}")
                current = Block(number) if tag == "sh" else Block(-number)
            else:
                if current.line > 0:
                    blocks.append(current)
                current = None
            continue
        if current is None:
            continue
        if current.line < 0:
            if line.lstrip().startswith("$ "):
                pytest.fail(f"README.md:{number}: a '$ ' command outside a ```sh block")
            continue
        if not pending:
            pending_line = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        pending += line
        command = parse(pending, pending_line)
        pending = ""
        if command is not None:
            current.commands.append(command)
    return blocks


def parse(text: str, line: int) -> Command | None:
    tokens = shlex.split(text, comments=True)
    if not tokens:
        return None
    for token in tokens:
        if SHELL_OPERATORS.match(token):
            pytest.fail(f"README.md:{line}: keep commands single, without {token!r}: {text}")
    env: dict[str, str] = {}
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    return Command(line, text.split("#", 1)[0].strip(), env, tokens)


def classify(argv: list[str]) -> str:
    """'long' (runs until Ctrl-C), 'finish', or 'exception'; 'unknown' fails the test."""
    if not argv:
        return "unknown"
    first = argv[0]
    if first == "scripts/run.sh" or argv[:2] == ["edge-agent", "run"] or first == "mosquitto":
        return "long"
    if first in ("edge-agent", "edge-fleet"):
        return "finish"
    if first == "scripts/test.sh" and len(argv) == 1:
        return "exception"
    if argv[:2] == ["sudo", "scripts/install.sh"]:
        return "exception"
    if first in ("systemctl", "journalctl") and "edge-agent" in argv:
        return "exception"
    if first in (".", "source") and argv[1:] == [".venv/bin/activate"]:
        return "exception"
    return "unknown"


def all_commands() -> list[Command]:
    return [c for b in readme_blocks(README.read_text()) for c in b.commands]


# --- what needs no process -----------------------------------------------------------------


def test_every_readme_command_is_one_this_test_knows() -> None:
    commands = all_commands()
    assert commands, "README.md has no ```sh block"
    unknown = [f"README.md:{c.line}: {c.text}" for c in commands if c.kind == "unknown"]
    assert not unknown, "commands tests/test_readme.py does not know how to check:\n" + "\n".join(
        unknown
    )


def test_the_test_command_is_the_second_command_and_what_ci_runs() -> None:
    texts = [c.text for c in all_commands()]
    assert texts[:2] == ["scripts/run.sh", "scripts/test.sh"]
    assert "exec scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_the_commands_that_cannot_run_here_exist() -> None:
    for command in all_commands():
        if command.kind != "exception":
            continue
        argv = command.argv
        where = f"README.md:{command.line}"
        if argv[0] == "scripts/test.sh":
            assert os.access(ROOT / argv[0], os.X_OK), where
        elif argv[0] == "sudo":
            assert os.access(ROOT / argv[1], os.X_OK), where
            usage = (ROOT / argv[1]).read_text()
            for option in argv[2:]:
                assert option in usage, f"{where}: {argv[1]} knows no {option}"
        elif argv[0] in ("systemctl", "journalctl"):
            assert unit_file() is not None, f"{where}: no edge-agent.service in the checkout"
        else:  # activating .venv: checked once scripts/run.sh has set it up (below)
            assert argv[-1] == ".venv/bin/activate", where


def unit_file() -> Path | None:
    for folder in (ROOT / "systemd", ROOT / "edge_agent"):
        found = next(folder.rglob("edge-agent.service"), None) if folder.is_dir() else None
        if found is not None:
            return found
    return None


def test_readme_links_resolve() -> None:
    """Every relative link in README.md names a file in the checkout."""
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README.read_text())
    assert links, "README.md links to no file: the pattern no longer matches its links"
    missing = [target for target in links if not (ROOT / target).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


# --- running them ------------------------------------------------------------------------------


class Running:
    """A long-running README command in its own process group, its output collected."""

    def __init__(self, command: Command, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.command = command
        self.lines: list[str] = []
        self.log = log
        self._err: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def results(self) -> list[dict[str, object]]:
        found = []
        for line in list(self.lines):
            try:
                payload = json.loads(line)
            except ValueError:
                continue
            if isinstance(payload, dict) and "result" in payload:
                found.append(payload)
        return found

    def wait_for(self, check: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():  # type: ignore[operator]
            if self.process.poll() is not None:
                pytest.fail(
                    f"README.md:{self.command.line}: {self.command.text} exited "
                    f"{self.process.returncode} before {what}:\n{self.stderr()[-3000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"README.md:{self.command.line}: {self.command.text}: no {what} in "
                    f"{timeout:.0f} s:\n{self.stderr()[-3000:]}"
                )
            time.sleep(0.05)

    def interrupt(self) -> int | None:
        """Ctrl-C: SIGINT to the whole group; the exit status, None if it did not stop."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            return None
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._reader.join(2)
        self._err.close()


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def rewrite_ports(block: Block) -> dict[str, str]:
    """The port each broker in the block is started on -> a free port for this run."""
    ports = {}
    for command in block.commands:
        if command.argv and command.argv[0] == "mosquitto":
            assert "-p" in command.argv, f"README.md:{command.line}: give the broker a port (-p)"
            ports[command.argv[command.argv.index("-p") + 1]] = str(free_port())
    return ports


def substitute(text: str, ports: dict[str, str]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"(?<!\d){re.escape(old)}(?!\d)", new, text)
    return text


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    nowhere = free_port()  # nothing listens here: a command without its own port reaches no one
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "EDGE_FLEET_"))}
    env.update(
        PATH=os.pathsep.join([str(ROOT / ".venv" / "bin"), "/usr/sbin", "/usr/local/sbin"])
        + os.pathsep
        + env.get("PATH", ""),
        EDGE_AGENT_CACHE=os.environ.get("EDGE_AGENT_CACHE", str(Path.home() / ".cache/edge-agent")),
        EDGE_AGENT_DEVICE__STATE_DIR=str(tmp_path / "state"),
        EDGE_AGENT_DEVICE__ID=DEVICE_ID,
        EDGE_AGENT_MQTT__HOST="127.0.0.1",
        EDGE_AGENT_MQTT__PORT=str(nowhere),
        EDGE_FLEET_BROKER=f"127.0.0.1:{nowhere}",
        PYTHONUNBUFFERED="1",
    )
    return env


def setup_is_current() -> None:
    """scripts/run.sh reinstalls .venv when pyproject.toml changed since the last set-up;
    that belongs before the tests (scripts/test.sh does it), not inside this one."""
    stamp = ROOT / ".venv" / ".edge-agent-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != want:
        pytest.fail(f"{stamp} does not match pyproject.toml: run scripts/setup.sh first")


def test_readme_commands_run(base_env: dict[str, str], tmp_path: Path) -> None:
    setup_is_current()
    mosquitto = find_mosquitto()
    blocks = readme_blocks(README.read_text())
    if mosquitto is None and any(c.argv[:1] == ["mosquitto"] for b in blocks for c in b.commands):
        pytest.fail("mosquitto is not installed (scripts/setup.sh installs it)")
    for number, block in enumerate(blocks):
        run_block(block, base_env, tmp_path / f"block{number}", mosquitto)


def run_block(block: Block, base_env: dict[str, str], folder: Path, mosquitto: Path | None) -> None:
    folder.mkdir()
    ports = rewrite_ports(block)
    running: list[Running] = []
    try:
        for command in block.commands:
            text = substitute(command.text, ports)
            assert "1883" not in text, f"README.md:{command.line}: would reach port 1883"
            env = {**base_env, **{k: substitute(v, ports) for k, v in command.env.items()}}
            argv = [substitute(a, ports) for a in command.argv]
            if command.kind == "long":
                running.append(start(command, argv, env, folder, ports, mosquitto))
            elif command.kind == "finish":
                finish(command, argv, env, ports)
            elif command.kind == "exception" and argv[0] in (".", "source"):
                assert (ROOT / argv[1]).is_file(), f"README.md:{command.line}: no {argv[1]}"
        for proc in reversed(running):
            code = proc.interrupt()
            is_agent = proc.command.argv[0] != "mosquitto"
            if is_agent:
                assert code == 0, (
                    f"README.md:{proc.command.line}: {proc.command.text} exited {code} at "
                    f"Ctrl-C:\n{proc.stderr()[-3000:]}"
                )
    finally:
        for proc in running:
            proc.kill()


def start(
    command: Command,
    argv: list[str],
    env: dict[str, str],
    folder: Path,
    ports: dict[str, str],
    mosquitto: Path | None,
) -> Running:
    log = folder / f"line{command.line}.log"
    if argv[0] == "mosquitto":
        assert mosquitto is not None
        proc = Running(command, [str(mosquitto), *argv[1:]], env, log)
        port = int(argv[argv.index("-p") + 1])
        proc.wait_for(lambda: listening(port), f"broker listening on {port}", 10)
        return proc
    proc = Running(command, argv, env, log)
    proc.wait_for(lambda: proc.results(), "result on stdout", FIRST_RESULT_S)
    if env.get("EDGE_AGENT_MQTT__ENABLED") == "true":
        port = env["EDGE_AGENT_MQTT__PORT"]
        assert port in ports.values(), (
            f"README.md:{command.line}: an agent with MQTT on must name the block's broker port"
        )
        connected = f"mqtt: connected to 127.0.0.1:{port}"
        proc.wait_for(lambda: connected in proc.stderr(), f"'{connected}'", 15)
    return proc


def finish(command: Command, argv: list[str], env: dict[str, str], ports: dict[str, str]) -> None:
    where = f"README.md:{command.line}: {command.text}"
    if argv[0] == "edge-fleet" and argv[1:2] != ["--help"]:
        assert any(port in " ".join(argv) for port in ports.values()), (
            f"{where}: an edge-fleet command must name the block's broker"
        )
    out = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, f"{where}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert out.stdout.strip(), f"{where}: printed nothing\n{out.stderr}"
    if argv[:2] == ["edge-fleet", "devices"]:
        assert DEVICE_ID in out.stdout, f"{where}: the running agent is not listed\n{out.stdout}"
    if argv[:2] == ["edge-agent", "results"]:
        assert "result" in out.stdout or "faces" in out.stdout, f"{where}: {out.stdout}"
