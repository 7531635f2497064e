"""What `edge-fleet` prints: aligned tables for people, JSON lines with `--json` for scripts,
and the few short forms (ages, sizes, a reply's result in one line) the tables share."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import IO, Any

ENVELOPE = ("schema", "id", "seq", "ts", "boot_id", "device")  # every payload has these
_CELL = 60  # a table cell longer than this is cut, so a row stays one line


def table(header: Sequence[str], rows: Sequence[Sequence[str]], out: IO[str] | None = None) -> None:
    """Columns padded to their widest cell; the last one is left ragged."""
    stream = out or sys.stdout
    cells = [list(header), *([*map(_cut, row[:-1]), row[-1]] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    for row in cells:
        padded = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        stream.write("  ".join([*padded, row[-1]]).rstrip() + "\n")
    stream.flush()


def json_line(data: dict[str, Any], out: IO[str] | None = None) -> None:
    stream = out or sys.stdout
    stream.write(json.dumps(data, sort_keys=True) + "\n")
    stream.flush()


def compact(value: Any) -> str:
    """One line of JSON without the spaces: a result or payload in a table cell."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def without_envelope(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in ENVELOPE}


def age(seconds: float) -> str:
    """The two largest units: 45s, 3m07s, 5h02m, 12d03h."""
    left, parts = max(0, int(seconds)), list[str]()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count or parts or unit == "s":
            parts.append(f"{count:02d}{unit}" if parts else f"{count}{unit}")
    return "".join(parts[:2])


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _cut(cell: str) -> str:
    return cell if len(cell) <= _CELL else cell[: _CELL - 3] + "..."
