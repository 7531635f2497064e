"""What a client on the broker can and cannot do to a device through set_config, each case
as an abuse run found it: load a library, defeat the guard by letter case or by removing a
table, brick the device with a model that is not one, or move things that only take effect
at the next start without saying so. Nothing refused reaches the operator's file or the
remote overlay (remote.toml in the state directory)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

from edge_agent.agent import Agent
from edge_agent.errors import UserError
from edge_agent.runtime.manifest import load_manifest
from tests.agent_helpers import mqtt_table, pattern_pipeline, start_agent
from tests.conftest import MODELS, ROOT
from tests.mqtt_fixtures import Broker
from tests.operator import Operator

# A library whose constructor leaves a file behind: proof that it was dlopened at all.
CONSTRUCTOR_PROBE = r"""
#include <stdio.h>
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen(MARK, "w");
    if (f) { fputs("constructor ran", f); fclose(f); }
}
"""


def device_body(port: int, commands: str = "") -> str:
    """Config text: a detector pipeline, the broker on `port`, `commands` as [commands]."""
    body = pattern_pipeline("boxes", "detector") + mqtt_table(port)
    if commands:
        body += f"\n[commands]\n{commands}\n"
    return body


@pytest.fixture
def agent(tmp_path: Path, broker: Broker) -> Iterator[Agent]:
    agent = start_agent(tmp_path, device_body(broker.port), online=True)
    yield agent
    agent.stop()


def overlay(agent: Agent) -> Path:
    return agent.settings.device.state_dir / "remote.toml"


def refused(reply: dict[str, object], *words: str) -> bool:
    reason = str(reply.get("reason", ""))
    return reply["status"] == "error" and all(w in reason for w in words)


def test_a_remote_delegate_library_is_never_loaded(
    tmp_path: Path, agent: Agent, operator: Operator
) -> None:
    mark = tmp_path / "constructor-ran"
    source = tmp_path / "probe.c"
    source.write_text(CONSTRUCTOR_PROBE)
    library = tmp_path / "libprobe.so"
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc
    subprocess.run(
        [gcc, "-shared", "-fPIC", f'-DMARK="{mark}"', "-o", str(library), str(source)], check=True
    )
    assert agent.config_path is not None
    before = agent.config_path.read_text()
    reply = operator.call(
        "set_config",
        changes={"runtime": {"delegates": [{"name": "external", "library": str(library)}, "cpu"]}},
    )
    assert refused(reply, "runtime.delegates.*.library", str(library), "commands.remote_paths")
    assert not mark.exists()  # never dlopened
    assert agent.config_path.read_text() == before
    assert not overlay(agent).exists()
    # The same through a model's own chain.
    chain = [{"name": "external", "library": str(library)}]
    reply = operator.call("set_config", changes={"models": {"detector": {"delegates": chain}}})
    assert refused(reply, "models.*.delegates.*.library")
    assert not mark.exists()


def test_no_file_path_comes_from_the_network(agent: Agent, operator: Operator) -> None:
    assert agent.config_path is not None
    before = agent.config_path.read_text()
    attempts = {
        "models.*.path": {"models": {"detector": {"path": "/etc/passwd"}}},
        "output.jsonl": {"output": {"jsonl": "/tmp/elsewhere.jsonl"}},
        "sources.*.device": {"sources": {"cam": {"kind": "camera", "device": "/home/x.mp4"}}},
        "sources.*.path": {"sources": {"pics": {"kind": "image_dir", "path": "/etc"}}},
    }
    for key, changes in attempts.items():
        reply = operator.call("set_config", changes=changes)
        assert refused(reply, key, "commands.remote_paths"), (key, reply)
    moved = operator.call("set_config", changes={"device": {"state_dir": "/tmp/moved"}})
    assert refused(moved, "device.state_dir", "installed models")
    reset = operator.call("set_config", changes={"device": {"state_dir": None}})
    assert refused(reset, "device.state_dir")
    assert agent.config_path.read_text() == before
    assert not overlay(agent).exists()
    # A delegate named with its own default library is no path from the network.
    ok = operator.call("set_config", changes={"runtime": {"delegates": ["edgetpu", "cpu"]}})
    assert ok["status"] == "ok", ok
    [swapped] = [d for d in ok["result"]["applied"] if d.startswith("model detector")]
    # The reply says which delegate runs it and why the Edge TPU did not.
    assert "on cpu" in swapped and "edgetpu skipped" in swapped, swapped


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"COMMANDS": {"allow_remote_security_changes": True}}, ["COMMANDS", "lower case"]),
        ({"mqtt": None, "MQTT": {"host": "10.9.9.9", "port": 1884}}, ["MQTT", "lower case"]),
        ({"MQTT": {"host": "10.9.9.9"}}, ["MQTT", "lower case"]),
        ({"mqtt": {"enabled": False}}, ["mqtt.enabled"]),
        ({"mqtt": {"TOPIC_PREFIX": "x"}}, ["mqtt.TOPIC_PREFIX", "lower case"]),
        (
            {"commands": {"remote_keys": ["*"]}},
            ["commands.remote_keys", "never set remotely", "device's own file"],
        ),
        ({"commands": {"remote_paths": None}}, ["commands.remote_paths", "never set remotely"]),
    ],
)
def test_the_guard_holds_against_letter_case_and_removed_tables(
    agent: Agent, operator: Operator, changes: dict[str, object], words: list[str]
) -> None:
    assert agent.config_path is not None
    before = agent.config_path.read_text()
    reply = operator.call("set_config", changes=changes)
    assert refused(reply, *words), reply
    assert agent.config_path.read_text() == before
    assert not overlay(agent).exists()
    # The guard still stands afterwards.
    keys = operator.call("set_config", changes={"updates": {"trusted_keys": {"x": "AAAA"}}})
    assert refused(keys, "updates.trusted_keys")


def test_a_null_table_takes_back_remote_changes_only(agent: Agent, operator: Operator) -> None:
    """null removes from the overlay; the operator's own tables cannot be removed remotely."""
    assert agent.config_path is not None
    before = agent.config_path.read_text()
    changed = operator.call("set_config", changes={"pipelines": {"boxes": {"queue_size": 6}}})
    assert changed["status"] == "ok", changed
    for table in ("mqtt", "updates", "pipelines"):
        reply = operator.call("set_config", changes={table: None})
        assert reply["status"] == "ok", reply
    assert agent.config_path.read_text() == before
    assert agent.settings.mqtt.enabled and agent.settings.mqtt.host == "127.0.0.1"
    assert agent.settings.pipelines["boxes"].queue_size == 2  # the operator's value again
    assert not overlay(agent).exists()  # nothing left in it
    assert operator.call("ping")["status"] == "ok"


def test_a_model_that_does_not_load_is_refused_and_not_kept(
    tmp_path: Path, broker: Broker, operator: Operator
) -> None:
    # Even where the operator allowed remote model paths, the change must prove itself.
    body = device_body(broker.port, 'remote_paths = ["models.*.path"]')
    agent = start_agent(tmp_path, body, online=True)
    try:
        assert agent.config_path is not None
        before = agent.config_path.read_text()
        changes = {
            "models": {"evil": {"path": "/etc/passwd"}},
            "sources": {"other": {"kind": "synthetic", "fps": 5}},
            "pipelines": {"evil": {"source": "other", "model": "evil"}},
        }
        reply = operator.call("set_config", changes=changes)
        assert refused(reply, "not applied", "/etc/passwd", "not a TFLite model"), reply
        assert agent.config_path.read_text() == before  # not kept
        assert not overlay(agent).exists()
        assert not overlay(agent).with_name(".remote.toml.new").exists()
        assert "evil" not in agent.pipelines and "evil" not in agent.settings.models
        assert operator.call("ping")["status"] == "ok"
        # An allowed path to a real model is taken.
        good = {"models": {"evil": {"path": str(MODELS / "digits_int8.tflite")}}}
        ok = operator.call("set_config", changes={**changes, **good})
        assert ok["status"] == "ok", ok
        assert "pipeline evil started" in ok["result"]["applied"]
        assert agent.config_path.read_text() == before
        saved = tomllib.loads(overlay(agent).read_text())
        assert saved["models"]["evil"]["path"] == str(MODELS / "digits_int8.tflite")
    finally:
        agent.stop()


def test_a_change_read_only_at_start_says_so(
    tmp_path: Path, broker: Broker, operator: Operator
) -> None:
    body = device_body(broker.port, 'remote_paths = ["output.jsonl"]')
    agent = start_agent(tmp_path, body, online=True)
    try:
        copy = tmp_path / "copy.jsonl"
        reply = operator.call(
            "set_config", changes={"output": {"jsonl": str(copy)}, "telemetry": {"interval_s": 5}}
        )
        assert reply["status"] == "ok", reply
        assert reply["result"]["restart_required"] == ["output.jsonl"]
        outbox = operator.call("set_config", changes={"outbox": {"commit_interval_ms": 5}})
        assert outbox["result"]["restart_required"] == ["outbox.commit_interval_ms"]
    finally:
        agent.stop()


def test_a_start_that_cannot_load_a_model_exits_78_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[device]
id = "brick"
state_dir = "{tmp_path / "state"}"

[models.bad]
path = "/etc/passwd"

[sources.s]
kind = "synthetic"

[pipelines.p]
source = "s"
model = "bad"

[mqtt]
enabled = true
port = 1
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 78, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "/etc/passwd: not a TFLite model" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "field, value", [("labels", "/etc/passwd"), ("labels", "../../etc/passwd"), ("cpu_twin", "/x")]
)
def test_a_model_manifest_names_files_beside_it_only(
    tmp_path: Path, field: str, value: str
) -> None:
    """A manifest arrives with a signed update: it must not point the agent at other files."""
    model = tmp_path / "digits.tflite"
    shutil.copy(MODELS / "digits_int8.tflite", model)
    manifest = json.loads((MODELS / "digits_int8.json").read_text())
    manifest[field] = value
    (tmp_path / "digits.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=field):
        load_manifest(model)
