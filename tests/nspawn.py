"""A real systemd as PID 1: a minimal Debian 12 root (systemd 252) booted in systemd-nspawn,
with edge-agent installed in it by scripts/install.sh, offline, from a wheelhouse built here.

- The root comes from scripts/nspawn_root.sh (debootstrap once, kept as a tarball in
  ~/.cache/edge-agent; that script also installs systemd-container and debootstrap when
  they are missing) and is unpacked afresh for each container.
- The wheelhouse holds the agent's dependencies as wheels, built once per pyproject.toml and
  Python version, also in ~/.cache/edge-agent.
- The container has no network of its own (`--private-network`): nothing in it can reach the
  machine's services, and nothing needs to.
- Commands run in it through nsenter into its PID 1's namespaces; `poweroff` ends it, and a
  container that does not go within a time limit is killed.
- Nothing is fetched unasked: outside CI, a machine without the two tools or the cached root
  is skipped (`needs_fetching`) unless EDGE_AGENT_TEST_NSPAWN=1 lets the tests fetch them.
- A killed test session leaves no container running, and its folder only until the next
  session: nspawn gets SIGTERM (an orderly poweroff) when the session's process dies, each
  container has a record in the cache folder (its folder, its nspawn's pid, the session's
  pid) while it exists, and `clean_stale` powers off and removes whatever a dead session's
  records still name."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.load import tomllib

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-agent"
ROOT_SCRIPT = REPO / "scripts" / "nspawn_root.sh"
# One record (JSON) per container that exists, named after it: see clean_stale.
RECORDS = CACHE / "containers"
# Set to 1, it lets the tests apt-get install the tools and debootstrap the root outside CI.
OPT_IN = "EDGE_AGENT_TEST_NSPAWN"
# Where the container sees the checkout and the wheelhouse (read-only bind mounts).
SOURCE = "/src/edge-agent"
WHEELS = "/wheelhouse"
# A PATH for commands in the container (the caller's would name this machine's venv).
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_BOOT_S = 60.0
_POWEROFF_S = 30.0
_PR_SET_PDEATHSIG = 1  # prctl(2)


class Unavailable(Exception):
    """The container cannot run here; the text says why, in one line."""


def unavailable() -> str | None:
    """Why a container cannot be booted on this machine, or None when it can (possibly after
    installing systemd-container and debootstrap)."""
    if not sys.platform.startswith("linux"):
        return "systemd-nspawn needs Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn and debootstrap need root"
    if not Path("/proc/self/ns/pid").exists():
        return "no pid namespaces here"
    tools = [shutil.which(name) for name in ("systemd-nspawn", "debootstrap")]
    if not all(tools) and shutil.which("apt-get") is None:
        return "systemd-nspawn or debootstrap is missing and there is no apt-get to install them"
    if shutil.which("nsenter") is None:
        return "nsenter (util-linux) is missing"
    return None


def needs_fetching() -> str | None:
    """What booting a container would first fetch over the network (the two tools from apt,
    the root by debootstrap), in a few words, or None when both are here. Cheap: no network,
    nothing built. The wheelhouse is not counted: it comes from pip's sources, like the venv."""
    missing = [name for name in ("systemd-nspawn", "debootstrap") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    done = subprocess.run(
        [str(ROOT_SCRIPT), "--cached"], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        return f"no Debian root built in {CACHE}"
    return None


def root_tarball() -> Path:
    """The cached root tarball (built on first use: about 1.5 minutes)."""
    done = subprocess.run(
        [str(ROOT_SCRIPT)], capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise Unavailable(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return Path(done.stdout.strip())


def wheelhouse() -> Path:
    """The agent's dependencies (the `agent` extra) and the build backend as wheels, for an
    offline install in the container's Python (Debian 12's 3.11, like this machine's)."""
    pyproject = (REPO / "pyproject.toml").read_bytes()
    tag = f"{sys.version_info.major}{sys.version_info.minor}"
    key = hashlib.sha256(pyproject + tag.encode()).hexdigest()[:12]
    folder = CACHE / f"wheelhouse-py{tag}-{key}"
    if folder.is_dir():
        return folder
    project = tomllib.loads(pyproject.decode())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["agent"]]
    backend = tomllib.loads(pyproject.decode())["build-system"]["requires"]
    CACHE.mkdir(parents=True, exist_ok=True)
    building = CACHE / f".wheelhouse-{key}.{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(building), *wanted, *backend],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        raise Unavailable(f"pip wheel failed: {done.stderr.strip().splitlines()[-1:]}")
    building.rename(folder)
    return folder


class Container:
    """One container in `folder` (its root in folder/root, nspawn's output beside it). Use as
    a context manager to boot it: it is powered off (or killed) at the end, however the block
    ends; `remove` deletes its folder and record."""

    def __init__(self, folder: Path, name: str, binds: Sequence[tuple[Path, str]] = ()) -> None:
        self.folder = folder
        self.root = folder / "root"
        self.name = name
        self.binds = list(binds)
        self.log = folder / f"{name}.nspawn.log"
        self.record = RECORDS / f"{name}.json"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def unpack(self, tarball: Path) -> None:
        """A fresh root from the tarball. From here until `remove`, the record names it."""
        self._write_record(nspawn=0)
        self.root.mkdir(parents=True)
        subprocess.run(
            ["tar", "-C", str(self.root), "--numeric-owner", "-xf", str(tarball)],
            check=True,
            timeout=300,
        )

    def remove(self) -> None:
        """Powered off, then its folder and its record deleted."""
        self.poweroff()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.record.unlink(missing_ok=True)

    def __enter__(self) -> Container:
        try:
            self.boot()
        except BaseException:
            self.poweroff()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.poweroff()

    def boot(self) -> None:
        argv = [
            "systemd-nspawn",
            "-D",
            str(self.root),
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=passive",
            "-M",
            self.name,
            *(f"--bind-ro={host}:{inside}" for host, inside in self.binds),
        ]
        with self.log.open("wb") as log:
            # Its own session (setsid) and no stdin, or nspawn takes the terminal over.
            self._nspawn = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_terminated_with(os.getpid()),
            )
        self._write_record(nspawn=self._nspawn.pid)
        deadline = time.monotonic() + _BOOT_S
        while not self.pid1:
            self._check_alive()
            self.pid1 = _container_init(self._nspawn.pid)
            self._before(deadline, "the container's PID 1")
        state = ""
        while state not in ("running", "degraded"):
            self._check_alive()
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            self._before(deadline, f"systemd to finish booting (is-system-running: {state})")

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A command in the container as root, in all of PID 1's namespaces."""
        enter = ["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w"]
        done = subprocess.run(
            [*enter, "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**_ENV, **(env or {})},
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"in the container: {' '.join(argv)} exited {done.returncode}\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *args: str) -> list[dict[str, str]]:
        """Journal entries as JSON objects (`journalctl -o json ARGS`)."""
        out = self.run("journalctl", "--no-pager", "-o", "json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def write(self, path: str, text: str, mode: int = 0o644, group: str = "root") -> None:
        """A file in the container, replaced atomically (as an editor would), root:group."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        new = target.with_name(f".{target.name}.new")
        new.write_text(text)
        new.chmod(mode)
        os.chown(new, 0, self.gid(group))
        new.replace(target)

    def gid(self, group: str) -> int:
        for line in (self.root / "etc/group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return int(fields[2])
        raise KeyError(group)

    def poweroff(self) -> None:
        proc = self._nspawn
        if proc is None:
            return
        if proc.poll() is None and self.pid1:
            self.run("systemctl", "poweroff", check=False, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_POWEROFF_S)
        if proc.poll() is None:  # the last resort: the whole session (nspawn and below)
            with _ignore_gone():
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self._nspawn = None

    def _write_record(self, nspawn: int) -> None:
        RECORDS.mkdir(parents=True, exist_ok=True)
        found = {
            "name": self.name,
            "folder": str(self.folder),
            "root": str(self.root),
            "nspawn": nspawn,
            "session": os.getpid(),
            "session_started": _started(os.getpid()),
        }
        new = self.record.with_name(f".{self.record.name}.new")
        new.write_text(json.dumps(found))
        new.replace(self.record)

    def _check_alive(self) -> None:
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"systemd-nspawn exited {self._nspawn.returncode}:\n{tail}")

    def _before(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def clean_stale() -> list[str]:
    """Power off and remove the containers of test sessions that are gone (killed before their
    teardown ran); the names of those removed. A record whose session still runs is left
    alone, and a process is signalled only while its command line is that container's
    systemd-nspawn (pids are reused)."""
    removed = []
    for path in sorted(RECORDS.glob("*.json")):
        try:
            found: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if found["session_started"] is not None and (
            _started(found["session"]) == found["session_started"]
        ):
            continue
        nspawn = int(found["nspawn"])
        if nspawn and not _stop(nspawn, found["root"], found["name"]):
            raise RuntimeError(
                f"container {found['name']} (systemd-nspawn pid {nspawn}), left by an earlier "
                f"test session, did not stop; its root is {found['root']}"
            )
        shutil.rmtree(found["folder"], ignore_errors=True)
        path.unlink(missing_ok=True)
        removed.append(found["name"])
    return removed


@contextlib.contextmanager
def ended_by_signals() -> Iterator[None]:
    """Within the block, SIGTERM or SIGHUP ends the test session as Ctrl-C does (pytest.exit:
    the fixtures are torn down, a container powered off); a second one acts as before."""
    signals = (signal.SIGTERM, signal.SIGHUP)

    def end(signum: int, frame: object) -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)
        pytest.exit(f"ended by {signal.Signals(signum).name}", returncode=128 + signum)

    previous = {number: signal.signal(number, end) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _stop(pid: int, root: str, name: str) -> bool:
    """Stop the systemd-nspawn running `root` as `name`, if `pid` is still it: SIGTERM first
    (nspawn asks the container to power off), then SIGKILL to its session. False if it
    stays."""
    if not _is_nspawn(pid, root, name):
        return True
    with _ignore_gone():
        os.kill(pid, signal.SIGTERM)
    if _gone(pid, root, name, _POWEROFF_S):
        return True
    with _ignore_gone():
        if os.getpgid(pid) == pid:  # its own session, as boot starts it
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    return _gone(pid, root, name, 10)


def _gone(pid: int, root: str, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_nspawn(pid, root, name):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _is_nspawn(pid: int, root: str, name: str) -> bool:
    """Whether `pid` is a live `systemd-nspawn -D root ... -M name` (a zombie has no command
    line: it is not)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    pairs = set(itertools.pairwise(argv))
    return Path(argv[0]).name == "systemd-nspawn" and {("-D", root), ("-M", name)} <= pairs


def _started(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None if there is no such process: with
    the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def _terminated_with(parent: int) -> Callable[[], None]:
    """For Popen's preexec_fn: the child gets SIGTERM when its parent dies, however it dies
    (kill -9 too). For systemd-nspawn that is an orderly poweroff of its container."""
    libc = ctypes.CDLL(None, use_errno=True)

    def set_up() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)

    return set_up


def _container_init(nspawn_pid: int) -> int:
    """The host pid of the container's PID 1: the child of systemd-nspawn that is pid 1 in
    its own pid namespace (nspawn first forks a helper that is not)."""
    children = Path(f"/proc/{nspawn_pid}/task/{nspawn_pid}/children")
    with _ignore_gone():
        for pid in children.read_text().split():
            status = Path(f"/proc/{pid}/status").read_text()
            nspids = next(line for line in status.splitlines() if line.startswith("NSpid:"))
            if nspids.split()[1:] == [pid, "1"]:
                return int(pid)
    return 0


def _ignore_gone() -> contextlib.suppress:
    """A process or /proc entry that went away meanwhile."""
    return contextlib.suppress(FileNotFoundError, ProcessLookupError)
