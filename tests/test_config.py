"""Settings: every field documented, unknown keys refused, problems named by key and line,
environment overrides, and `edge-agent config validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from edge_agent.config.load import ConfigError, load_settings
from edge_agent.config.settings import AgentSettings
from edge_agent.sources import CONFIGS
from tests.agent_helpers import config_text
from tests.conftest import ROOT, run_cli

SOURCE = """
[sources.pattern]
kind = "synthetic"
fps = 20

[pipelines.boxes]
source = "pattern"
model = "detector"
"""


def all_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            for inner in [arg, *getattr(arg, "__args__", ())]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    all_models(inner, seen)


def test_every_setting_has_a_description() -> None:
    seen: set[type[BaseModel]] = set()
    all_models(AgentSettings, seen)
    for config in CONFIGS.values():
        all_models(config, seen)
    assert len(seen) > 15
    missing = [
        f"{model.__name__}.{name}"
        for model in seen
        for name, field in model.model_fields.items()
        if not field.description and name not in ("kind", "name")
    ]
    assert not missing


def test_shipped_config_and_examples_are_valid() -> None:
    for path in [
        ROOT / "configs" / "agent.toml",
        *sorted((ROOT / "configs" / "examples").glob("*.toml")),
    ]:
        proc = run_cli("config", "validate", str(path))
        assert proc.returncode == 0, proc.stderr
        assert "valid" in proc.stdout


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    settings = load_settings(ROOT / "configs" / "agent.toml")
    assert settings.models["detector"].path == ROOT / "models" / "detector_int8.tflite"
    assert settings.device.state_dir == ROOT / "var"


def test_unknown_keys_and_wrong_types_are_named_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        config_text(tmp_path / "state", SOURCE)
        + "\n[pipelines.boxes.gate]\nenabled = true\nthreshhold = 0.1\n"
        + '\n[runtime]\nthreads = "many"\n'
    )
    proc = run_cli("config", "validate", str(path))
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 2, proc.stderr
    text = path.read_text().splitlines()
    by_key = {line.split(": ")[1]: line for line in lines}
    typo = by_key["pipelines.boxes.gate.threshhold"]
    assert "Extra inputs are not permitted" in typo
    assert text[int(typo.split(":")[1]) - 1].startswith("threshhold")
    threads = by_key["runtime.threads"]
    assert text[int(threads.split(":")[1]) - 1].startswith("threads")


@pytest.mark.parametrize("device", ["all", "group"])
def test_a_device_id_that_is_a_fleet_topic_level_is_refused(tmp_path: Path, device: str) -> None:
    """edge/all/cmd/... and edge/group/NAME/cmd/... address many devices: a device by
    either name would take them for its own."""
    path = tmp_path / "agent.toml"
    path.write_text(
        config_text(tmp_path / "state", SOURCE).replace('id = "test-device"', f'id = "{device}"')
    )
    proc = run_cli("config", "validate", str(path))
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert "device.id" in line and "broadcast or group" in line, line


def test_a_pipeline_naming_a_missing_source_or_model(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path, SOURCE.replace('model = "detector"', 'model = "nope"')))
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    [problem] = err.value.problems
    assert "pipelines.boxes.model: no model named 'nope'" in problem


def test_a_section_in_another_letter_case_is_refused(tmp_path: Path) -> None:
    """The settings class would take [MQTT] for [mqtt], and one of the two silently."""
    path = tmp_path / "agent.toml"
    path.write_text('[mqtt]\nhost = "a"\n\n[MQTT]\nhost = "b"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    [problem] = err.value.problems
    assert problem == f"{path}:4: MQTT: sections are lower case, write mqtt"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[device\nid = 1\n")
    proc = run_cli("config", "validate", str(path))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr and "line 1" in proc.stderr
    proc = run_cli("config", "validate", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "config file not found" in proc.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path, SOURCE))
    monkeypatch.setenv("EDGE_AGENT_DEVICE__ID", "cam-17")
    monkeypatch.setenv("EDGE_AGENT_RUNTIME__BACKEND", "tflite-runtime")
    monkeypatch.setenv("EDGE_AGENT_PIPELINES__BOXES__QUEUE_SIZE", "7")
    settings = load_settings(path)
    assert settings.device.id == "cam-17"
    assert settings.runtime.backend == "tflite-runtime"
    assert settings.pipelines["boxes"].queue_size == 7
    assert settings.pipelines["boxes"].source == "pattern"


def test_environment_lists_are_json_and_names_ignore_case(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path, SOURCE))
    monkeypatch.setenv("EDGE_AGENT_DEVICE__GROUPS", '["north", "cameras"]')
    monkeypatch.setenv("edge_agent_mqtt__host", "broker.example")
    monkeypatch.setenv("EDGE_AGENT_MQTT__PASSWORD", "[not json")  # text, as given
    monkeypatch.setenv("EDGE_AGENT_NOT_A_SECTION", "x")  # not a setting: left alone
    settings = load_settings(path)
    assert settings.device.groups == ["north", "cameras"]
    assert settings.mqtt.host == "broker.example"
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "[not json"
    assert settings.pipelines["boxes"].source == "pattern"  # the file's keys beside them


def test_a_bad_environment_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path, SOURCE))
    monkeypatch.setenv("EDGE_AGENT_MQTT__PORT", "99999")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_settings(path)


def test_secrets_come_from_files_and_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    (creds / "tls-key").write_text("KEY")
    path = tmp_path / "agent.toml"
    mqtt = '\n[mqtt]\nusername = "dev"\npassword_file = "credential:mqtt-password"\n'
    mqtt += 'tls = { key_file = "credential:tls-key" }\n'
    path.write_text(config_text(tmp_path, SOURCE + mqtt))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(path)
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)

    (creds / "mqtt-password").unlink()
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "credential 'mqtt-password' not found" in str(err.value)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match=r"CREDENTIALS_DIRECTORY is not set"):
        load_settings(path)

    secret = tmp_path / "password.txt"
    secret.write_text("from-a-file")
    path.write_text(config_text(tmp_path, SOURCE + f'\n[mqtt]\npassword_file = "{secret}"\n'))
    assert load_settings(path).mqtt.password.get_secret_value() == "from-a-file"  # type: ignore[union-attr]


def test_the_remote_overlay_sits_between_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """defaults < the operator's file < remote.toml < EDGE_AGENT_* variables; tables merge
    key by key."""
    path = tmp_path / "agent.toml"
    path.write_text(config_text(tmp_path / "state", SOURCE + "queue_size = 3\n"))
    overlay = tmp_path / "state" / "remote.toml"
    overlay.parent.mkdir()
    overlay.write_text("[pipelines.boxes]\nqueue_size = 7\ngate = { enabled = true }\n")
    settings = load_settings(path)
    boxes = settings.pipelines["boxes"]
    assert (boxes.queue_size, boxes.gate.enabled, boxes.source) == (7, True, "pattern")
    assert boxes.gate.max_skip_s == 10.0  # a default under the overlay's table
    monkeypatch.setenv("EDGE_AGENT_PIPELINES__BOXES__QUEUE_SIZE", "4")
    assert load_settings(path).pipelines["boxes"].queue_size == 4
    monkeypatch.delenv("EDGE_AGENT_PIPELINES__BOXES__QUEUE_SIZE")

    proc = run_cli("config", "validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert f"{overlay}: remote changes over it, valid" in proc.stdout
    overlay.unlink()
    assert load_settings(path).pipelines["boxes"].queue_size == 3
