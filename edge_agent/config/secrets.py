"""Secrets (MQTT password, TLS key) kept out of the config file: a path to a file, or
`credential:NAME` for a systemd credential (LoadCredential=) in $CREDENTIALS_DIRECTORY."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

_PREFIX = "credential:"


def secret_path(spec: str) -> Path:
    """Where the secret named by `spec` lives; raises ValueError saying why it cannot."""
    if spec.startswith(_PREFIX):
        name = spec[len(_PREFIX) :]
        if not name or "/" in name:
            raise ValueError(f"{spec!r}: a credential name is one plain file name")
        folder = os.environ.get("CREDENTIALS_DIRECTORY")
        if not folder:
            raise ValueError(
                f"credential {name!r}: $CREDENTIALS_DIRECTORY is not set "
                "(LoadCredential= in the systemd unit provides it)"
            )
        path = Path(folder) / name
        if not path.is_file():
            raise ValueError(f"credential {name!r} not found in {folder}")
        return path
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"{spec}: file not found")
    return path


def read_secret(spec: str) -> str:
    """The secret's text, without the trailing newline editors add."""
    path = secret_path(spec)
    try:
        text = path.read_text().rstrip("\r\n")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    if not text:
        # The unit's SetCredential= fallback when the file was never put in place.
        raise ValueError(f"{spec}: empty (not provisioned: {path} has no secret in it)")
    return text


def _findable(spec: str) -> str:
    secret_path(spec)  # a ValueError saying why it cannot be found
    return spec


# A file path or credential:NAME (systemd LoadCredential=), checked where it would be read.
SecretSpec = Annotated[str, AfterValidator(_findable)]
