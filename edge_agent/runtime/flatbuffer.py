"""Reading a few fields of a TFLite flatbuffer by hand: no schema module to import, so the
model metadata reader and `edge-fleet` (which installs no runtime) share it. Offsets are
trusted: run flatbuffer_check.check_model on bytes that came from outside first."""

from __future__ import annotations

import struct


def u32(content: bytes, at: int) -> int:
    value: int = struct.unpack_from("<I", content, at)[0]
    return value


def field_offset(content: bytes, table: int, slot: int) -> int:
    """The field's offset inside its table, 0 when the table does not have it."""
    vtable = table - struct.unpack_from("<i", content, table)[0]
    vt_size = struct.unpack_from("<H", content, vtable)[0]
    if 4 + 2 * slot + 2 > vt_size:
        return 0
    offset: int = struct.unpack_from("<H", content, vtable + 4 + 2 * slot)[0]
    return offset


def field_ref(content: bytes, table: int, slot: int) -> int | None:
    """Where the table, vector or string a field points at begins; None when absent."""
    offset = field_offset(content, table, slot)
    if offset == 0:
        return None
    at = table + offset
    return at + u32(content, at)


def field_scalar(content: bytes, table: int, slot: int, fmt: str) -> float:
    """A scalar field in struct format `fmt`; 0 (the schema default here) when absent."""
    offset = field_offset(content, table, slot)
    if offset == 0:
        return 0
    value: float = struct.unpack_from(fmt, content, table + offset)[0]
    return value


def tables(content: bytes, vector: int) -> list[int]:
    count = u32(content, vector)
    return [vector + 4 + 4 * i + u32(content, vector + 4 + 4 * i) for i in range(count)]


def ints(content: bytes, vector: int) -> list[int]:
    count = u32(content, vector)
    return list(struct.unpack_from(f"<{count}i", content, vector + 4))


def string(content: bytes, at: int) -> str:
    size = u32(content, at)
    return content[at + 4 : at + 4 + size].decode("utf-8", errors="replace")
