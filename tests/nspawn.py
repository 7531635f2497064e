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
  container that does not go within a time limit is killed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from edge_agent.config.load import tomllib

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-agent"
ROOT_SCRIPT = REPO / "scripts" / "nspawn_root.sh"
# Where the container sees the checkout and the wheelhouse (read-only bind mounts).
SOURCE = "/src/edge-agent"
WHEELS = "/wheelhouse"
# A PATH for commands in the container (the caller's would name this machine's venv).
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
_BOOT_S = 60.0
_POWEROFF_S = 30.0


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
    """One booted container. Use as a context manager: it is powered off (or killed) at the
    end, however the block ends."""

    def __init__(self, root: Path, name: str, binds: Sequence[tuple[Path, str]] = ()) -> None:
        self.root = root
        self.name = name
        self.binds = list(binds)
        self.log = root.parent / f"{name}.nspawn.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    @classmethod
    def unpack(cls, tarball: Path, folder: Path, name: str, **kwargs: object) -> Container:
        root = folder / "root"
        root.mkdir(parents=True)
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-xf", str(tarball)],
            check=True,
            timeout=300,
        )
        return cls(root, name, **kwargs)  # type: ignore[arg-type]

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
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
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

    def _check_alive(self) -> None:
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"systemd-nspawn exited {self._nspawn.returncode}:\n{tail}")

    def _before(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


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
