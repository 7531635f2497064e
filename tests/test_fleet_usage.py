"""`edge-fleet` as operators use it, against a real Mosquitto, real in-process agents and the
shipped models: the broker from a profile or the environment, tables with round trips,
the known devices that stayed silent, a snapshot as a JPEG file, watch's topic and device,
golden sets made by `golden make` and accepted by the device, a failed push naming its step,
push as JSON lines and its health watch counted down on a terminal, and removing a model
version; each bad input refused in one line."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_agent.agent import Agent
from edge_agent.cli import main as agent_main
from edge_agent.fleet.cli import main
from tests.agent_helpers import start_agent
from tests.conftest import MODELS
from tests.mqtt_fixtures import OPERATOR, OPERATOR_PASSWORD, Broker, Probe
from tests.test_fleet_cli import (
    DEVICE,
    device_body,
    fleet,
    json_lines,
    no_fleet_profile,  # noqa: F401  (autouse: the operator's own settings stay out)
)
from tests.update_helpers import Keys, digits_update, golden_set

DIGITS = MODELS / "digits_int8.tflite"
SAMPLES = MODELS / "samples"


@pytest.fixture
def agent(tmp_path: Path, broker: Broker, keys: Keys) -> Iterator[Agent]:
    agent = start_agent(
        tmp_path, device_body(broker.port, keys.config()), groups=("lab",), online=True
    )
    yield agent
    agent.stop()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("edge-fleet: ") and err.count("\n") == 1, err
    return err


# Where the broker comes from ----------------------------------------------------------------


def test_no_broker_configured_names_every_place_it_looked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["devices"]) == 2
    err = one_line_error(capsys)
    profiles = tmp_path / "no-profiles.toml"
    for place in ("--broker", "$EDGE_FLEET_BROKER", f"profile 'default' in {profiles}"):
        assert place in err, err
    assert "no such file" in err


def test_broker_from_profile_then_env_then_flag(
    tmp_path: Path,
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profiles = tmp_path / "profiles.toml"
    monkeypatch.setenv("EDGE_FLEET_PROFILES", str(profiles))
    good, bad = f"{broker.host}:{broker.port}", "127.0.0.1:1"
    profiles.write_text(f'[default]\nbroker = "{good}"\n\n[lab]\nbroker = "{bad}"\n')
    assert main(["devices", "--timeout", "0.3"]) == 0
    assert "no device status" in capsys.readouterr().err  # connected: nobody online yet
    # A named profile, by flag or by environment.
    assert main(["devices", "--profile", "lab"]) == 2
    assert "127.0.0.1:1: cannot connect" in one_line_error(capsys)
    monkeypatch.setenv("EDGE_FLEET_PROFILE", "lab")
    assert main(["devices"]) == 2
    capsys.readouterr()
    # The environment over the profile, the flag over the environment.
    monkeypatch.setenv("EDGE_FLEET_BROKER", good)
    assert main(["devices", "--timeout", "0.3"]) == 0
    assert main(["devices", "--broker", bad]) == 2
    capsys.readouterr()
    assert main(["devices", "--profile", "nope"]) == 2
    assert f"--profile nope: no [nope] in {profiles} (profiles: default, lab)" in one_line_error(
        capsys
    )


def test_credentials_from_a_profile_and_a_readable_password_refused(
    tmp_path: Path,
    auth_broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profiles = tmp_path / "fleet" / "profiles.toml"
    profiles.parent.mkdir()
    monkeypatch.setenv("EDGE_FLEET_PROFILES", str(profiles))
    (profiles.parent / "ops.password").write_text(OPERATOR_PASSWORD + "\n")
    profiles.write_text(
        f'[default]\nbroker = "{auth_broker.host}:{auth_broker.port}"\n'
        f'username = "{OPERATOR}"\npassword_file = "ops.password"\n'  # beside the file
    )
    assert main(["devices", "--timeout", "0.3"]) == 0
    capsys.readouterr()
    profiles.write_text(
        f'[default]\nbroker = "{auth_broker.host}:{auth_broker.port}"\n'
        f'username = "{OPERATOR}"\npassword = "{OPERATOR_PASSWORD}"\n'
    )
    profiles.chmod(0o644)
    assert main(["devices"]) == 2
    assert "others may read the file; chmod 600" in one_line_error(capsys)
    profiles.chmod(0o600)
    assert main(["devices", "--timeout", "0.3"]) == 0
    capsys.readouterr()
    # The environment's password over the profile's: a wrong one is refused by the broker.
    monkeypatch.setenv("EDGE_FLEET_PASSWORD", "wrong")
    assert main(["devices"]) == 2
    assert "refused the connection" in one_line_error(capsys)


# Tables, silent devices, snapshot, watch ----------------------------------------------------


def test_cmd_prints_a_table_with_the_round_trip(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(broker, "cmd", "ping", "--device", DEVICE) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["DEVICE", "STATUS", "MS", "RESULT"]
    assert re.fullmatch(rf"{DEVICE}  ok      \d+\.\d +\{{.*\"pong\":true.*\}}", row), row


def test_cmd_all_and_group_name_the_known_devices_that_stayed_silent(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    with Probe(broker) as other:
        other.connect()
        # Devices known only by their retained status: one online in lab, one gone offline.
        other.publish("edge/ghost/status", b'{"state": "online", "groups": ["lab"]}', retain=True)
        other.publish("edge/gone/status", b'{"state": "offline"}', retain=True)
    assert fleet(broker, "cmd", "ping", "--all", "--timeout", "1") == 1
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert " ok " in rows[DEVICE], out
    assert "no reply" in rows["ghost"] and "device is online" in rows["ghost"], out
    assert "no reply" in rows["gone"] and "device is offline" in rows["gone"], out
    assert "no reply within 1 s from 2 device(s): ghost, gone" in err, err
    # A group: only the statuses that say they are in it count.
    assert fleet(broker, "cmd", "ping", "--group", "lab", "--timeout", "1") == 1
    out, err = capsys.readouterr()
    assert "from 1 device(s): ghost" in err and "gone" not in out, (out, err)


def test_cmd_all_ends_once_every_known_online_device_answered(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    started = time.monotonic()
    assert fleet(broker, "cmd", "ping", "--all", "--timeout", "30") == 0
    assert time.monotonic() - started < 10
    assert DEVICE in capsys.readouterr().out


def test_snapshot_writes_a_jpeg_file(
    tmp_path: Path, broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "snap.jpg"
    args = ["--device", DEVICE, "--source", "pattern", "--out", str(out)]
    assert fleet(broker, "snapshot", *args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{out}: ") and "JPEG" in printed, printed
    image = cv2.imread(str(out))
    assert image is not None and image.shape[2] == 3
    assert fleet(broker, "snapshot", *args[:4], "--out", str(tmp_path)) == 2
    assert "is a folder" in one_line_error(capsys)
    assert fleet(broker, "snapshot", *args[:2], "--source", "nope", "--out", str(out)) == 1
    assert "no running source 'nope'" in capsys.readouterr().out


def test_watch_prints_time_device_and_topic(
    broker: Broker, agent: Agent, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(broker, "watch", "--results", "--count", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line in lines:
        when, device, topic, payload = line.split("  ", 3)
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", when), line
        assert device == DEVICE and topic == f"edge/{DEVICE}/results/digits", line
        assert '"pipeline":"digits"' in payload and '"boot_id"' not in payload, line


# Golden sets ------------------------------------------------------------------------------


def test_golden_make_writes_a_set_the_device_accepts(
    tmp_path: Path, broker: Broker, agent: Agent, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    data = np.load(MODELS / "data" / "digits_test.npz")
    batch = tmp_path / "digits.npy"
    np.save(batch, data["x"][:20])  # float [20, 8, 8, 1]: quantized as the agent does
    golden = tmp_path / "golden.npz"
    images = [str(SAMPLES / f"digit_{n}.png") for n in (0, 3, 7)]
    assert main(["golden", "make", str(DIGITS), *images, str(batch), "-o", str(golden)]) == 0
    out = capsys.readouterr().out
    assert f"{golden}: 23 input(s) of [8, 8, 1] int8" in out, out
    for n in (0, 3, 7):
        assert re.search(rf"digit_{n}\.png +{n} +{n}$", out, re.M), out
    with np.load(golden) as made:
        assert made["inputs"].shape == (23, 8, 8, 1) and made["inputs"].dtype == np.int8
        assert made["expected"].shape == (23,)
    update = tmp_path / "update"
    pem = tmp_path / "keys" / f"{keys.key_id}.pem"
    sign = ["sign", str(DIGITS), "--name", "digits", "--version", "1.1.0", "--key", str(pem)]
    assert main([*sign, "--golden", str(golden), "--min-agreement", "1", "--out", str(update)]) == 0
    assert "golden set: 23 inputs, at least 100% must agree" in capsys.readouterr().out
    assert fleet(broker, "push", str(update), "--device", DEVICE) == 0
    out = capsys.readouterr().out
    assert "ok committed digits 1.1.0" in out and "golden 100.0% agree" in out, out


def test_a_golden_set_of_the_wrong_shape_is_refused_by_make_and_by_sign(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((4, 28, 28, 1), np.float32))
    golden = tmp_path / "golden.npz"
    assert main(["golden", "make", str(DIGITS), str(wrong), "-o", str(golden)]) == 2
    err = one_line_error(capsys)
    assert "shape [4, 28, 28, 1] does not fit: model digits_int8.tflite takes [8, 8, 1]" in err
    assert not golden.exists()
    np.savez(golden, inputs=np.zeros((4, 28, 28, 1), np.float32), expected=np.zeros(4, int))
    pem = tmp_path / "keys" / f"{keys.key_id}.pem"
    sign = ["sign", str(DIGITS), "--name", "digits", "--version", "1.1.0", "--key", str(pem)]
    out = tmp_path / "update"
    assert main([*sign, "--golden", str(golden), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "inputs are [4, 28, 28, 1], model digits_int8.tflite takes [8, 8, 1] int8" in err, err
    assert "(expected [N, 8, 8, 1])" in err
    assert not (out / "update.json").exists()
    # Right shape, wrong integer type: the device would cast it and get nonsense.
    np.savez(golden, inputs=np.zeros((4, 8, 8, 1), np.uint8), expected=np.zeros(4, int))
    assert main([*sign, "--golden", str(golden), "--out", str(out)]) == 2
    assert "inputs are uint8, model digits_int8.tflite takes [8, 8, 1] int8" in one_line_error(
        capsys
    )
    np.savez(golden, x=np.zeros((4, 8, 8, 1), np.int8))
    assert main([*sign, "--golden", str(golden), "--out", str(out)]) == 2
    assert "no array 'inputs' (has: x)" in one_line_error(capsys)


def test_golden_make_without_the_runtime_says_so_in_one_line(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "for name in ('cv2', 'ai_edge_litert', 'tflite_runtime'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "from edge_agent.fleet.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    args = ["golden", "make", str(DIGITS), str(SAMPLES / "digit_3.png"), "-o"]
    done = subprocess.run(
        [sys.executable, "-c", script, *args, str(tmp_path / "g.npz")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EDGE_FLEET_PROFILES": str(tmp_path / "none.toml")},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "golden make runs the model and needs the agent's runtime" in done.stderr


# Pushing: a failure names its step ------------------------------------------------------------


def test_a_push_refused_at_staging_names_the_step_and_the_reason(
    tmp_path: Path, broker: Broker, agent: Agent, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = golden_set(tmp_path / "golden", wrong=True)  # the right shape, wrong classes
    pem = tmp_path / "keys" / f"{keys.key_id}.pem"
    update = tmp_path / "update"
    sign = ["sign", str(DIGITS), "--name", "digits", "--version", "1.1.0", "--key", str(pem)]
    assert (
        main([*sign, "--golden", str(golden), "--min-agreement", "0.9", "--out", str(update)]) == 0
    )
    capsys.readouterr()
    assert fleet(broker, "push", str(update), "--device", DEVICE, "--timeout", "30") == 1
    out, err = capsys.readouterr()
    assert re.search(
        rf"^{DEVICE}: failed at staging: golden set agreement 0\.\d+ is under 0\.900$", out, re.M
    ), out
    assert "0%" not in err.splitlines()[-1], err


def signed_update(tmp_path: Path, keys: Keys, wrong_golden: bool = False) -> Path:
    """digits 1.1.0 signed by `edge-fleet sign` into a folder push serves."""
    golden = golden_set(tmp_path / "golden", wrong=wrong_golden)
    pem = tmp_path / "keys" / f"{keys.key_id}.pem"
    update = tmp_path / "update"
    sign = ["sign", str(DIGITS), "--name", "digits", "--version", "1.1.0", "--key", str(pem)]
    assert (
        main([*sign, "--golden", str(golden), "--min-agreement", "0.9", "--out", str(update)]) == 0
    )
    return update


def test_push_json_gives_each_progress_event_and_the_outcome_as_json_lines(
    tmp_path: Path, broker: Broker, agent: Agent, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    update = signed_update(tmp_path, keys)
    capsys.readouterr()
    assert fleet(broker, "push", str(update), "--device", DEVICE, "--json") == 0
    out, err = capsys.readouterr()
    assert err == "", err  # no progress drawn for people
    lines = json_lines(out)
    first, *progress, outcome = lines
    assert first["type"] == "push" and first["via"] == "mqtt", first
    assert (first["name"], first["version"]) == ("digits", "1.1.0")
    assert isinstance(first["bytes"], int) and first["bytes"] > 0
    assert {line["type"] for line in progress} == {"progress"}, progress
    assert all(line["device"] == DEVICE for line in progress)
    # The device's own events, as it sent them, in the order of its steps (its last ones
    # may come after its reply, which ends the push: they go through its outbox).
    stages = [line["stage"] for line in progress]
    assert stages[0] == "downloading", stages
    later = [stage for stage in stages if stage != "downloading"]
    assert later[:3] == ["installed", "staged", "activated"], stages
    staged = next(line for line in progress if line["stage"] == "staged")
    assert 0.9 <= staged["detail"]["golden_agreement"] <= 1.0, staged
    activated = next(line for line in progress if line["stage"] == "activated")
    assert activated["detail"]["health_window_s"] == 0.5, activated
    assert all(line["request_id"] == first["request_id"] for line in progress)
    assert outcome["type"] == "outcome" and outcome["device"] == DEVICE, outcome
    assert outcome["status"] == "ok" and outcome["state"] == "committed", outcome
    assert (outcome["name"], outcome["version"]) == ("digits", "1.1.0"), outcome
    assert outcome["stage"]["delegate"] == "cpu", outcome


def test_push_json_names_the_failed_step_and_the_reason(
    tmp_path: Path, broker: Broker, agent: Agent, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    update = signed_update(tmp_path, keys, wrong_golden=True)
    capsys.readouterr()
    code = fleet(broker, "push", str(update), "--device", DEVICE, "--json", "--timeout", "30")
    assert code == 1
    outcome = json_lines(capsys.readouterr().out)[-1]
    assert outcome["type"] == "outcome" and outcome["status"] == "failed", outcome
    assert outcome["step"] == "staging", outcome
    assert re.fullmatch(r"golden set agreement 0\.\d+ is under 0\.900", outcome["reason"])


def test_push_counts_the_health_watch_down_on_a_terminal(
    tmp_path: Path, broker: Broker, keys: Keys
) -> None:
    """On a terminal, the device's line is redrawn through its health watch (4 s here):
    `activated; health watch, N s left`, N going down to 0 as the device watches."""
    body = device_body(broker.port, keys.config()).replace(
        "health_window_s = 0.5", "health_window_s = 4"
    )
    agent = start_agent(tmp_path, body, groups=("lab",), online=True)
    try:
        update = signed_update(tmp_path, keys)
        leader, follower = pty.openpty()
        script = "import sys\nfrom edge_agent.fleet.cli import main\nsys.exit(main(sys.argv[1:]))"
        push = subprocess.Popen(
            [sys.executable, "-c", script, "push", str(update), "--device", DEVICE],
            env={
                **os.environ,
                "EDGE_FLEET_BROKER": f"{broker.host}:{broker.port}",
                "EDGE_FLEET_PROFILES": str(tmp_path / "none.toml"),
            },
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the push ended
                break
            if not chunk:
                break
            drawn += chunk
        out, _ = push.communicate(timeout=60)
        os.close(leader)
    finally:
        agent.stop()
    assert push.returncode == 0, (out, drawn)
    assert f"{DEVICE}: ok committed digits 1.1.0" in out, out
    left = [int(n) for n in re.findall(rb"activated; health watch, (\d+) s left", drawn)]
    assert left, drawn.decode(errors="replace")
    assert left[0] in (3, 4), left  # the window's length, as the device announced it
    assert left == sorted(left, reverse=True), left  # counting down
    assert min(left) <= 1 and len(set(left)) >= 3, left
    assert b"\x1b[" in drawn  # redrawn in place, not a line per redraw


# Removing a model version -------------------------------------------------------------------


def test_models_remove_refuses_the_active_version_and_the_rollback_target(
    tmp_path: Path, broker: Broker, agent: Agent, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    store = agent.store
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        manifest, folder = digits_update(tmp_path / "updates", keys, version)
        files: dict[str, Path] = {role: folder / ref.path for role, ref in manifest.files.items()}
        store.install(manifest, files)
    store.activate("digits", "1.1.0")
    store.commit("digits")
    store.activate("digits", "1.2.0")  # on trial; a rollback would go to 1.1.0
    at = ("--broker", f"{broker.host}:{broker.port}", "--device", DEVICE)
    remove = ["models", "remove", "digits"]
    assert main([*remove, "1.2.0", *at]) == 1
    assert "version '1.2.0' is active (trial)" in capsys.readouterr().out
    assert main([*remove, "1.1.0", *at]) == 1
    assert "is where a rollback from 1.2.0 goes" in capsys.readouterr().out
    assert main([*remove, "1.3.0", *at, "--json"]) == 0
    [reply] = json_lines(capsys.readouterr().out)
    assert reply["result"] == {
        "name": "digits",
        "removed": "1.3.0",
        "installed": ["1.1.0", "1.2.0"],
    }
    assert store.versions("digits") == ["1.1.0", "1.2.0"]
    assert main(["models", "list", *at]) == 0
    out = capsys.readouterr().out
    assert re.search(
        rf"^{DEVICE} +digits +1\.0\.0 +trial +1\.1\.0 +1\.1\.0, 1\.2\.0$", out, re.M
    ), out
    # The same on the device itself, through edge-agent models.
    config = ["--config", str(tmp_path / "agent.toml")]
    assert agent_main(["models", "remove", "digits", "1.2.0", *config]) == 2
    assert "is active (trial)" in capsys.readouterr().err
    store.commit("digits")
    store.activate("digits", "1.1.0")  # back: 1.2.0 is now the rollback target
    store.commit("digits")
    assert store.active("digits").previous == "1.2.0"  # type: ignore[union-attr]
    assert agent_main(["models", "remove", "digits", "1.2.0", *config]) == 2
    assert "where a rollback from 1.1.0 goes" in capsys.readouterr().err
    assert agent_main(["models", "remove", "digits", "9.9", *config]) == 2
    assert "version '9.9' is not installed (installed: 1.1.0, 1.2.0)" in capsys.readouterr().err
    manifest, folder = digits_update(tmp_path / "updates", keys, "1.4.0")
    newest: dict[str, Path] = {role: folder / ref.path for role, ref in manifest.files.items()}
    store.install(manifest, newest)
    assert agent_main(["models", "remove", "digits", "1.4.0", *config]) == 0
    assert capsys.readouterr().out == "digits: removed 1.4.0; installed: 1.1.0, 1.2.0\n"
