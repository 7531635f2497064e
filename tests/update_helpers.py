"""Signed updates of the shipped digits model, for the update tests and the benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.fleet.package import build_update
from edge_agent.updates.manifest import UpdateManifest
from edge_agent.updates.signing import generate_keypair, load_private_key, sign_manifest
from tests.conftest import ROOT

MODELS = ROOT / "models"
DIGITS = MODELS / "digits_int8.tflite"


class Keys:
    """An operator's signing key and the public half a device trusts."""

    def __init__(self, folder: Path, key_id: str = "ops") -> None:
        private_pem, self.public = generate_keypair()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{key_id}.pem").write_bytes(private_pem)
        self.private: Ed25519PrivateKey = load_private_key(folder / f"{key_id}.pem")
        self.key_id = key_id

    def config(self) -> str:
        return f'[updates]\ntrusted_keys = {{ {self.key_id} = "{self.public}" }}\n'

    def sign(self, manifest: UpdateManifest) -> UpdateManifest:
        return sign_manifest(manifest, self.private, self.key_id)


def golden_set(folder: Path, count: int = 60, wrong: bool = False) -> Path:
    """Held-out digits with their labels (shifted by one when `wrong`)."""
    data = np.load(MODELS / "data" / "digits_test.npz")
    expected = data["y"][:count]
    if wrong:
        expected = (expected + 1) % 10
    path = folder / "golden-src.npz"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(path, inputs=data["x"][:count], expected=expected)
    return path


def digits_update(
    folder: Path,
    keys: Keys | None,
    version: str = "1.1.0",
    *,
    model: Path = DIGITS,
    wrong_golden: bool = False,
) -> tuple[UpdateManifest, Path]:
    """A (signed, unless keys is None) update of the `digits` model; returns the manifest
    and the folder holding its files."""
    out = folder / f"digits-{version}"
    golden = golden_set(folder / "golden", wrong=wrong_golden)
    manifest = build_update(model, "digits", version, out, golden=golden, min_agreement=0.9)
    return (keys.sign(manifest) if keys else manifest), out
