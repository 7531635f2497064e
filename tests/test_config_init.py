"""`edge-agent config init [PATH]`: the packaged default config written where `run` finds it,
its paths absolute, never over an existing file without --force; and what `run` says when
there is no config anywhere."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import load, packaged
from edge_agent.config.load import load_settings
from edge_agent.config.settings import AgentSettings
from edge_agent.data import DEFAULT_CONFIG, MODELS
from tests.conftest import run_cli
from tests.waiting import wait_until


def init(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("config", "init", *args)


def test_writes_the_documented_default_with_paths_that_work_from_where_it_is(
    tmp_path: Path,
) -> None:
    path = tmp_path / "etc" / "agent.toml"
    state = tmp_path / "state"
    done = init(str(path), "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}\n"
    text = path.read_text()
    # Every section of the packaged file is still there, as a table or a commented example.
    for section in AgentSettings.model_fields:
        assert f"[{section}" in text or f"# [{section}" in text, section
    assert '"../' not in "".join(line.split("#", 1)[0] for line in text.splitlines())
    settings = load_settings(path)
    assert settings.device.state_dir == state
    assert {m.path for m in settings.models.values()} == {MODELS / "detector_int8.tflite"}
    assert list(settings.pipelines) == ["boxes"]
    assert settings.output.jsonl is None  # the outbox keeps the results
    # The models the package does not ship are named, not silently dropped.
    assert "models.mobilenet, pipelines.classify" in text


def test_refuses_an_existing_file_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("# mine\n")
    done = init(str(path))
    assert done.returncode == 2
    assert done.stderr == f"edge-agent: {path}: exists; --force replaces it\n"
    assert path.read_text() == "# mine\n"
    assert [p.name for p in tmp_path.iterdir()] == ["agent.toml"]  # no temporary left

    done = init(str(path), "--force", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr
    assert path.read_text().startswith("# Written by `edge-agent config init`")


def test_a_folder_or_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    done = init(str(tmp_path))
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert "is a folder" in done.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = init(str(blocker / "agent.toml"))
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert f"{blocker / 'agent.toml'}: cannot write" in done.stderr


def test_the_written_config_runs_from_anywhere_and_stops_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "agent.toml"
    state = tmp_path / "state"
    assert init(str(path), "--state-dir", str(state)).returncode == 0
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=elsewhere,
    )
    log: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        log.extend(line.rstrip() for line in proc.stderr)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: any("boxes:" in line and " 0 results" not in line for line in log),
            timeout=30,
            what="a status line with results",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    reader.join(timeout=5)
    assert code == 0, "\n".join(log)
    assert (state / "outbox.db").is_file()
    stats = run_cli("results", "stats", "--config", str(path), "--json")
    assert stats.returncode == 0 and '"count": ' in stats.stdout, stats.stderr


@pytest.fixture
def no_config_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with no checkout config, no /etc file, and a user with no config."""
    monkeypatch.setattr(load, "CHECKOUT_CONFIG", tmp_path / "checkout" / "agent.toml")
    monkeypatch.setattr(load, "INSTALLED_CONFIG", tmp_path / "etc" / "agent.toml")
    monkeypatch.setattr(packaged, "is_root", lambda: False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home-state"))
    monkeypatch.delenv("EDGE_AGENT_CONFIG", raising=False)
    return tmp_path


def test_run_with_no_config_says_where_it_looked_and_how_to_make_one(
    no_config_anywhere: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["run"]) == 78
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    user = no_config_anywhere / "home-config" / "edge-agent" / "agent.toml"
    assert f"no config file ({user} or {no_config_anywhere / 'etc' / 'agent.toml'})" in err[0]
    assert "edge-agent config init" in err[0]


def test_init_writes_where_run_looks(
    no_config_anywhere: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "init"]) == 0
    user = no_config_anywhere / "home-config" / "edge-agent" / "agent.toml"
    assert capfd.readouterr().out == f"{user}\n"
    assert load.default_config_path() == user
    settings = load_settings(user)
    assert settings.device.state_dir == no_config_anywhere / "home-state" / "edge-agent"


def test_root_writes_and_keeps_state_in_the_system_places(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged, "is_root", lambda: True)
    assert packaged.default_init_path() == Path("/etc/edge-agent/agent.toml")
    assert packaged.default_state_dir() == Path("/var/lib/edge-agent")
    assert packaged.user_config() not in load.config_candidates()


def test_the_package_data_is_the_checkout_files_not_copies() -> None:
    root = Path(__file__).resolve().parents[1]
    assert DEFAULT_CONFIG.resolve() == root / "configs" / "agent.toml"
    assert (MODELS / "detector_int8.tflite").resolve() == root / "models" / "detector_int8.tflite"
    assert os.path.islink(DEFAULT_CONFIG.parent)
