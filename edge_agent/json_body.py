"""Parsing JSON from outside (a command body, a file that came with an update or inside a
model, a line from a sensor), strictly: UTF-8 only (json.loads on bytes would guess UTF-16
or UTF-32), finite numbers only (NaN, Infinity and 1e999999 would slip past every
comparison), within a size limit, and nesting no deeper than a limit checked before
parsing, since the parser recurses per level and a body thousands of levels deep raises
RecursionError instead of a ValueError. Every refusal is a BodyError, one line naming the
thing and the problem."""

from __future__ import annotations

import json
import math
import os
import re
from itertools import accumulate
from pathlib import Path
from typing import Any

# Far deeper than any command, config change or update manifest (about 6 levels), far
# shallower than the interpreter's recursion limit.
MAX_DEPTH = 32

# A JSON string, or an unterminated one running to the end: every quote starts a match,
# so one pass is linear in the body's length.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class BodyError(ValueError):
    pass


class _TooDeep(ValueError):
    pass


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes a command signature covers: sorted keys, no spaces, UTF-8 as is (the
    dispatcher checks them, edge-fleet signs them)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_object(
    payload: bytes, max_depth: int = MAX_DEPTH, max_bytes: int | None = None, *, what: str = "body"
) -> dict[str, Any]:
    """A JSON object; BodyError names `what` and the problem ("body is not UTF-8: ...")."""
    body = parse_value(payload, max_depth, max_bytes, what=what)
    if not isinstance(body, dict):
        raise BodyError(f"{what} must be a JSON object, not {type(body).__name__}")
    return body


def parse_value(
    payload: bytes, max_depth: int = MAX_DEPTH, max_bytes: int | None = None, *, what: str = "body"
) -> Any:
    """Any JSON value, as strictly as parse_object: for a line from a sensor, say."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise BodyError(f"{what} is {len(payload)} bytes, more than {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"{what} is not UTF-8: {exc}") from exc
    try:
        return loads(text, max_depth)
    except _TooDeep as exc:
        raise BodyError(f"{what} {exc}") from exc
    except ValueError as exc:
        raise BodyError(f"{what} is not JSON: {exc}") from exc


def read_file(
    path: Path, max_bytes: int, max_depth: int = MAX_DEPTH, *, what: str | None = None
) -> Any:
    """A JSON file that came from outside (with an update, beside a model), read no further
    than `max_bytes`. BodyError names `what` (the path, unless given) and the problem;
    OSError is left to the caller."""
    what = str(path) if what is None else what
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BodyError(f"{what} is {max(size, len(data))} bytes, more than {max_bytes}")
    return parse_value(data, max_depth, what=what)


def read_object(
    path: Path, max_bytes: int, max_depth: int = MAX_DEPTH, *, what: str | None = None
) -> dict[str, Any]:
    """read_file, for a file that must hold a JSON object."""
    what = str(path) if what is None else what
    found = read_file(path, max_bytes, max_depth, what=what)
    if not isinstance(found, dict):
        raise BodyError(f"{what} must be a JSON object, not {type(found).__name__}")
    return found


def loads(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """Any JSON value, as strictly as a body (finite numbers, nesting checked first): for
    text from outside that is not a command body, such as an update manifest. ValueError
    names the problem."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise _TooDeep(f"nests {depth} levels deep, more than {max_depth}")
    try:
        return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError as exc:  # not expected past the depth check; never unanswered
        raise _TooDeep(f"nests too deep (more than {max_depth} levels)") from exc


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, brackets in strings aside."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
