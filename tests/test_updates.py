"""Signed model updates end to end, through a real Mosquitto and a local HTTP server: fetched
over either transport, verified, staged on the golden set, hot-swapped and committed; and
every kind of bad update refused with the running model untouched."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import Agent
from edge_agent.fleet.serve import ChunkServer, RangeHTTPServer
from edge_agent.updates.manifest import UpdateManifest
from tests.agent_helpers import mqtt_table, pattern_pipeline, start_agent
from tests.aot_model import aot_model
from tests.mqtt_fixtures import Broker, TcpProxy
from tests.operator import Operator
from tests.update_helpers import MODELS, Keys, digits_update
from tests.waiting import wait_until

SLOW = MODELS / "digits_slow_int8.tflite"  # the same classifier, about 50x the compute

BODY = """
{keys}health_window_s = {window}
latency_slack_ms = {slack}
max_model_bytes = 2000000
"""


def device_body(port: int, keys: Keys, window: float = 0.5, slack: float = 0.2) -> str:
    """Config text: a digits pipeline, the broker on `port`, updates trusting `keys`."""
    body = pattern_pipeline("digits", "digits") + mqtt_table(port)
    return body + BODY.format(keys=keys.config(), window=window, slack=slack)


@pytest.fixture
def agent(tmp_path: Path, broker: Broker, keys: Keys) -> Iterator[Agent]:
    agent = start_agent(tmp_path, device_body(broker.port, keys), online=True)
    yield agent
    agent.stop()


def running_version(agent: Agent) -> str:
    return agent.workers["digits"].model.info.version


def with_source(manifest: UpdateManifest, source: dict[str, Any]) -> dict[str, Any]:
    return {**manifest.as_dict(), "source": source}


def push_over_http(
    operator: Operator, manifest: UpdateManifest, folder: Path, timeout: float = 60
) -> dict[str, Any]:
    """`update_model` with the files served over HTTP from `folder`: the reply."""
    with RangeHTTPServer(folder) as server:
        return operator.call(
            "update_model",
            manifest=with_source(manifest, {"kind": "http", "url": server.url}),
            timeout=timeout,
        )


def operator_client(broker: Broker) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_an_update_over_http_is_verified_staged_swapped_and_committed(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    manifest, folder = digits_update(tmp_path, keys)
    reply = push_over_http(operator, manifest, folder)
    assert reply["status"] == "ok", reply
    assert reply["result"]["state"] == "committed"
    assert reply["result"]["stage"]["golden_agreement"] >= 0.9
    assert running_version(agent) == "1.1.0"
    record = agent.store.active("digits")
    assert record is not None and record.state == "committed" and record.version == "1.1.0"
    operator.wait_event("committed")  # events come through the outbox, after the reply
    stages = [e["stage"] for e in operator.events("digits")]
    for stage in ("downloading", "installed", "staged", "activated", "committed"):
        assert stage in stages, stages
    # Results now name the new version.
    wait_until(
        lambda: (
            (r := agent.pipelines["digits"].last_result) is not None and r.model.version == "1.1.0"
        ),
        what="a result from 1.1.0",
    )


def test_an_update_over_mqtt_chunks_survives_a_cut_connection(
    tmp_path: Path, broker: Broker, proxy: TcpProxy, keys: Keys
) -> None:
    agent = start_agent(tmp_path, device_body(proxy.port, keys), online=True)
    client = operator_client(broker)
    try:
        manifest, folder = digits_update(tmp_path, keys)
        files = {role: folder / ref.path for role, ref in manifest.files.items()}
        server = ChunkServer(client, "edge", "t-1", files, chunk_size=4096).start()
        with Operator(broker) as operator:
            request = operator.send(
                "update_model",
                manifest=with_source(
                    manifest, {"kind": "mqtt", "transfer": "t-1", "chunk_size": 4096}
                ),
            )
            operator.wait_event("downloading", timeout=20)
            proxy.cut()  # mid-transfer: the device reconnects and resumes
            reply = operator.reply(request, timeout=60)
        server.stop()
        assert reply["status"] == "ok", reply
        assert running_version(agent) == "1.1.0"
    finally:
        client.loop_stop()
        client.disconnect()
        agent.stop()


def test_chunks_larger_than_the_broker_takes_are_refused_before_the_transfer(
    tmp_path: Path, broker_factory: Any, keys: Keys
) -> None:
    small = broker_factory(max_packet_size=20_000)
    agent = start_agent(tmp_path, device_body(small.port, keys), online=True)
    try:
        manifest, _ = digits_update(tmp_path, keys)
        with Operator(small) as operator:
            source = {"kind": "mqtt", "transfer": "t-2", "chunk_size": 65536}
            reply = operator.call("update_model", manifest=with_source(manifest, source))
        assert reply["status"] == "error", reply
        assert "maximum packet size of 20000" in reply["reason"], reply
        assert running_version(agent) == "1.0.0"
    finally:
        agent.stop()


def test_a_model_that_fails_its_golden_set_is_refused(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    manifest, folder = digits_update(tmp_path, keys, wrong_golden=True)
    reply = push_over_http(operator, manifest, folder)
    assert reply["status"] == "error" and "golden set agreement" in reply["reason"], reply
    assert running_version(agent) == "1.0.0"
    assert agent.store.active("digits") is None


def test_a_slower_model_is_rolled_back_by_the_health_watch(
    tmp_path: Path, broker: Broker, operator: Operator, keys: Keys
) -> None:
    # The slow twin takes ~0.1 ms against ~0.01: a slack under that difference, so a busy
    # machine's jitter in the baseline cannot hide it.
    body = device_body(broker.port, keys, window=2.0, slack=0.02)
    agent = start_agent(tmp_path, body, online=True)
    try:
        # The running model's p95 is the baseline: let it gather enough inferences.
        wait_until(lambda: agent.workers["digits"].infer_times.count >= 30, what="a baseline")
        manifest, folder = digits_update(tmp_path, keys, "2.0.0", model=SLOW)
        reply = push_over_http(operator, manifest, folder)
        assert reply["status"] == "error", reply
        assert "rolled back after activation: p95 infer" in reply["reason"], reply
        assert running_version(agent) == "1.0.0"
        assert agent.store.active("digits") is None
        operator.wait_event("rolled_back")  # events come through the outbox, after the reply
        stages = [e["stage"] for e in operator.events("digits")]
        assert stages[-2:] == ["activated", "rolled_back"], stages
    finally:
        agent.stop()


def _tamper_file(folder: Path, manifest: UpdateManifest, how: str) -> None:
    model = folder / manifest.files["model"].path
    data = bytearray(model.read_bytes())
    if how == "corrupt":
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    else:  # truncated
        model.write_bytes(bytes(data[: len(data) // 2]))


def _with_task(folder: Path, manifest: UpdateManifest, task: str) -> UpdateManifest:
    """The update, its model's own manifest naming `task`, file reference updated."""
    own = folder / manifest.files["manifest"].path
    data = json.dumps({**json.loads(own.read_text()), "task": task}).encode()
    return _with_model_manifest(folder, manifest, data)


# Model manifests built to break a JSON parser, or to pass one that is not strict.
HOSTILE_MODEL_MANIFESTS = {
    "deep_manifest": b'{"labels": ' * 5000 + b"[]" + b"}" * 5000,
    "nan_manifest": b'{"name": "digits", "task": "classification", "input": {"range": [0, NaN]}}',
    "huge_manifest": b'{"name": "digits", "description": "' + b"x" * (1024 * 1024) + b'"}',
}


def _with_model_manifest(folder: Path, manifest: UpdateManifest, data: bytes) -> UpdateManifest:
    """The update, its model's own manifest replaced by `data`, file reference updated."""
    own = folder / manifest.files["manifest"].path
    own.write_bytes(data)
    ref = {"path": own.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    body = manifest.as_dict()
    return UpdateManifest.model_validate({**body, "files": {**body["files"], "manifest": ref}})


def _manifest_change(manifest: UpdateManifest, how: str, keys: Keys) -> dict[str, Any]:
    body = manifest.as_dict()
    if how == "unsigned":
        body.pop("signature")
    elif how == "wrong_signature":
        body["version"] = "9.9.9"  # signed as 1.1.0
    elif how == "wrong_hash":
        model = {**body["files"]["model"], "sha256": "0" * 64}
        body = keys.sign(
            UpdateManifest.model_validate({**body, "files": {**body["files"], "model": model}})
        ).as_dict()
    elif how == "oversized":
        model = {**body["files"]["model"], "size": 5_000_000}
        body = keys.sign(
            UpdateManifest.model_validate({**body, "files": {**body["files"], "model": model}})
        ).as_dict()
    elif how == "path_traversal":
        body["files"]["labels"] = {"path": "../../etc/passwd", "size": 1, "sha256": "0" * 64}
    elif how == "absolute_name":
        body["name"] = "/etc/digits"
    return body


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("corrupt", "sha256 mismatch"),
        ("truncated", "the manifest says"),
        ("wrong_hash", "sha256 mismatch"),
        ("wrong_signature", "bad signature"),
        ("unsigned", "unsigned update refused"),
        ("oversized", "max_model_bytes"),
        ("path_traversal", "bare file name"),
        ("absolute_name", "name"),
        ("code_task", "names code to import"),
        ("deep_manifest", "files.manifest nests 5001 levels deep, more than 32"),
        ("nan_manifest", "files.manifest is not JSON: NaN is not a JSON number"),
        ("huge_manifest", "files.manifest is 1048613 bytes, more than 1048576"),
    ],
)
def test_bad_updates_are_refused_and_the_running_model_untouched(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys, how: str, reason: str
) -> None:
    manifest, folder = digits_update(tmp_path, keys)
    if how in ("corrupt", "truncated"):
        _tamper_file(folder, manifest, how)
    if how == "code_task":
        manifest = keys.sign(_with_task(folder, manifest, "os:system"))
    if how in HOSTILE_MODEL_MANIFESTS:
        data = HOSTILE_MODEL_MANIFESTS[how]
        manifest = keys.sign(_with_model_manifest(folder, manifest, data))
    body = _manifest_change(manifest, how, keys)
    with RangeHTTPServer(folder) as server:
        reply = operator.call(
            "update_model",
            manifest={**body, "source": {"kind": "http", "url": server.url}},
            timeout=60,
        )
    assert reply["status"] == "error" and reason in reply["reason"], reply
    assert running_version(agent) == "1.0.0"
    assert agent.store.active("digits") is None
    assert agent.store.versions("digits") == []
    # Nothing left to resume at the next start: a refused update is not tried again.
    downloads = agent.settings.device.state_dir / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())
    assert operator.call("ping")["status"] == "ok"


@pytest.mark.parametrize(
    ("saved", "problem"),
    [
        (b"[" * 100_000, "nests 100000 levels deep, more than 32"),
        (b'{"name": "digits", "version": "1.1.0", "created": Infinity}', "Infinity is not a"),
        (b'{"name": "' + b"x" * 200_000 + b'"}', "is 200012 bytes, more than 131072"),
    ],
)
def test_a_hostile_saved_download_is_abandoned_with_one_line(
    agent: Agent, caplog: pytest.LogCaptureFixture, saved: bytes, problem: str
) -> None:
    """The manifest kept beside a half-done download came from the network once: at the
    next start it is parsed as strictly, and one that fails is dropped, not retried."""
    folder = agent.updater.downloads / "digits-1.1.0"
    folder.mkdir(parents=True)
    (folder / "update.json").write_bytes(saved)
    with caplog.at_level(logging.WARNING):
        agent.updater.resume_downloads()
        wait_until(lambda: not folder.exists(), what="the hostile download removed")
    lines = [r.getMessage() for r in caplog.records if "download abandoned" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"{folder / 'update.json'} ") and problem in lines[0], lines
    assert agent.health(20.0) == []
    assert running_version(agent) == "1.0.0"


def test_activate_and_rollback_commands_switch_versions_without_a_restart(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    for version in ("1.1.0", "1.2.0"):
        manifest, folder = digits_update(tmp_path, keys, version)
        reply = push_over_http(operator, manifest, folder)
        assert reply["status"] == "ok", reply
    assert running_version(agent) == "1.2.0"
    back = operator.call("rollback_model", name="digits", timeout=30)
    assert back["status"] == "ok" and back["result"]["to"] == "1.1.0", back
    assert running_version(agent) == "1.1.0"
    again = operator.call("activate_model", name="digits", version="1.2.0", timeout=30)
    assert again["status"] == "ok", again
    assert running_version(agent) == "1.2.0"
    listed = operator.call("list_models")["result"]["digits"]
    assert listed["running"]["version"] == "1.2.0" and set(listed["versions"]) >= {"1.1.0", "1.2.0"}
    missing = operator.call("activate_model", name="digits", version="7.0.0")
    assert missing["status"] == "error" and "not installed" in missing["reason"]
    assert json.dumps(listed)  # a reply the operator can print


def test_a_replayed_older_update_is_refused(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    """A signed manifest stays valid: replaying 1.1.0's after 1.2.0 must not downgrade."""
    pushed = {}
    for version in ("1.1.0", "1.2.0"):
        manifest, folder = digits_update(tmp_path, keys, version)
        pushed[version] = (manifest, folder)
        reply = push_over_http(operator, manifest, folder)
        assert reply["status"] == "ok" and reply["result"]["state"] == "committed", reply
    old, folder = pushed["1.1.0"]
    replay = push_over_http(operator, old, folder)
    assert replay["status"] == "error", replay
    assert "older than the installed 1.2.0" in replay["reason"]
    assert running_version(agent) == "1.2.0"
    # The explicit way back still works.
    back = operator.call("rollback_model", name="digits", timeout=30)
    assert back["status"] == "ok" and running_version(agent) == "1.1.0"


def test_an_update_of_a_model_that_did_not_load_starts_it_and_its_pipeline(
    tmp_path: Path, broker: Broker, operator: Operator, keys: Keys
) -> None:
    """The device's digits model was compiled for an NPU it does not have, with no CPU twin:
    refused at start while the detector runs. A version that loads is pushed: it is staged,
    activated and committed, and the digits pipeline starts without a restart."""
    folder = tmp_path / "models"
    folder.mkdir()
    aot = aot_model(folder, twin=False)
    models = f'[models.digits]\npath = "{aot}"\nthreads = 1\n\n[models.detector]\n'
    models += f'path = "{MODELS / "detector_int8.tflite"}"\nthreads = 1\n'
    body = pattern_pipeline("digits", "digits") + '\n[pipelines.boxes]\nsource = "pattern"\n'
    body += 'model = "detector"\n' + mqtt_table(broker.port)
    body += BODY.format(keys=keys.config(), window=0.5, slack=0.2)
    agent = start_agent(tmp_path, body, models=models, online=True)
    try:
        assert sorted(agent.pipelines) == ["boxes"]
        assert agent.status.get("model digits") is not None
        manifest, files = digits_update(tmp_path, keys)
        reply = push_over_http(operator, manifest, files)
        assert reply["status"] == "ok", reply
        assert reply["result"]["state"] == "committed"
        assert sorted(agent.pipelines) == ["boxes", "digits"]
        assert running_version(agent) == "1.1.0"
        assert agent.status.get("model digits") is None
        wait_until(
            lambda: (
                (r := agent.pipelines["digits"].last_result) is not None
                and r.model.version == "1.1.0"
            ),
            what="a result from 1.1.0",
        )
    finally:
        agent.stop()
