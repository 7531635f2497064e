"""Strict parsing of JSON bodies from the network: UTF-8 only, finite numbers only, nesting
checked before the recursive parser sees it; each refusal names the problem."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.commands.schemas import Ping
from edge_agent.json_body import (
    MAX_DEPTH,
    BodyError,
    nesting_depth,
    parse_object,
    parse_value,
    read_file,
    read_object,
)


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": []}]}', 4),
        ('["]]]]", "[[[[", "\\"[[", "\\\\"]', 1),  # brackets in strings, escaped quotes
        ('{"a": "\\\\\\"{{{"}', 1),
        ('"[[[', 0),  # an unterminated string runs to the end
    ],
)
def test_nesting_depth_counts_brackets_outside_strings(text: str, depth: int) -> None:
    assert nesting_depth(text) == depth


def test_a_body_at_the_limit_parses_and_one_level_more_is_refused() -> None:
    at_limit = b'{"a":' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH
    assert nesting_depth(at_limit.decode()) == MAX_DEPTH
    parse_object(at_limit)
    with pytest.raises(BodyError, match=f"{MAX_DEPTH + 1} levels deep, more than {MAX_DEPTH}"):
        parse_object(b"[" + at_limit + b"]")


def test_the_depth_check_is_linear_on_hostile_bodies() -> None:
    """Bodies shaped to make a string pattern backtrack: each is scanned in one pass."""
    size = 256 * 1024
    for body in (b'"\\"' * (size // 3), b"[" * size, b'"' * size, b'\\"' * (size // 2)):
        started = time.perf_counter()
        with pytest.raises(BodyError):
            parse_object(body)
        assert time.perf_counter() - started < 1.0, body[:10]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        ('{"a": 1}'.encode("utf-32"), "not UTF-8"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": 1e999999}', "number 1e999999 is out of range"),
        (b'{"a": -1.5e400}', "out of range"),
        (b"[1]", "JSON object, not list"),
        (b"{", "not JSON"),
    ],
)
def test_refusals_name_the_problem(payload: bytes, reason: str) -> None:
    with pytest.raises(BodyError, match=reason):
        parse_object(payload)


def test_a_well_formed_body_parses_as_json_does() -> None:
    body = {"request_id": "r-1", "s": "[{é}]", "x": [1.5, -2, None, True], "n": 1e308}
    assert parse_object(json.dumps(body, ensure_ascii=False).encode()) == body


@pytest.mark.parametrize("field", ["issued_at", "expires_at"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_command_times_must_be_finite(field: str, value: float) -> None:
    """Also where a command is built without the parser (NaN passes every comparison)."""
    with pytest.raises(ValidationError, match="finite number"):
        Ping.model_validate({"request_id": "r-1", field: value})


def test_other_json_from_outside_is_refused_naming_the_thing() -> None:
    assert parse_value(b"[1, 2.5]", what="line") == [1, 2.5]
    with pytest.raises(BodyError, match=r"^line nests 40 levels deep, more than 32$"):
        parse_value(b"[" * 40 + b"]" * 40, what="line")
    with pytest.raises(BodyError, match=r"^line is not JSON: NaN is not a JSON number$"):
        parse_value(b"[NaN]", what="line")
    with pytest.raises(BodyError, match=r"^line is 9 bytes, more than 8$"):
        parse_value(b"[1,2,3,4]", max_bytes=8, what="line")


def test_a_file_is_read_no_further_than_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_bytes(b'{"labels": ["' + b"x" * 10_000_000 + b'"]}')
    with pytest.raises(BodyError) as err:
        read_file(path, 4096)
    assert str(err.value) == f"{path} is 10000016 bytes, more than 4096"
    path.write_bytes(b'["a"]')
    assert read_file(path, 4096) == ["a"]
    with pytest.raises(BodyError, match=r"^files\.manifest must be a JSON object, not list$"):
        read_object(path, 4096, what="files.manifest")
    path.write_bytes(b'{"a": ' * 33 + b"1" + b"}" * 33)
    with pytest.raises(BodyError) as err:
        read_object(path, 4096)
    assert str(err.value) == f"{path} nests 33 levels deep, more than 32"
