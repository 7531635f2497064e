"""A bounds check of a TFLite flatbuffer before any runtime reads it. tflite-runtime does
not verify the buffer, and a truncated file can crash it (SIGSEGV) instead of raising.
Every table, vector and string the runtime will follow must lie inside the file."""

from __future__ import annotations

import struct

# Field slot -> what it holds, for the parts of the TFLite schema that reference memory.
# ("tables", schema): a vector of tables; "vec1"/"vec4"/"vec8": scalar vectors by element
# size; "str": a string; ("table", schema): one table.
Schema = dict[int, str | tuple[str, "Schema"]]

_QUANT: Schema = {0: "vec4", 1: "vec4", 2: "vec4", 3: "vec8"}
_TENSOR: Schema = {0: "vec4", 3: "str", 4: ("table", _QUANT), 7: "vec4"}
_OPERATOR: Schema = {1: "vec4", 2: "vec4", 5: "vec1", 7: "vec1", 8: "vec4"}
_SUBGRAPH: Schema = {
    0: ("tables", _TENSOR),
    1: "vec4",
    2: "vec4",
    3: ("tables", _OPERATOR),
    4: "str",
}
_OPCODE: Schema = {1: "str"}
_BUFFER: Schema = {0: "vec1"}
_METADATA: Schema = {0: "str"}
_MODEL: Schema = {
    1: ("tables", _OPCODE),
    2: ("tables", _SUBGRAPH),
    3: "str",
    4: ("tables", _BUFFER),
    5: "vec4",
    6: ("tables", _METADATA),
}


class FlatbufferError(ValueError):
    pass


def check_model(data: bytes) -> None:
    """Raises FlatbufferError naming the first reference that points outside the file."""
    _Checker(data).table(_u32(data, 0, "root offset"), _MODEL, "model")


def _u32(data: bytes, at: int, what: str) -> int:
    if at < 0 or at + 4 > len(data):
        raise FlatbufferError(f"{what} at byte {at} lies past the end ({len(data)} bytes)")
    value: int = struct.unpack_from("<I", data, at)[0]
    return value


class _Checker:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def table(self, at: int, schema: Schema, what: str) -> None:
        data = self.data
        vtable = at - struct.unpack_from("<i", data, at)[0] if at + 4 <= self.size else -1
        if vtable < 0 or vtable + 4 > self.size:
            raise FlatbufferError(f"{what}: table at byte {at} is outside the file")
        vt_size, obj_size = struct.unpack_from("<HH", data, vtable)
        if vtable + vt_size > self.size or at + obj_size > self.size:
            raise FlatbufferError(f"{what}: table at byte {at} runs past the end")
        for slot, kind in schema.items():
            if 4 + 2 * slot + 2 > vt_size:
                continue
            offset = struct.unpack_from("<H", data, vtable + 4 + 2 * slot)[0]
            if offset == 0:
                continue
            field = at + offset
            target = field + _u32(data, field, f"{what} field {slot}")
            self.follow(target, kind, f"{what} field {slot}")

    def follow(self, at: int, kind: str | tuple[str, Schema], what: str) -> None:
        if isinstance(kind, tuple):
            form, schema = kind
            if form == "table":
                self.table(at, schema, what)
                return
            count = self.vector(at, 4, what)
            for i in range(count):
                element = at + 4 + 4 * i
                self.table(element + _u32(self.data, element, what), schema, f"{what}[{i}]")
            return
        width = {"vec1": 1, "vec4": 4, "vec8": 8, "str": 1}[kind]
        self.vector(at, width, what)

    def vector(self, at: int, width: int, what: str) -> int:
        count = _u32(self.data, at, f"{what} length")
        if at + 4 + count * width > self.size:
            raise FlatbufferError(f"{what}: {count} elements run past the end")
        return count
