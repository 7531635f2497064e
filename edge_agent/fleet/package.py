"""Turning a model file into an update: its files gathered in one folder (the model, its
manifest with the update's version, labels, CPU twin, golden set) and the update manifest
that names each with its size and SHA-256, ready to sign."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from edge_agent.errors import UserError
from edge_agent.runtime.manifest import load_manifest, manifest_path
from edge_agent.updates.manifest import (
    SCHEMA,
    FileRef,
    GoldenSpec,
    Requires,
    UpdateManifest,
)
from edge_agent.updates.signing import sha256_file


def build_update(
    model: Path,
    name: str,
    version: str,
    out: Path,
    *,
    golden: Path | None = None,
    min_agreement: float = 0.95,
    requires: list[str] | None = None,
    shadow: dict[str, Any] | None = None,
) -> UpdateManifest:
    """Copies the update's files into `out` and returns its (unsigned) manifest; `shadow`,
    the fields of its shadow policy (docs/shadow.md), or None to replace at once."""
    model_manifest, _ = load_manifest(model)  # refuses a model without a valid manifest
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, out / model.name)
    # The model's own manifest carries the update's version: results then name it.
    raw: dict[str, Any] = json.loads(manifest_path(model).read_text())
    raw["version"] = version
    own = manifest_path(out / model.name)
    own.write_text(json.dumps(raw, indent=2) + "\n")
    files: dict[str, Path] = {"model": out / model.name, "manifest": own}
    if model_manifest.cpu_twin:
        twin = model.parent / model_manifest.cpu_twin
        shutil.copyfile(twin, out / twin.name)
        files["cpu_twin"] = out / twin.name
    labels = raw.get("labels")
    if isinstance(labels, str):  # a labels file beside the model, not a list
        shutil.copyfile(model.parent / labels, out / labels)
        files["labels"] = out / labels
    if golden is not None:
        if not golden.is_file():
            raise UserError(f"{golden}: no such golden set")
        shutil.copyfile(golden, out / "golden.npz")
        files["golden"] = out / "golden.npz"
    return UpdateManifest.model_validate(
        {
            "schema": SCHEMA,
            "name": name,
            "version": version,
            "created": time.time(),
            "files": {role: _ref(path) for role, path in files.items()},
            "golden": GoldenSpec(min_agreement=min_agreement) if golden else None,
            "requires": Requires(delegates=requires or []),
            "shadow": shadow,
        }
    )


def _ref(path: Path) -> FileRef:
    return FileRef(path=path.name, size=path.stat().st_size, sha256=sha256_file(path))
