"""Parsing a JSON object from the network, strictly: UTF-8 only (json.loads on bytes would
guess UTF-16 or UTF-32), finite numbers only (NaN, Infinity and 1e999999 would slip past
every comparison), and nesting no deeper than a limit checked before parsing, since the
parser recurses per level and a body thousands of levels deep raises RecursionError
instead of a ValueError. Every refusal is a BodyError naming the problem."""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
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
    payload: bytes, max_depth: int = MAX_DEPTH, max_bytes: int | None = None
) -> dict[str, Any]:
    if max_bytes is not None and len(payload) > max_bytes:
        raise BodyError(f"body is {len(payload)} bytes, more than {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not UTF-8: {exc}") from exc
    try:
        body = loads(text, max_depth)
    except _TooDeep as exc:
        raise BodyError(f"body {exc}") from exc
    except ValueError as exc:
        raise BodyError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BodyError(f"body must be a JSON object, not {type(body).__name__}")
    return body


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
