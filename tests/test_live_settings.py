"""Every settings section applies live or says it cannot; a reload is all or nothing; the
status keeps each problem until it is resolved; an update counts as activated only once the
new model runs."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.agent import Agent
from edge_agent.config.load import load_settings
from edge_agent.config.section import applies_of
from edge_agent.config.settings import AgentSettings
from edge_agent.fleet.serve import RangeHTTPServer
from edge_agent.json_body import canonical
from edge_agent.reload import ReloadRefused
from edge_agent.service import Service
from edge_agent.updates.signing import sign_bytes
from tests import blocking_decoder
from tests.agent_helpers import config_text, mqtt_table, start_agent
from tests.conftest import MODELS
from tests.mqtt_fixtures import Broker
from tests.operator import Operator
from tests.update_helpers import Keys, digits_update
from tests.waiting import wait_until

BLOCKING = "tests.blocking_decoder:BlockingDecoder"


def model_tables(digits: Path, detector: Path) -> str:
    """Config text: the two models; digits decodes with the blocking plugin."""
    return f"""
[models.digits]
path = "{digits}"
threads = 1
task = "{BLOCKING}"

[models.detector]
path = "{detector}"
threads = 1
"""


# Config text: a pipeline on each model, each on its own synthetic source.
PIPELINES = """
[sources.a]
kind = "synthetic"
pattern = "moving_box"
fps = 30

[sources.b]
kind = "synthetic"
pattern = "bars"
fps = 30

[pipelines.d]
source = "a"
model = "digits"

[pipelines.e]
source = "b"
model = "detector"
"""


def config(state: Path, digits: Path, detector: Path, extra: str = "") -> str:
    """Two models on two synthetic sources; digits decodes with the blocking plugin."""
    return config_text(state, PIPELINES + extra, models=model_tables(digits, detector))


@pytest.fixture(autouse=True)
def released() -> Iterator[None]:
    blocking_decoder.reset()
    yield
    blocking_decoder.RELEASE.set()  # a held inference thread ends with the test


def copies(tmp_path: Path) -> tuple[Path, Path]:
    out = []
    for name in ("digits_int8", "detector_int8"):
        shutil.copy(MODELS / f"{name}.tflite", tmp_path / f"{name}.tflite")
        shutil.copy(MODELS / f"{name}.json", tmp_path / f"{name}.json")
        out.append(tmp_path / f"{name}.tflite")
    return out[0], out[1]


def invokes(agent: Agent, model: str) -> int:
    return agent.workers[model].invokes


def test_every_section_declares_how_a_change_to_it_applies() -> None:
    undeclared = [
        name
        for name, field in AgentSettings.model_fields.items()
        if applies_of(field.metadata) is None
    ]
    assert undeclared == []


def test_a_reload_whose_swap_does_not_finish_changes_nothing(tmp_path: Path) -> None:
    digits, detector = MODELS / "digits_int8.tflite", MODELS / "detector_int8.tflite"
    path = tmp_path / "agent.toml"
    agent = start_agent(tmp_path, PIPELINES, models=model_tables(digits, detector))
    try:
        wait_until(lambda: invokes(agent, "detector") > 3 and invokes(agent, "digits") > 3)
        blocking_decoder.HOLD.set()
        assert blocking_decoder.HELD.wait(10), "the digits inference never blocked"
        # Both models change; detector swaps first, then digits cannot (its thread is held).
        new_digits, new_detector = copies(tmp_path)
        path.write_text(config(tmp_path / "state", new_digits, new_detector))
        with pytest.raises(ReloadRefused, match="model digits: the swap did not finish"):
            agent.reload(load_settings(path))
        # Nothing changed: detector went back to its old file and still runs.
        assert agent.workers["detector"].model.info.path == detector
        assert agent.settings.models["detector"].path == detector
        before = invokes(agent, "detector")
        wait_until(lambda: invokes(agent, "detector") > before + 3, what="detector running on")
        # Once the held inference returns, the old digits model goes on: no late swap.
        blocking_decoder.RELEASE.set()
        before = invokes(agent, "digits")
        wait_until(lambda: invokes(agent, "digits") > before + 3, what="digits running on")
        assert agent.workers["digits"].model.info.path == digits
    finally:
        agent.stop()


def test_a_model_problem_stays_on_the_status_through_a_good_config_reload(
    tmp_path: Path,
) -> None:
    digits, detector = copies(tmp_path)
    path = tmp_path / "agent.toml"
    agent = start_agent(tmp_path, PIPELINES, models=model_tables(digits, detector))
    try:
        wait_until(lambda: invokes(agent, "digits") > 3)
        good = digits.read_bytes()
        digits.write_bytes(b"TFL3 no longer a model")
        assert agent.reload_model_file("digits") is False
        [problem] = agent.online_status()["problems"]
        assert problem["key"] == "model digits" and "old model keeps running" in problem["problem"]
        # A config edit that applies fine resolves config problems, not this one.
        path.write_text(path.read_text().replace('pattern = "bars"', 'pattern = "noise"'))
        Service(agent, path).reload("agent.toml changed")
        assert agent.online_status()["problems"] == [problem]  # same text, same since
        # The file is fixed: the problem is resolved.
        digits.write_bytes(good)
        assert agent.reload_model_file("digits") is True
        assert agent.online_status()["problems"] == []
        assert agent.online_status()["last_error"] == ""
    finally:
        agent.stop()


def test_an_edit_of_updates_applies_live_and_says_so(
    tmp_path: Path, broker: Broker, operator: Operator
) -> None:
    trusted, other = Keys(tmp_path / "keys"), Keys(tmp_path / "other-keys", "second")
    digits, detector = MODELS / "digits_int8.tflite", MODELS / "detector_int8.tflite"
    updates = "health_window_s = 0.3\nmax_model_bytes = 2000000\n"
    path = tmp_path / "agent.toml"
    base = config(tmp_path / "state", digits, detector, mqtt_table(broker.port))
    text = PIPELINES + mqtt_table(broker.port) + trusted.config() + updates
    agent = start_agent(tmp_path, text, models=model_tables(digits, detector), online=True)

    def signed_ping(request_id: str) -> dict[str, object]:
        body = {"request_id": request_id, "issued_at": time.time(), "nonce": request_id}
        value = sign_bytes(canonical(body), other.private)
        return {**body, "signature": {"key_id": "second", "value": value}}

    try:
        unknown = operator.call("ping", **signed_ping("before-1"))
        assert unknown["status"] == "error" and "unknown key 'second'" in unknown["reason"]
        manifest, folder = digits_update(tmp_path, other)  # signed by a key not trusted yet
        with RangeHTTPServer(folder) as server:
            body = {**manifest.as_dict(), "source": {"kind": "http", "url": server.url}}
            refused = operator.call("update_model", manifest=body, timeout=60)
            assert refused["status"] == "error" and "second" in refused["reason"], refused
            # The operator trusts the second key too: no restart.
            keys = f'ops = "{trusted.public}", second = "{other.public}"'
            both = f"[updates]\ntrusted_keys = {{ {keys} }}\n"
            path.write_text(base + both + updates)
            applied = agent.reload(load_settings(path))
            assert applied.done == ["updates.trusted_keys.second applied"]
            assert applied.restart_required == []
            # Commands signed with it are taken at once too.
            assert operator.call("ping", **signed_ping("after-1"))["status"] == "ok"
            reply = operator.call("update_model", manifest=body, timeout=60)
        assert reply["status"] == "ok" and reply["result"]["state"] == "committed", reply
        # A remote change of a live [updates] key is named, never "nothing changed".
        reply = operator.call("set_config", changes={"updates": {"health_window_s": 0.2}})
        assert reply["status"] == "ok", reply
        assert reply["result"]["applied"] == ["updates.health_window_s applied"]
        assert reply["result"]["restart_required"] == []
        assert agent.updater.settings.health_window_s == 0.2
    finally:
        agent.stop()


def test_an_update_is_activated_only_when_the_new_model_runs(
    tmp_path: Path, broker: Broker, operator: Operator
) -> None:
    keys = Keys(tmp_path / "keys")
    digits, detector = MODELS / "digits_int8.tflite", MODELS / "detector_int8.tflite"
    text = PIPELINES + mqtt_table(broker.port) + keys.config() + "max_model_bytes = 2000000\n"
    agent = start_agent(tmp_path, text, models=model_tables(digits, detector), online=True)
    try:
        wait_until(lambda: invokes(agent, "digits") > 3)
        blocking_decoder.HOLD.set()  # the digits worker cannot take a new model
        assert blocking_decoder.HELD.wait(10)
        manifest, folder = digits_update(tmp_path, keys)
        with RangeHTTPServer(folder) as server:
            body = {**manifest.as_dict(), "source": {"kind": "http", "url": server.url}}
            reply = operator.call("update_model", manifest=body, timeout=60)
        assert reply["status"] == "error", reply
        assert "activation failed, rolled back" in reply["reason"]
        assert "did not finish" in reply["reason"]
        operator.wait_event("rolled_back")  # events come through the outbox, after the reply
        stages = [e["stage"] for e in operator.events("digits")]
        assert "activated" not in stages and stages[-1] == "rolled_back", stages
        assert agent.store.active("digits") is None
        blocking_decoder.RELEASE.set()
        before = invokes(agent, "digits")
        wait_until(lambda: invokes(agent, "digits") > before + 3, what="old model running on")
        assert agent.workers["digits"].model.info.path == digits
    finally:
        agent.stop()
