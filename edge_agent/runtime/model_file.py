"""Reads a model file and says plainly what is wrong with one that is not a TFLite model."""

from __future__ import annotations

from pathlib import Path

from edge_agent.errors import UserError
from edge_agent.runtime.flatbuffer_check import FlatbufferError, check_model

# A TFLite flatbuffer carries its file identifier at bytes 4..8.
_IDENTIFIER = b"TFL3"
_MIN_SIZE = 8


def read_model_file(path: Path) -> bytes:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a model file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read model file: {exc.strerror}") from None
    if not content:
        raise UserError(f"{path}: model file is empty")
    if len(content) < _MIN_SIZE or content[4:8] != _IDENTIFIER:
        raise UserError(f"{path}: not a TFLite model (no TFL3 identifier)")
    try:
        check_model(content)
    except FlatbufferError as exc:
        raise UserError(f"{path}: model file is truncated or corrupt ({exc})") from None
    return content
