"""`edge-fleet`, the operator's command line, against a real Mosquitto and a real in-process
agent: a key made, an update signed and pushed over MQTT chunks and over HTTP until the
device commits it, commands to a device and a group (signed ones too), the devices' status
table, and the live watch."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.fleet.cli import main
from tests.agent_helpers import mqtt_table, pattern_pipeline, start_agent
from tests.conftest import MODELS
from tests.mqtt_fixtures import Broker
from tests.update_helpers import Keys, golden_set

DEVICE = "test-device"
BODY = """
{extra}
{trust}health_window_s = 0.5
max_model_bytes = 2000000
"""


def device_body(port: int, trust: str, extra: str = "") -> str:
    """Config text: a digits pipeline, the broker on `port`; `trust` is the [updates] table
    with its trusted_keys line. The tests start it in group `lab`."""
    body = pattern_pipeline("digits", "digits") + mqtt_table(port)
    return body + BODY.format(extra=extra, trust=trust)


@pytest.fixture
def agent(tmp_path: Path, broker: Broker, keys: Keys) -> Iterator[Agent]:
    agent = start_agent(
        tmp_path, device_body(broker.port, keys.config()), groups=("lab",), online=True
    )
    yield agent
    agent.stop()


@pytest.fixture(autouse=True)
def no_fleet_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's own environment and profiles file stay out of the tests."""
    for name in list(os.environ):
        if name.startswith("EDGE_FLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("EDGE_FLEET_PROFILES", str(tmp_path / "no-profiles.toml"))


def fleet(broker: Broker, *args: str) -> int:
    """Runs `edge-fleet ARGS` with the broker options filled in after the subcommand."""
    return main([args[0], "--broker", f"{broker.host}:{broker.port}", *args[1:]])


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def running_version(agent: Agent) -> str:
    return agent.workers["digits"].model.info.version


def sign_update(tmp_path: Path, key: Path, version: str = "1.1.0") -> Path:
    out = tmp_path / f"update-{version}"
    golden = golden_set(tmp_path / "golden")
    code = main(
        [
            *("sign", str(MODELS / "digits_int8.tflite"), "--name", "digits", "--version", version),
            *("--key", str(key), "--golden", str(golden), "--min-agreement", "0.9"),
            *("--out", str(out)),
        ]
    )
    assert code == 0
    return out


def test_keygen_sign_and_push_over_mqtt_until_the_device_commits(
    tmp_path: Path, broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys"), "--key-id", "ops-2026"]) == 0
    printed = capsys.readouterr().out
    pem = tmp_path / "keys" / "ops-2026.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    trust = re.search(r'^trusted_keys = \{ ops-2026 = "[A-Za-z0-9+/=]{44}" \}$', printed, re.M)
    assert trust is not None, printed
    # The printed line, pasted into a device's config, is what makes it trust the key.
    body = device_body(broker.port, f"[updates]\n{trust[0]}\n")
    agent = start_agent(tmp_path, body, groups=("lab",), online=True)
    try:
        folder = sign_update(tmp_path, pem)
        signed = json.loads((folder / "update.json").read_text())
        assert signed["signature"]["key_id"] == "ops-2026" and "source" not in signed
        assert "signed digits 1.1.0 with key ops-2026" in capsys.readouterr().out
        code = fleet(broker, "push", str(folder), "--device", DEVICE, "--chunk-size", "4096")
        out, err = capsys.readouterr()
        assert code == 0, (out, err)
        done, staged = out.strip().splitlines()[-2:]
        assert done == f"{DEVICE}: ok committed digits 1.1.0", out
        # The staging figures, from the device's own check: golden agreement and latency.
        assert re.fullmatch(
            r"  staged on cpu: golden \d+\.\d% agree, [\d.]+ ms per inference "
            r"\(running [\d.]+ ms\)",
            staged,
        ), out
        assert "100%" in err and "downloading" in err and DEVICE in err, err
        assert "health watch" in err and "failed" not in err, err
        assert running_version(agent) == "1.1.0"
        record = agent.store.active("digits")
        assert record is not None and record.state == "committed"
    finally:
        agent.stop()


def test_push_over_http_commits_and_a_second_push_finds_it_active(
    tmp_path: Path, broker: Broker, agent: Agent, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = sign_update(tmp_path, tmp_path / "keys" / f"{keys.key_id}.pem", "1.2.0")
    capsys.readouterr()
    assert fleet(broker, "push", str(folder), "--device", DEVICE, "--via", "http") == 0
    out, err = capsys.readouterr()
    assert f"{DEVICE}: ok committed digits 1.2.0" in out, (out, err)
    assert "over http" in err and "100%" in err
    assert running_version(agent) == "1.2.0"
    # Pushed to the group this time: the device answers, already running it.
    assert fleet(broker, "push", str(folder), "--group", "lab", "--wait-for", "1") == 0
    assert f"{DEVICE}: ok already_active digits 1.2.0" in capsys.readouterr().out


def test_a_push_the_device_refuses_exits_1_with_its_reason(
    tmp_path: Path, broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path / "other")]) == 0  # a key the device lacks
    folder = sign_update(tmp_path, tmp_path / "other" / "ops.pem")
    capsys.readouterr()
    assert fleet(broker, "push", str(folder), "--device", DEVICE, "--timeout", "20") == 1
    out = capsys.readouterr().out
    assert f"{DEVICE}: failed at verify: bad signature" in out, out
    assert running_version(agent) == "1.0.0"


def test_cmd_ping_to_a_device_and_to_its_group(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(broker, "cmd", "ping", "--device", DEVICE, "--json") == 0
    [reply] = json_lines(capsys.readouterr().out)
    assert reply["status"] == "ok" and reply["device"] == DEVICE
    assert reply["result"] == {"pong": True, "boot_id": agent.envelope.boot_id}
    code = fleet(
        broker, "cmd", "ping", "--group", "lab", "--timeout", "5", "--wait-for", "1", "--json"
    )
    assert code == 0
    [reply] = json_lines(capsys.readouterr().out)
    assert reply["status"] == "ok" and reply["device"] == DEVICE
    # Over MQTT 3.1.1 there is no response topic: the reply comes on the reply topic.
    assert fleet(broker, "cmd", "ping", "--device", DEVICE, "--mqtt", "3.1.1", "--json") == 0
    assert json_lines(capsys.readouterr().out)[0]["status"] == "ok"


def test_cmd_with_a_bad_argument_gets_an_error_reply_and_exit_1(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    code = fleet(
        broker, "cmd", "set_log_level", "--device", DEVICE, "--arg", "level=loud", "--json"
    )
    assert code == 1
    [reply] = json_lines(capsys.readouterr().out)
    assert reply["status"] == "error" and "level" in str(reply["reason"]), reply
    # --arg values are JSON when they parse: a number here, and the device takes it.
    code = fleet(broker, "cmd", "pause", "--device", DEVICE, "--body", '{"pipeline": "digits"}')
    assert code == 0 and agent.pipelines["digits"].paused.is_set()
    assert fleet(broker, "cmd", "resume", "--device", DEVICE, "--arg", "pipeline=digits") == 0
    assert not agent.pipelines["digits"].paused.is_set()


def test_no_reply_from_an_absent_device_exits_1(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(broker, "cmd", "ping", "--device", "nobody", "--timeout", "0.5") == 1
    out, err = capsys.readouterr()
    assert "no reply within 0.5 s from 1 device(s): nobody" in err, err
    assert out.split() == ["DEVICE", "STATUS", "MS", "RESULT", "nobody", "no", "reply", "-", "-"]


def test_a_signed_cmd_is_accepted_where_commands_must_be_signed(
    tmp_path: Path, broker: Broker, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    body = device_body(broker.port, keys.config(), extra="[commands]\nrequire_signed = true\n")
    agent = start_agent(tmp_path, body, groups=("lab",), online=True)
    try:
        assert fleet(broker, "cmd", "ping", "--device", DEVICE, "--json") == 1
        [refused] = json_lines(capsys.readouterr().out)
        assert "unsigned command refused" in str(refused["reason"])
        pem = tmp_path / "keys" / f"{keys.key_id}.pem"
        args = ["--sign-key", str(pem), "--expires-in", "60"]
        assert fleet(broker, "cmd", "ping", "--device", DEVICE, *args, "--json") == 0
        [reply] = json_lines(capsys.readouterr().out)
        assert reply["status"] == "ok", reply
    finally:
        agent.stop()


def test_devices_lists_the_device_with_its_model_versions(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(broker, "devices", "--timeout", "3") == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["DEVICE", "STATE", "BOOT"]
    [row] = [r for r in rows if r.startswith(DEVICE)]
    assert "online" in row and "digits=1.0.0@" in row, row
    assert fleet(broker, "devices", "--json") == 0
    [status] = json_lines(capsys.readouterr().out)
    assert status["device"] == DEVICE and status["state"] == "online"
    assert status["models"]["digits"]["version"] == "1.0.0"  # type: ignore[index]


def test_watch_prints_results_as_json_lines_and_stops_after_count(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(broker, "watch", "--device", DEVICE, "--results", "--count", "3", "--json") == 0
    lines = json_lines(capsys.readouterr().out)
    assert len(lines) == 3
    assert all(line["schema"] == "edge-agent/result/1" for line in lines)
    assert len({line["id"] for line in lines}) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cmd", "ping", "--device", DEVICE, "--arg", "novalue"], "expected KEY=VALUE"),
        (["cmd", "ping", "--all", "--body", "[1]"], "--body: must be a JSON object"),
        (["cmd", "ping", "--device", "a/b"], "must be one topic level"),
        (["cmd", "ping", "--all", "--broker", "127.0.0.1:1"], "cannot connect"),
        (["push", "/nonexistent", "--all"], "cannot read"),
        (
            ["sign", "/no.tflite", "--name", "d", "--version", "1", "--key", "k", "--out", "o"],
            "no such model file",
        ),
        (
            ["sign", "x.tflite", "--name", "d", "--version", "1 0", "--key", "k", "--out", "o"],
            "--version '1 0'",
        ),
    ],
)
def test_user_errors_print_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-fleet: ") and message in err and err.count("\n") == 1, err


def test_keygen_refuses_to_overwrite_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keygen", "--out", str(tmp_path)]) == 0
    before = (tmp_path / "ops.pem").read_bytes()
    assert main(["keygen", "--out", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "ops.pem").read_bytes() == before


def test_broker_credentials_from_a_password_file(
    tmp_path: Path, auth_broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.mqtt_fixtures import OPERATOR, OPERATOR_PASSWORD

    secret = tmp_path / "password"
    secret.write_text(OPERATOR_PASSWORD + "\n")
    login = ["--username", OPERATOR, "--password-file", str(secret), "--timeout", "0.3"]
    assert fleet(auth_broker, "devices", *login) == 0
    assert "no device status" in capsys.readouterr().err  # connected: nobody online yet
    secret.write_text("wrong\n")
    assert fleet(auth_broker, "devices", *login) == 2
    err = capsys.readouterr().err
    assert "refused the connection" in err and err.count("\n") == 1, err
