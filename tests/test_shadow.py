"""Shadow canaries (docs/shadow.md): an update run beside the active model on live frames,
compared, then promoted through the usual hot swap and health watch or dropped. Real
models throughout: the shipped digits classifier, a copy with a tiny weight change, one with
its classes rotated, the slow twin, and candidates that cannot run on the frames."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent.agent import Agent
from edge_agent.fleet.serve import RangeHTTPServer
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.loader import load_model
from edge_agent.updates.manifest import ShadowPolicy, UpdateManifest, canonical_bytes
from edge_agent.updates.shadow import Figures, Shadow, agreement, decide
from tests.agent_helpers import start_agent
from tests.mqtt_fixtures import Broker
from tests.operator import Operator
from tests.shadow_helpers import variant
from tests.test_updates import (
    SLOW,
    device_body,
    push_over_http,
    running_version,
    with_source,
)
from tests.update_helpers import DIGITS, MODELS, Keys, digits_update
from tests.waiting import wait_until

FAST = {"sample": 1.0, "min_frames": 40, "cpu_budget": 4.0, "timeout_s": 30}


# The policy ----------------------------------------------------------------------------


def test_a_share_or_every_nth_frame_is_taken_evenly() -> None:
    quarter = ShadowPolicy(sample=0.25)
    assert sum(quarter.takes(n) for n in range(1, 101)) == 25
    assert [n for n in range(1, 9) if quarter.takes(n)] == [4, 8]
    assert [n for n in range(1, 10) if ShadowPolicy(every=3).takes(n)] == [3, 6, 9]
    assert sum(ShadowPolicy().takes(n) for n in range(1, 401)) == 100  # 25 % by default


def test_a_policy_with_both_rates_or_bad_values_is_refused() -> None:
    with pytest.raises(ValidationError, match="sample or every"):
        ShadowPolicy(sample=0.5, every=2)
    for bad in ({"sample": 0}, {"sample": 1.5}, {"every": 0}, {"min_frames": 0}, {"x": 1}):
        with pytest.raises(ValidationError):
            ShadowPolicy.model_validate(bad)


def test_an_update_without_a_shadow_signs_as_before(tmp_path: Path) -> None:
    manifest, _ = digits_update(tmp_path, None)
    assert manifest.shadow is None
    assert b"shadow" not in canonical_bytes(manifest)
    shadowed = manifest.model_copy(update={"shadow": ShadowPolicy(every=4)})
    again = UpdateManifest.model_validate_json(shadowed.to_json())
    assert again.shadow == ShadowPolicy(every=4)
    assert b'"shadow":{' in canonical_bytes(again)  # covered by the signature


# The comparison on real models ---------------------------------------------------------


def test_boxes_are_matched_by_label_and_iou() -> None:
    a = [{"label": "cat", "box": [0, 0, 10, 10]}, {"label": "dog", "box": [20, 20, 30, 30]}]
    near = [{"label": "cat", "box": [1, 0, 11, 10]}, {"label": "cat", "box": [20, 20, 30, 30]}]
    found = agreement({"detections": a}, {"detections": near})
    assert found is not None
    share, ious = found
    assert share == 0.5 and len(ious) == 1 and 0.8 < ious[0] < 0.9
    assert agreement({"detections": []}, {"detections": []}) == (1.0, [])
    assert agreement({"value": 1.0}, {"value": 1.0}) is None  # other tasks: not compared


def run_shadow(backend: Backend, candidate: Path, **policy: Any) -> tuple[str, dict[str, Any]]:
    """The candidate shadows the shipped model on the held-out digits, fed as the
    inference worker feeds it: the active model's input samples and raw outputs."""
    active = load_model(DIGITS, backend)
    shadow = Shadow(
        "digits",
        load_model(candidate, backend, threads=1),
        active,
        ShadowPolicy.model_validate({**FAST, **policy}),
    )
    shadow.start()
    data = np.load(MODELS / "data" / "digits_test.npz")["x"]
    samples = active.input.quant.quantize(data).astype(active.input.dtype)
    try:
        for sample in samples:
            started = time.perf_counter()
            raw = active.run(sample[None])
            took = time.perf_counter() - started
            while shadow.tap.queue.full():  # in the agent a full queue drops; here we wait
                time.sleep(0.0005)
            shadow.tap.offer([sample], raw, took)
            if shadow.decision() is not None:
                break
        wait_until(lambda: shadow.decision() is not None, what="a decision")
        return str(shadow.decision()), shadow.snapshot()
    finally:
        shadow.stop()


def test_a_slightly_changed_copy_agrees_and_is_promoted(backend: Backend, tmp_path: Path) -> None:
    verdict, figures = run_shadow(backend, variant(tmp_path / "digits_nudged.tflite", "nudged"))
    assert verdict == "promote", figures
    assert figures["agreement"] >= 0.95 and figures["frames"] >= 40 and figures["errors"] == 0


def test_a_copy_with_swapped_classes_is_dropped(backend: Backend, tmp_path: Path) -> None:
    verdict, figures = run_shadow(backend, variant(tmp_path / "digits_swapped.tflite", "swapped"))
    assert verdict.startswith("agreement 0.0"), (verdict, figures)


def test_the_slow_twin_is_dropped_on_latency(backend: Backend) -> None:
    verdict, figures = run_shadow(backend, SLOW, min_agreement=0.5, latency_slack_ms=0.02)
    assert "the active model's is over 1.5x" in verdict, (verdict, figures)
    assert figures["latency_ratio"] > 1.5


def test_a_shadow_without_enough_frames_in_time_is_dropped() -> None:
    policy = ShadowPolicy(min_frames=10, timeout_s=5)
    assert decide(policy, Figures(frames=3), elapsed_s=1) is None
    assert decide(policy, Figures(frames=3), elapsed_s=6) == "only 3 of 10 frames compared in 5 s"


# Through the agent ---------------------------------------------------------------------


def shadow_update(
    tmp_path: Path, keys: Keys, model: Path, version: str, **policy: Any
) -> tuple[UpdateManifest, Path, bool]:
    manifest, folder = digits_update(tmp_path, None, version, model=model)
    shadow = ShadowPolicy.model_validate({**FAST, **policy})
    return keys.sign(manifest.model_copy(update={"shadow": shadow})), folder, True


def push(operator: Operator, manifest: UpdateManifest, folder: Path) -> dict[str, Any]:
    return push_over_http(operator, manifest, folder, timeout=90)  # a shadow run takes longer


@pytest.fixture
def agent(tmp_path: Path, broker: Broker, keys: Keys) -> Any:
    agent = start_agent(tmp_path, device_body(broker.port, keys), online=True)
    yield agent
    agent.stop()


def test_an_agreeing_shadow_is_promoted_through_the_hot_swap_and_health_watch(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    model = variant(tmp_path / "src" / "digits_nudged.tflite", "nudged")
    # Every frame at 30 fps: about 3 s of shadow, long enough to see it live.
    manifest, folder, _ = shadow_update(tmp_path, keys, model, "1.1.0", min_frames=90)
    with RangeHTTPServer(folder) as server:
        source = {"kind": "http", "url": server.url}
        request = operator.send("update_model", manifest=with_source(manifest, source))
        progress = operator.wait_event("shadow", timeout=60)
        assert progress["detail"]["frames"] > 0 and progress["detail"]["agreement"] >= 0.9
        live = agent.telemetry.collect().get("shadows", {})
        reply = operator.reply(request, timeout=90)
    assert live["digits"]["frames"] > 0, live
    assert reply["status"] == "ok", reply
    result = reply["result"]
    assert result["state"] == "committed" and result["shadow"]["agreement"] >= 0.95
    assert running_version(agent) == "1.1.0"
    assert agent.workers["digits"].shadow is None and agent.host.shadows() == {}
    operator.wait_event("committed")
    stages = [e["stage"] for e in operator.events("digits")]
    assert stages.index("staged") < stages.index("promoted") < stages.index("activated"), stages
    assert stages.index("committed") > stages.index("activated")


def test_a_disagreeing_shadow_is_dropped_with_its_figures(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    model = variant(tmp_path / "src" / "digits_swapped.tflite", "swapped")
    manifest, folder, _ = shadow_update(tmp_path, keys, model, "1.1.0")
    manifest = keys.sign(
        manifest.model_copy(
            update={
                "golden": None,
                "files": {r: f for r, f in manifest.files.items() if r != "golden"},
            }
        )
    )
    reply = push(operator, manifest, folder)
    assert reply["status"] == "error", reply
    assert reply["reason"].startswith("shadow: dropped: agreement 0.0"), reply
    assert running_version(agent) == "1.0.0" and agent.store.active("digits") is None
    dropped = operator.wait_event("dropped")
    assert dropped["detail"]["frames"] >= 40 and dropped["detail"]["agreement"] < 0.1
    assert "activated" not in [e["stage"] for e in operator.events("digits")]
    assert agent.workers["digits"].shadow is None


def without_golden(keys: Keys, manifest: UpdateManifest) -> UpdateManifest:
    files = {role: ref for role, ref in manifest.files.items() if role != "golden"}
    return keys.sign(manifest.model_copy(update={"golden": None, "files": files}))


def test_a_shadow_that_cannot_run_on_the_frames_is_dropped(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    # Another model's file under this name: it loads and stages (no golden set), but takes
    # another input than the frames the active model gets.
    manifest, folder, _ = shadow_update(
        tmp_path, keys, MODELS / "sensor_classifier_int8.tflite", "1.1.0"
    )
    reply = push(operator, without_golden(keys, manifest), folder)
    assert reply["status"] == "error", reply
    assert "shadow: dropped: the shadow model does not load" in reply["reason"], reply
    assert "cannot run on the same frames" in reply["reason"]
    assert running_version(agent) == "1.0.0" and agent.store.active("digits") is None
    operator.wait_event("dropped")


def test_a_shadow_that_crashes_on_a_frame_is_dropped_and_the_active_model_runs_on(
    tmp_path: Path, agent: Agent, operator: Operator, keys: Keys
) -> None:
    # Its manifest says detection: its classifier outputs fail to decode on every frame.
    src = tmp_path / "src" / "digits_int8.tflite"
    src.parent.mkdir(parents=True)
    src.write_bytes(DIGITS.read_bytes())
    own = json.loads(DIGITS.with_suffix(".json").read_text())
    own.update(task="detection", decode={})
    src.with_suffix(".json").write_text(json.dumps(own))
    manifest, folder, _ = shadow_update(tmp_path, keys, src, "1.1.0")
    before = agent.pipelines["digits"].stats.snapshot()
    reply = push(operator, without_golden(keys, manifest), folder)
    assert reply["status"] == "error", reply
    reason = reply["reason"]
    assert reason.startswith("shadow: dropped: ") and "inference(s) failed (max_errors 0)" in reason
    assert "expected exactly one output shaped" in reason
    assert running_version(agent) == "1.0.0" and agent.store.active("digits") is None
    after = agent.pipelines["digits"].stats.snapshot()
    assert after.get("errors", 0) == before.get("errors", 0)
    wait_until(
        lambda: agent.pipelines["digits"].stats.snapshot()["results"] > after["results"],
        what="the active model still producing results",
    )


def test_edge_fleet_push_shadow_prints_the_agreement_as_it_grows(
    tmp_path: Path,
    broker: Broker,
    agent: Agent,
    keys: Keys,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edge_agent.fleet.cli import main
    from edge_agent.updates.manifest import UPDATE_FILE

    monkeypatch.setenv("EDGE_FLEET_PROFILES", str(tmp_path / "no-profiles.toml"))
    model = variant(tmp_path / "src" / "digits_nudged.tflite", "nudged")
    manifest, folder, _ = shadow_update(tmp_path, keys, model, "1.1.0", min_frames=90)
    (folder / UPDATE_FILE).write_bytes(manifest.to_json())
    broker_flag = ("--broker", f"{broker.host}:{broker.port}")
    args = ["push", *broker_flag, str(folder), "--device", "test-device", "--via", "http"]
    assert main([*args, "--shadow"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if "shadow: " in line and "% agree" in line]
    assert len(lines) >= 2, err  # one per progress event, as the frames grow
    assert "test-device: ok committed digits 1.1.0" in out, out
    assert re.search(r"  shadow: \d+ frames, \d+\.\d% agree, latency [\d.]+x, 0 errors", out), out
    # Without a shadow policy in the update, --shadow has nothing to follow.
    plain, plain_folder = digits_update(tmp_path / "plain", keys, "1.2.0")
    (plain_folder / UPDATE_FILE).write_bytes(plain.to_json())
    assert main(["push", *broker_flag, str(plain_folder), "--all", "--shadow"]) == 2
    assert "has no shadow policy" in capsys.readouterr().err


def test_edge_fleet_sign_writes_the_shadow_policy_it_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.fleet.cli import main
    from edge_agent.updates.manifest import UPDATE_FILE
    from edge_agent.updates.signing import verify_manifest

    pem = tmp_path / "ops.pem"
    assert main(["keygen", "--out", str(tmp_path), "--key-id", "ops"]) == 0
    public = capsys.readouterr().out
    sign = ["sign", str(DIGITS), "--name", "digits", "--version", "1.1.0", "--key", str(pem)]
    out = tmp_path / "update"
    shadow = ["--shadow", "sample=0.5", "--shadow", "min_frames=90", "--shadow", "cpu_budget=0.2"]
    assert main([*sign, *shadow, "--out", str(out)]) == 0
    assert "shadow first: sample=0.5, min_frames=90" in capsys.readouterr().out
    manifest = UpdateManifest.model_validate_json((out / UPDATE_FILE).read_bytes())
    assert manifest.shadow == ShadowPolicy(sample=0.5, min_frames=90, cpu_budget=0.2)
    key = re.search(r"^public key: +(\S+)$", public, re.M)
    assert key is not None, public
    verify_manifest(manifest, {"ops": key.group(1)}, allow_unsigned=False)  # signed with it
    # A bad field is one line naming it; a pair without '=' too; nothing is written.
    bad = tmp_path / "bad"
    assert main([*sign, "--shadow", "sample=2", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "shadow.sample" in err and len(err.strip().splitlines()) == 1, err
    assert main([*sign, "--shadow", "sample", "--out", str(bad)]) == 2
    assert "--shadow 'sample': expected KEY=VALUE" in capsys.readouterr().err
    assert not (bad / UPDATE_FILE).exists()
