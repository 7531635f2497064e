"""`edge-agent run` as a process: start-up, live reload through the file and SIGHUP, bad
edits, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.agent_helpers import config_text
from tests.conftest import ROOT, run_cli
from tests.waiting import wait_until

BODY = """
[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = {fps}

[pipelines.boxes]
source = "pattern"
model = "detector"
decode = {{ score_threshold = {threshold} }}

[output]
jsonl = "{results}"

[logging]
status_interval_s = 0.5
"""


class AgentProcess:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.log: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def saw(self, fragment: str) -> bool:
        return any(fragment in line for line in list(self.log))

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=10)
        return code, time.monotonic() - started


def write_config(path: Path, tmp_path: Path, fps: int = 20, threshold: float = 0.5) -> Path:
    body = BODY.format(fps=fps, threshold=threshold, results=tmp_path / "results.jsonl")
    text = config_text(tmp_path / "state", body)
    # Replace the file the way editors do: write elsewhere, then rename over it.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def results(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "results.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_runs_reloads_on_edit_and_sighup_keeps_running_on_a_bad_edit_and_stops_cleanly(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path)
    agent = AgentProcess(config)
    try:
        wait_until(lambda: len(results(tmp_path)) > 5, timeout=20, what="first results")
        wait_until(lambda: agent.saw("boxes: "), what="a status line")

        # A valid edit: the threshold changes in place.
        write_config(config, tmp_path, threshold=0.95)
        wait_until(lambda: agent.saw("pipeline boxes settings applied"), what="reload")

        # An invalid edit: reported, the old settings keep running.
        config.write_text(config.read_text().replace("fps = 20", "fps = -3"))
        wait_until(lambda: agent.saw("old settings kept"), what="bad edit reported")
        assert agent.saw("sources.pattern.synthetic.fps")
        count = len(results(tmp_path))
        wait_until(lambda: len(results(tmp_path)) > count + 5, what="results after bad edit")

        # SIGHUP after fixing the file.
        write_config(config, tmp_path, threshold=0.95, fps=25)
        agent.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: agent.saw("source pattern restarted"), what="reload on SIGHUP")
    finally:
        code, took = agent.stop()
    assert code == 0, "\n".join(agent.log)
    assert took < 5
    # Everything produced was flushed: ids unique, sequence without holes.
    final = results(tmp_path)
    seqs = [r["seq"] for r in final]
    assert seqs == list(range(1, len(final) + 1))
    assert agent.saw("stopping (SIGTERM)")


def test_invalid_config_at_start_exits_78_with_each_problem(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        config_text(tmp_path, BODY.format(fps=0, threshold=2, results=tmp_path / "r.jsonl"))
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # EX_CONFIG: the unit's RestartPreventExitStatus= keeps systemd from looping on it.
    assert proc.returncode == 78
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    assert "sources.pattern.synthetic.fps" in proc.stderr
    assert "pipelines.boxes.decode.score_threshold" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_tls_file_exits_78_with_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    body = BODY.format(fps=5, threshold=0.5, results=tmp_path / "r.jsonl")
    missing = tmp_path / "nowhere" / "ca.pem"
    mqtt = f'[mqtt]\nenabled = true\nport = 1\n[mqtt.tls]\nca_file = "{missing}"\n'
    config.write_text(config_text(tmp_path, body) + mqtt)
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 78, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert errors == [errors[0]] and f"mqtt.tls.ca_file: {missing}: not found" in errors[0]
    assert "Traceback" not in proc.stderr


def test_results_land_in_the_outbox_and_the_results_command_reads_them_live(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "agent.toml", tmp_path)
    agent = AgentProcess(config)

    def results_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("results", *args, "--config", str(config))

    try:
        wait_until(lambda: len(results(tmp_path)) > 10, timeout=20, what="results")
        stats = results_cli("stats", "--json")
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["result"]["pending"]["count"] > 0
        tail = results_cli("tail", "-n", "3", "--json")
        last = [json.loads(line) for line in tail.stdout.splitlines()]
        assert len(last) == 3 and [r["seq"] for r in last] == sorted(r["seq"] for r in last)
    finally:
        code, _ = agent.stop()
    assert code == 0
    # Every result the JSON-lines copy saw is in the outbox, by id.
    export = results_cli("export", "--since", "1h")
    stored = {json.loads(line)["id"] for line in export.stdout.splitlines()}
    assert {r["id"] for r in results(tmp_path)} <= stored
    bad = results_cli("export", "--since", "soon")
    assert bad.returncode == 2 and "--since 'soon': not a time" in bad.stderr
