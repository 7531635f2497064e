"""Ed25519 signatures over update manifests (and, through sign_bytes/verify_bytes, fleet
commands), and the size + SHA-256 check of each downloaded file."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.errors import UserError
from edge_agent.updates.manifest import (
    FileRef,
    Signature,
    UpdateManifest,
    UpdateRefused,
    canonical_bytes,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# The signing library (about 8 MB resident) is imported by the functions that use it, so
# an agent that never checks a signature does not load it.
_CHUNK = 1024 * 1024


def generate_keypair() -> tuple[bytes, str]:
    """A new key: the private key as unencrypted PKCS#8 PEM, and the public key as base64
    of its 32 raw bytes (the form `[updates] trusted_keys` takes)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, public_b64(key.public_key())


def public_b64(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from a PEM file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read private key: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UserError(f"{path}: not an Ed25519 private key")
    return key


def public_key_from_setting(value: str) -> Ed25519PublicKey:
    """A trusted key as configured: base64 of the 32 raw bytes, or the path of a PEM
    public key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) == 32:
        return Ed25519PublicKey.from_public_bytes(raw)
    path = Path(value)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(
            f"trusted key {value!r}: neither base64 of 32 bytes nor a readable PEM file "
            f"({exc.strerror})"
        ) from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UserError(f"{path}: not an Ed25519 public key")
    return key


def sign_bytes(data: bytes, private_key: Ed25519PrivateKey) -> str:
    """Base64 Ed25519 signature of `data`."""
    return base64.b64encode(private_key.sign(data)).decode()


def verify_bytes(data: bytes, signature_b64: str, public_key: Ed25519PublicKey) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        signature = base64.b64decode(signature_b64, validate=True)
        public_key.verify(signature, data)
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


def sign_manifest(
    manifest: UpdateManifest, private_key: Ed25519PrivateKey, key_id: str
) -> UpdateManifest:
    """A copy of `manifest` signed by `private_key` under `key_id`."""
    value = sign_bytes(canonical_bytes(manifest), private_key)
    return manifest.model_copy(update={"signature": Signature(key_id=key_id, value=value)})


def verify_manifest(
    manifest: UpdateManifest, trusted: Mapping[str, str], allow_unsigned: bool
) -> None:
    """Return if the manifest may be installed, else raise UpdateRefused. A signature that
    is present must verify even where unsigned updates are allowed."""
    signature = manifest.signature
    if signature is None:
        if allow_unsigned:
            return
        raise UpdateRefused("unsigned update refused (updates.allow_unsigned is false)")
    setting = trusted.get(signature.key_id)
    if setting is None:
        raise UpdateRefused(f"signed by unknown key {signature.key_id!r}")
    try:
        key = public_key_from_setting(setting)
    except UserError as exc:
        raise UpdateRefused(f"trusted key {signature.key_id!r} is unusable: {exc}") from None
    if not verify_bytes(canonical_bytes(manifest), signature.value, key):
        raise UpdateRefused(f"bad signature (key {signature.key_id!r})")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, ref: FileRef, role: str | None = None) -> None:
    """The file is exactly what the manifest names: size first (cheap), then SHA-256."""
    label = role or ref.path
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UpdateRefused(f"{label}: cannot read {path}: {exc.strerror}") from None
    if size != ref.size:
        raise UpdateRefused(f"{label}: size {size} != manifest {ref.size}")
    if sha256_file(path) != ref.sha256:
        raise UpdateRefused(f"{label}: sha256 mismatch")
