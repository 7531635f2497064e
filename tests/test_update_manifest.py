"""The update manifest, its signature and the file checks, with real Ed25519 keys and the
shipped model files as the payload."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import UserError
from edge_agent.updates.manifest import (
    FileRef,
    UpdateManifest,
    UpdateRefused,
    canonical_bytes,
    check_limits,
    parse_manifest,
    refuse_older,
)
from edge_agent.updates.signing import (
    generate_keypair,
    load_private_key,
    public_key_from_setting,
    sign_bytes,
    sign_manifest,
    verify_bytes,
    verify_file,
    verify_manifest,
)
from tests.conftest import MODELS

LIMIT = 256 * 2**20


def file_ref(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"path": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def manifest_dict(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "schema": "edge-agent/update/1",
        "name": "digits",
        "version": "1.1.0",
        "created": 1795700000.0,
        "files": {
            "model": file_ref(MODELS / "digits_int8.tflite"),
            "manifest": file_ref(MODELS / "digits_int8.json"),
        },
        "requires": {"delegates": []},
        "source": {"kind": "http", "url": "http://127.0.0.1:8000/digits/1.1.0/"},
    }
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pem, public = generate_keypair()
    path = tmp_path_factory.mktemp("keys") / "ops.pem"
    path.write_bytes(pem)
    return path, public


def signed(keys: tuple[Path, str], key_id: str = "ops-2026") -> UpdateManifest:
    return sign_manifest(parse_manifest(manifest_dict(), LIMIT), load_private_key(keys[0]), key_id)


def test_canonical_form_ignores_key_order_whitespace_source_and_signature(
    keys: tuple[Path, str],
) -> None:
    data = manifest_dict()
    shuffled = json.dumps(dict(reversed(list(data.items()))), indent=4).encode()
    first = canonical_bytes(parse_manifest(json.dumps(data).encode(), LIMIT))
    assert canonical_bytes(parse_manifest(shuffled, LIMIT)) == first
    other_source = manifest_dict(source={"kind": "mqtt", "transfer": "t-1"})
    assert canonical_bytes(parse_manifest(other_source, LIMIT)) == first
    assert canonical_bytes(signed(keys)) == first
    assert b" " not in first and b'"source"' not in first and b'"signature"' not in first
    assert list(json.loads(first)) == sorted(json.loads(first))


def test_signed_manifest_verifies_after_a_round_trip_over_either_transport(
    keys: tuple[Path, str],
) -> None:
    trusted = {"ops-2026": keys[1]}
    manifest = signed(keys)
    received = parse_manifest(manifest.to_json(), LIMIT)
    verify_manifest(received, trusted, allow_unsigned=False)
    # The source is not signed: the same signature holds when pushed over MQTT.
    pushed = received.as_dict() | {
        "source": {"kind": "mqtt", "transfer": "abc", "chunk_size": 1024}
    }
    verify_manifest(parse_manifest(pushed, LIMIT), trusted, allow_unsigned=False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", "1.1.1"),
        ("name", "detector"),
        ("created", 1795700001.0),
        ("requires", {"delegates": ["edgetpu"]}),
    ],
)
def test_any_tampered_field_is_a_bad_signature(
    keys: tuple[Path, str], field: str, value: Any
) -> None:
    tampered = signed(keys).as_dict() | {field: value}
    with pytest.raises(UpdateRefused, match="bad signature"):
        verify_manifest(parse_manifest(tampered, LIMIT), {"ops-2026": keys[1]}, False)


def test_tampered_file_hash_is_a_bad_signature(keys: tuple[Path, str]) -> None:
    data = signed(keys).as_dict()
    data["files"]["model"]["sha256"] = "0" * 64
    with pytest.raises(UpdateRefused, match="bad signature"):
        verify_manifest(parse_manifest(data, LIMIT), {"ops-2026": keys[1]}, False)


def test_unknown_key_and_wrong_key_are_refused(keys: tuple[Path, str]) -> None:
    manifest = signed(keys, key_id="someone")
    with pytest.raises(UpdateRefused, match="signed by unknown key 'someone'"):
        verify_manifest(manifest, {"ops-2026": keys[1]}, allow_unsigned=True)
    _, other_public = generate_keypair()
    with pytest.raises(UpdateRefused, match="bad signature"):
        verify_manifest(manifest, {"someone": other_public}, allow_unsigned=False)


def test_unsigned_refused_unless_allowed() -> None:
    manifest = parse_manifest(manifest_dict(), LIMIT)
    with pytest.raises(UpdateRefused) as refused:
        verify_manifest(manifest, {}, allow_unsigned=False)
    assert refused.value.reason == "unsigned update refused (updates.allow_unsigned is false)"
    assert isinstance(refused.value, UserError)
    verify_manifest(manifest, {}, allow_unsigned=True)


def test_trusted_key_may_be_a_pem_file(keys: tuple[Path, str], tmp_path: Path) -> None:
    public = load_private_key(keys[0]).public_key()
    from cryptography.hazmat.primitives import serialization

    pem = tmp_path / "ops.pub.pem"
    pem.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    verify_manifest(signed(keys), {"ops-2026": str(pem)}, allow_unsigned=False)
    with pytest.raises(UpdateRefused, match="trusted key 'ops-2026' is unusable"):
        verify_manifest(signed(keys), {"ops-2026": str(tmp_path / "nope.pem")}, False)
    with pytest.raises(UserError, match=r"not an Ed25519 private key|not an unencrypted PEM"):
        load_private_key(pem)


def test_sign_and_verify_bytes(keys: tuple[Path, str]) -> None:
    private = load_private_key(keys[0])
    public = public_key_from_setting(keys[1])
    signature = sign_bytes(b"reboot", private)
    assert len(base64.b64decode(signature)) == 64
    assert verify_bytes(b"reboot", signature, public)
    assert not verify_bytes(b"reboot!", signature, public)
    assert not verify_bytes(b"reboot", "not base64!", public)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/b", "a\\b", ".hidden", "..", ".", ""])
def test_file_names_that_could_leave_the_folder_are_refused(path: str) -> None:
    data = manifest_dict()
    data["files"]["labels"] = {"path": path, "size": 1, "sha256": "0" * 64}
    with pytest.raises(UserError) as err:
        parse_manifest(data, LIMIT)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("update manifest: files.labels.path: "), message


def test_name_and_version_may_not_hold_a_path() -> None:
    for field, value in (("name", "../digits"), ("version", "1.0/../../x"), ("version", "..")):
        with pytest.raises(UserError, match=f"update manifest: {field}: String should match"):
            parse_manifest(manifest_dict(**{field: value}), LIMIT)


def test_structure_problems_are_one_clear_line() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            manifest_dict(files={"model": file_ref(MODELS / "digits_int8.tflite")}),
            "files.manifest: required",
        ),
        (manifest_dict(extra=1), "extra: Extra inputs are not permitted"),
        (manifest_dict(schema="edge-agent/update/2"), "schema: Input should be"),
        (manifest_dict(source={"kind": "mqtt", "transfer": "a/b"}), "source.mqtt.transfer"),
        (manifest_dict(source={"kind": "ftp"}), "source: Input tag 'ftp'"),
        (manifest_dict(golden={"min_agreement": 2}), "golden.min_agreement"),
        (manifest_dict(golden={"min_agreement": 0.9}), "golden: given, but files has no 'golden'"),
    ]
    for data, expected in cases:
        with pytest.raises(UserError) as err:
            parse_manifest(data, LIMIT)
        assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)
    with pytest.raises(UserError, match="not valid JSON"):
        parse_manifest(b"{", LIMIT)
    with pytest.raises(UserError, match="must be a JSON object"):
        parse_manifest(b"[]", LIMIT)


def test_manifest_file_must_be_named_after_the_model() -> None:
    data = manifest_dict()
    data["files"]["manifest"] = file_ref(MODELS / "digits_float.json")
    with pytest.raises(UserError, match=r"files\.manifest\.path: must be 'digits_int8\.json'"):
        parse_manifest(data, LIMIT)


def test_oversize_files_are_refused_before_download() -> None:
    data = manifest_dict()
    size = data["files"]["model"]["size"]
    with pytest.raises(UpdateRefused, match=f"files.model.size: {size} bytes is over the limit"):
        parse_manifest(data, size - 1)
    check_limits(parse_manifest(data, size), size)


def test_verify_file_checks_size_then_hash(tmp_path: Path) -> None:
    source = MODELS / "digits_int8.tflite"
    ref = FileRef.model_validate(file_ref(source))
    good = tmp_path / source.name
    good.write_bytes(source.read_bytes())
    verify_file(good, ref, "model")
    good.write_bytes(source.read_bytes()[:-2])
    with pytest.raises(UpdateRefused, match=f"model: size {ref.size - 2} != manifest {ref.size}"):
        verify_file(good, ref, "model")
    flipped = bytearray(source.read_bytes())
    flipped[100] ^= 0xFF
    good.write_bytes(bytes(flipped))
    with pytest.raises(UpdateRefused, match="model: sha256 mismatch"):
        verify_file(good, ref, "model")
    with pytest.raises(UpdateRefused, match="cannot read"):
        verify_file(tmp_path / "missing", ref, "model")


@pytest.mark.parametrize(
    "version, created, installed, installed_created, ok",
    [
        ("1.2.0", 1795700000.0, "1.1.0", 1795600000.0, True),
        ("1.1.0", 1795700000.0, "1.2.0", None, False),  # numbers say older
        ("1.10.0", 1795700000.0, "1.9.0", None, True),  # 10 > 9, not text order
        ("beta", 1795600000.0, "alpha", 1795700000.0, False),  # signed time says older
        ("beta", 1795800000.0, "alpha", 1795700000.0, True),
        ("2.0.0", 1795600000.0, "1.0.0", 1795700000.0, False),  # a replay re-versioned
    ],
)
def test_an_update_older_than_the_installed_one_is_refused(
    version: str, created: float, installed: str, installed_created: float | None, ok: bool
) -> None:
    manifest = parse_manifest(manifest_dict(version=version, created=created), LIMIT)
    if ok:
        refuse_older(manifest, installed, installed_created)
    else:
        with pytest.raises(UserError, match=f"older than the installed {installed}"):
            refuse_older(manifest, installed, installed_created)
