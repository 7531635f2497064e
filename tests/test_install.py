"""scripts/install.sh, run for real into a throwaway root (`--root tmp_path`): the tree it
lays down, the enable symlink, a second run that changes nothing, an edited config that
survives, uninstall and purge, and the installed unit passing `systemd-analyze verify`.

No pip and no network: the venv is the one running these tests (`--venv-from`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config.load import load_settings

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "scripts" / "install.sh"
UNIT = "etc/systemd/system/edge-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/edge-agent.service"
CONFIG = "etc/edge-agent/agent.toml"
STATE = "var/lib/edge-agent"
OPT = "opt/edge-agent"
VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or shutil.which("bash") is None, reason="install.sh is for Linux"
)


def install(root: Path, *args: str, venv: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(INSTALL), "--root", str(root), *args]
    if "--uninstall" not in args:
        argv += ["--venv-from", str(VENV)] if venv else ["--no-venv"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under root: kind, mode, owner, content (hash or link target) and mtime."""
    found: dict[str, tuple[object, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = None
            found[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                content,
                st.st_mtime_ns,
            )
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with the account files a Debian system has, so useradd --root can work."""
    etc = tmp_path / "root" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\nvideo:x:44:\nplugdev:x:46:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\nvideo:*::\nplugdev:*::\n")
    (etc / "shadow").chmod(0o600)
    (etc / "gshadow").chmod(0o600)
    return tmp_path / "root"


def test_fresh_install_lays_down_the_tree(root: Path) -> None:
    out = install(root).stdout
    assert "installed /etc/systemd/system/edge-agent.service" in out
    assert "enabled edge-agent.service" in out

    unit = root / UNIT
    assert unit.read_bytes() == (REPO / "systemd" / "edge-agent.service").read_bytes()
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    wants = root / WANTS
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edge-agent.service"

    venv = root / OPT / "venv"
    assert venv.is_symlink() and venv.resolve() == VENV.resolve()
    assert (venv / "bin" / "edge-agent").is_file()
    src = root / OPT / "src"
    assert (src / "pyproject.toml").read_bytes() == (REPO / "pyproject.toml").read_bytes()
    assert (src / "edge_agent" / "agent.py").is_file()
    assert not list(src.rglob("__pycache__"))
    shipped = {p.name for p in (REPO / "models").iterdir() if p.is_file()}
    assert {p.name for p in (root / OPT / "models").iterdir()} == shipped

    assert stat.S_IMODE((root / "etc/edge-agent").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "etc/edge-agent/credentials").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / STATE).stat().st_mode) == 0o750
    if os.geteuid() == 0 and shutil.which("useradd"):
        entry = next(
            line.split(":")
            for line in (root / "etc/passwd").read_text().splitlines()
            if line.startswith("edge-agent:")
        )
        uid, gid = int(entry[2]), int(entry[3])
        assert entry[6] == "/usr/sbin/nologin"
        assert (root / STATE).stat().st_uid == uid
        assert (root / "etc/edge-agent").stat().st_gid == gid
        assert (root / "etc/edge-agent").stat().st_uid == 0
        assert (root / "etc/edge-agent/credentials").stat().st_gid == 0


def test_installed_config_points_at_the_installed_models(root: Path) -> None:
    install(root)
    text = (root / CONFIG).read_text()
    assert '"../' not in text
    assert 'state_dir = "/var/lib/edge-agent"' in text
    # The config with the root in front of its device paths loads, and every model exists.
    local = root.parent / "agent-local.toml"
    local.write_text(
        text.replace('"/opt/edge-agent/', f'"{root}/opt/edge-agent/').replace(
            '"/var/lib/edge-agent', f'"{root}/var/lib/edge-agent'
        )
    )
    settings = load_settings(local)
    assert settings.models
    for model in settings.models.values():
        assert model.path.is_file(), model.path
        assert model.path.is_relative_to(root / OPT / "models")
    assert settings.device.state_dir == root / STATE
    assert settings.output.jsonl is None


def test_second_run_changes_nothing_and_keeps_an_edited_config(root: Path) -> None:
    install(root)
    config = root / CONFIG
    edited = config.read_bytes().replace(b'level = "info"', b'level = "debug"') + (
        b"\n# edited on the device\n"
    )
    config.write_bytes(edited)
    before = snapshot(root)

    again = install(root)

    assert again.stdout.strip().splitlines()[-1] == "install.sh: no changes"
    assert not [line for line in again.stdout.splitlines() if line.startswith("  ")]
    assert config.read_bytes() == edited
    assert snapshot(root) == before


def test_a_changed_checkout_updates_only_what_changed(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "checkout"
    source.mkdir()
    for item in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / item, source / item)
    for item in ("edge_agent", "configs", "docs", "models", "systemd"):
        shutil.copytree(
            REPO / item, source / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    install(root, "--source", str(source))
    config = (root / CONFIG).read_bytes()
    unit = source / "systemd" / "edge-agent.service"
    unit.write_text(unit.read_text().replace("RestartSec=5", "RestartSec=7"))
    (source / "models" / "detector_int8.json").unlink()

    out = install(root, "--source", str(source)).stdout

    changed = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert changed == [
        "removed /opt/edge-agent/models/detector_int8.json",
        "updated /etc/systemd/system/edge-agent.service",
    ]
    assert "RestartSec=7" in (root / UNIT).read_text()
    assert (root / CONFIG).read_bytes() == config


def test_uninstall_keeps_config_and_state_and_purge_removes_them(root: Path) -> None:
    install(root)
    config = root / CONFIG
    config.write_text(config.read_text() + "# mine\n")
    (root / STATE / "outbox.db").write_bytes(b"results")

    out = install(root, "--uninstall").stdout

    assert "removed /etc/systemd/system/edge-agent.service" in out
    assert not (root / UNIT).exists()
    assert not (root / WANTS).is_symlink()
    assert not (root / OPT).exists()
    assert config.read_text().endswith("# mine\n")
    assert (root / STATE / "outbox.db").read_bytes() == b"results"
    assert install(root, "--uninstall").stdout.strip().endswith("install.sh: no changes")

    install(root, "--uninstall", "--purge")

    assert not (root / "etc/edge-agent").exists()
    assert not (root / STATE).exists()
    assert "edge-agent:" not in (root / "etc/passwd").read_text()
    assert install(root, "--uninstall", "--purge").stdout.strip().endswith("install.sh: no changes")


def test_no_venv_and_reinstall_after_uninstall(root: Path) -> None:
    install(root, venv=False)
    assert not (root / OPT / "venv").exists()
    install(root, "--uninstall")
    install(root)
    assert (root / WANTS).is_symlink()
    assert (root / OPT / "venv" / "bin" / "edge-agent").is_file()


def test_purge_is_refused_without_uninstall(root: Path) -> None:
    done = subprocess.run(
        [str(INSTALL), "--root", str(root), "--purge"], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "--purge goes with --uninstall" in done.stderr
    assert not (root / OPT).exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_installed_unit_passes_systemd_analyze_verify(root: Path) -> None:
    install(root)
    unit = root / UNIT
    # verify wants ExecStart=/opt/edge-agent/venv/bin/edge-agent to exist: the root's /opt is
    # bind-mounted on /opt in a private mount namespace (nothing changes outside it).
    userns = [] if os.geteuid() == 0 else ["-r"]
    probe = subprocess.run(["unshare", *userns, "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0 or not Path("/opt").is_dir():
        pytest.skip("no private mount namespace here; scripts/check_unit.sh has a fallback")
    script = 'mount --bind "$1/opt" /opt && exec systemd-analyze verify "$2"'
    done = subprocess.run(
        ["unshare", *userns, "-m", "sh", "-c", script, "sh", str(root), str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout + done.stderr == ""
