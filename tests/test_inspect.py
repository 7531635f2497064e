"""`edge-agent models inspect` and `models manifest` on real model files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import BACKEND, MODELS, run_cli

pytestmark = pytest.mark.runtime

MOBILENET = MODELS / "mobilenet_v2_int8.tflite"


def inspect_json(model: Path, *extra: str) -> dict:  # type: ignore[type-arg]
    done = run_cli("models", "inspect", str(model), "--json", "--runtime", BACKEND, *extra)
    assert done.returncode == 0, done.stderr
    report: dict = json.loads(done.stdout)  # type: ignore[type-arg]
    return report


def test_inspect_reports_tensors_ops_delegation_and_identity() -> None:
    report = inspect_json(MOBILENET)
    content = MOBILENET.read_bytes()
    assert report["size"] == len(content)
    assert report["sha256"] == hashlib.sha256(content).hexdigest()
    (tensor_in,) = report["inputs"]
    assert tensor_in["shape"] == [1, 224, 224, 3] and tensor_in["dtype"] == "int8"
    assert tensor_in["quantization"]["zero_point"] == -128
    # Conv weights carry a scale per output channel.
    assert report["tensors"]["per_channel"] > 0
    assert report["ops"]["CONV_2D"] == 35 and sum(report["ops"].values()) == 67
    assert report["description"]["rules"]["input"] == "sidecar manifest"
    if BACKEND == "litert":  # tflite-runtime 2.14 gives int8 graphs no XNNPACK on x86
        xnnpack = report["delegates"]["xnnpack"]
        assert xnnpack["taken"] == 66 and xnnpack["left_by_op"] == {"SOFTMAX": 1}


def test_inspect_without_a_manifest_names_the_rule_for_each_part(tmp_path: Path) -> None:
    model = tmp_path / "stock.tflite"
    shutil.copy(MOBILENET, model)
    report = inspect_json(model)
    rules = report["description"]["rules"]
    assert rules["input"] == "tensor [1, 224, 224, 3] int8: an image (NHWC)"
    assert rules["preprocessing"].startswith("pixels through the input's own scale")
    assert rules["task"] == "from the outputs: one output [1,1000]: classification"
    assert report["metadata"]["entries"] == ["CONVERSION_METADATA", "min_runtime_version"]
    text = run_cli("models", "inspect", str(model), "--runtime", BACKEND).stdout
    assert "task: classification" in text and "ops (67): CONV_2D 35" in text


def test_inspect_says_which_ops_a_configured_delegate_takes_or_why_not(tmp_path: Path) -> None:
    missing = tmp_path / "libnothing.so"
    report = inspect_json(MOBILENET, "--delegate", f"external:library={missing}")
    entry = report["delegates"]["libnothing.so"]
    assert entry["available"] is False and "library not loaded" in entry["reason"]


def test_inspect_on_a_file_that_is_not_a_model_is_one_line_exit_2(tmp_path: Path) -> None:
    junk = tmp_path / "photo.tflite"
    shutil.copy(MODELS / "samples" / "digit_3.png", junk)
    done = run_cli("models", "inspect", str(junk))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"edge-agent: {junk}: not a TFLite model (no TFL3 identifier)"
    ]


def test_manifest_writes_a_sidecar_that_infer_then_uses(tmp_path: Path) -> None:
    model = tmp_path / "digits.tflite"
    shutil.copy(MODELS / "digits_int8.tflite", model)
    done = run_cli("models", "manifest", str(model), "--runtime", BACKEND)
    assert done.returncode == 0, done.stderr
    sidecar = tmp_path / "digits.json"
    written = json.loads(sidecar.read_text())
    assert written["task"] == "classification"
    assert written["input"]["kind"] == "image" and written["input"]["color"] == "GRAY"
    assert written["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.json", "digits.tflite"]
    # Edited by the user, then used: the sidecar comes first.
    written["labels"] = [f"digit {i}" for i in range(10)]
    sidecar.write_text(json.dumps(written))
    inferred = run_cli("infer", str(model), str(MODELS / "samples" / "digit_3.png"), "--json")
    assert json.loads(inferred.stdout)["result"]["top"][0]["label"] == "digit 3"


def test_manifest_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    model = tmp_path / "digits.tflite"
    shutil.copy(MODELS / "digits_int8.tflite", model)
    target = tmp_path / "mine.json"
    target.write_text("{}")
    done = run_cli("models", "manifest", str(model), "-o", str(target))
    assert done.returncode == 2
    assert done.stderr.strip() == f"edge-agent: {target}: already exists; --force replaces it"
    assert target.read_text() == "{}"
    forced = run_cli("models", "manifest", str(model), "-o", str(target), "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(target.read_text())["file"] == "digits.tflite"


def test_manifest_refuses_a_model_name_a_manifest_cannot_spell(tmp_path: Path) -> None:
    model = tmp_path / "my digits (1).tflite"
    shutil.copy(MODELS / "digits_int8.tflite", model)
    done = run_cli("models", "manifest", str(model))
    assert done.returncode == 2
    assert "rename the file (for example to my_digits__1_.tflite)" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my digits (1).tflite"]
    # It still runs as it is.
    ran = run_cli("infer", str(model), str(MODELS / "samples" / "digit_3.png"), "--json")
    assert json.loads(ran.stdout)["result"]["top"][0]["index"] == 3
