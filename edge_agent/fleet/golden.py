"""Golden sets: the `.npz` an update carries for its staging check on the device
(updates/staging.py `golden_agreement`): `inputs`, one tensor per sample in the shape of
the model's input without its batch dimension, and `expected`, the class (argmax of the
first output) each must give.

`check_golden` reads only the model's flatbuffer and the arrays' headers (no NumPy, no
runtime), so `sign` refuses a wrong set on an operator's laptop, before the device would.
`golden make` runs the model with the agent's own runtime and preprocessing, the one fleet
command that needs them: they are imported when it runs."""

from __future__ import annotations

import argparse
import ast
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.errors import UserError
from edge_agent.fleet import output
from edge_agent.runtime.flatbuffer import field_ref, field_scalar, ints, tables, u32

if TYPE_CHECKING:
    import numpy.typing as npt

    from edge_agent.runtime.predictor import Predictor

# TensorType of the TFLite schema -> NumPy dtype name.
_TENSOR_TYPES = {
    0: "float32",
    1: "float16",
    2: "int32",
    3: "uint8",
    4: "int64",
    6: "bool",
    7: "int16",
    9: "int8",
    10: "float64",
    15: "uint32",
    16: "uint16",
}
# Slots (schema.fbs): Model.subgraphs; SubGraph.tensors, inputs; Tensor.shape, type.
_MODEL_SUBGRAPHS, _SUBGRAPH_TENSORS, _SUBGRAPH_INPUTS = 2, 0, 1
_TENSOR_SHAPE, _TENSOR_TYPE = 0, 1
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_MAX = 64 * 1024  # a .npy header is a short dict literal
_NPY_KINDS = {"f": "float", "i": "int", "u": "uint", "b": "bool"}


@dataclass(frozen=True)
class InputSpec:
    """A model's first input as its file declares it."""

    model: Path
    shape: tuple[int, ...]
    dtype: str

    @property
    def sample(self) -> list[int]:
        return list(self.shape[1:])

    def takes(self) -> str:
        return f"model {self.model.name} takes {self.sample} {self.dtype} per input"


@dataclass(frozen=True)
class ArrayHeader:
    shape: tuple[int, ...]
    descr: str  # '<f4', '|i1', ...

    @property
    def kind(self) -> str:
        return self.descr[1:2] if self.descr[:1] in "<>|=" else self.descr[:1]

    @property
    def dtype(self) -> str:
        size = self.descr.lstrip("<>|=")[1:]
        name = _NPY_KINDS.get(self.kind, self.descr)
        return "bool" if name == "bool" else f"{name}{int(size or 0) * 8}"


def model_input(path: Path) -> InputSpec:
    """The first input of the model's first subgraph, read from the file alone."""
    from edge_agent.runtime.flatbuffer_check import FlatbufferError, check_model

    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such model file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        check_model(content)  # every offset below then lies inside the file
        root = u32(content, 0)
        subgraph = tables(content, _ref(content, root, _MODEL_SUBGRAPHS))[0]
        tensors = tables(content, _ref(content, subgraph, _SUBGRAPH_TENSORS))
        first = ints(content, _ref(content, subgraph, _SUBGRAPH_INPUTS))[0]
        tensor = tensors[first]
        shape = tuple(ints(content, _ref(content, tensor, _TENSOR_SHAPE)))
        kind = int(field_scalar(content, tensor, _TENSOR_TYPE, "<B"))
    except (FlatbufferError, IndexError, struct.error, _Missing) as exc:
        raise UserError(f"{path}: not a TFLite model with an input tensor ({exc})") from None
    if kind not in _TENSOR_TYPES:
        raise UserError(f"{path}: input tensor type {kind} is not one a golden set can hold")
    return InputSpec(path, shape, _TENSOR_TYPES[kind])


def check_golden(golden: Path, spec: InputSpec) -> tuple[int, ArrayHeader]:
    """Refuses a golden set the device would refuse, or would read wrongly: the number of
    samples and the inputs' header when it fits."""
    headers = _npz_headers(golden)
    missing = [name for name in ("inputs", "expected") if name not in headers]
    if missing:
        has = ", ".join(sorted(headers)) or "none"
        raise UserError(
            f"{golden}: no array {missing[0]!r} (has: {has}); a golden set holds "
            "'inputs' and 'expected'"
        )
    inputs, expected = headers["inputs"], headers["expected"]
    count = inputs.shape[0] if inputs.shape else 0
    if list(inputs.shape[1:]) != spec.sample:
        raise UserError(
            f"{golden}: inputs are {list(inputs.shape)}, {spec.takes()} "
            f"(expected [N, {', '.join(map(str, spec.sample))}])"
        )
    if inputs.kind != "f" and inputs.dtype != spec.dtype:
        raise UserError(
            f"{golden}: inputs are {inputs.dtype}, {spec.takes()} "
            "(or float, quantized on the device)"
        )
    if count == 0:
        raise UserError(f"{golden}: inputs hold no sample")
    if expected.kind not in "iu" or expected.shape != (count,):
        raise UserError(
            f"{golden}: expected is {list(expected.shape)} {expected.dtype}; "
            f"it must be [{count}] integers, one class per input"
        )
    return count, inputs


# golden make --------------------------------------------------------------------------


def make(args: argparse.Namespace) -> int:
    spec = model_input(args.model)  # a bad model file is named before the runtime loads
    out: Path = args.out
    if out.suffix != ".npz":
        raise UserError(f"-o {out}: a golden set is a .npz file")
    if not out.parent.is_dir():
        raise UserError(f"-o {out}: no folder {out.parent}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be more than 0")
    np, predictor = _runtime(args)
    samples: list[npt.NDArray[Any]] = []
    names: list[str] = []
    for path in args.inputs:
        for i, sample in enumerate(_samples(path, spec, predictor)):
            samples.append(sample)
            names.append(str(path) if i == 0 else f"{path}[{i}]")
    model = predictor.model
    expected = []
    for sample in samples:
        # As the device's check does: one input at a time, argmax of the first output.
        scores = model.dequantize(model.run(sample[None]))[0][0]
        expected.append(int(np.argmax(scores)))
    temp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with temp.open("wb") as f:
            np.savez(f, inputs=np.stack(samples), expected=np.asarray(expected, dtype=np.int64))
        os.replace(temp, out)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise UserError(f"-o {out}: cannot write: {exc.strerror}") from None
    count, header = check_golden(out, spec)  # what sign and the device will check
    if args.json:
        output.json_line(
            {
                "out": str(out),
                "inputs": count,
                "shape": [count, *spec.sample],
                "dtype": header.dtype,
                "delegate": model.delegate,
                "expected": dict(zip(names, expected, strict=True)),
            }
        )
        return 0
    labels = model.labels
    rows = [
        (name, str(cls), labels[cls] if cls < len(labels) else "-")
        for name, cls in zip(names, expected, strict=True)
    ]
    output.table(("INPUT", "CLASS", "LABEL"), rows)
    print(
        f"{out}: {count} input(s) of {spec.sample} {header.dtype}, "
        f"expected classes from {model.info.name} {model.info.version} on {model.delegate}"
    )
    return 0


def _runtime(args: argparse.Namespace) -> tuple[Any, Predictor]:
    """NumPy and the model loaded with the agent's runtime; one line when it is missing."""
    try:
        import numpy as np

        from edge_agent.runtime.backend import select_backend
        from edge_agent.runtime.loader import load_model
        from edge_agent.runtime.predictor import Predictor
    except ImportError as exc:
        raise UserError(
            f"golden make runs the model and needs the agent's runtime: {exc.name or exc} "
            "is not installed (pip install edge-agent with ai-edge-litert and OpenCV)"
        ) from None
    try:
        backend = select_backend(args.runtime)
    except UserError as exc:
        raise UserError(
            f"golden make runs the model and needs the agent's runtime: {exc}"
        ) from None
    model = load_model(args.model, backend, (), args.threads)
    return np, Predictor(model)


def _samples(path: Path, spec: InputSpec, predictor: Predictor) -> list[npt.NDArray[Any]]:
    """An image is one sample, preprocessed as the agent does; a .npy is one sample, or
    [N, ...] of them; float values are quantized with the model's input parameters."""
    if path.suffix.lower() != ".npy":
        return [predictor.load_input(path)[0]]
    from edge_agent.runtime.predictor import load_npy

    array = load_npy(path)
    sample = spec.sample
    if list(array.shape) == sample:
        batch = array[None]
    elif len(array.shape) == len(sample) + 1 and list(array.shape[1:]) == sample:
        batch = array
    else:
        raise UserError(
            f"{path}: shape {list(array.shape)} does not fit: {spec.takes()} "
            f"(give [{', '.join(map(str, sample))}] or [N, {', '.join(map(str, sample))}])"
        )
    return [predictor.tensor_sample(one, str(path)) for one in batch]


# Reading without NumPy --------------------------------------------------------------------


def _npz_headers(path: Path) -> dict[str, ArrayHeader]:
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for entry in archive.namelist():
                if entry.endswith(".npy"):
                    with archive.open(entry) as f:
                        headers[entry.removesuffix(".npy")] = _npy_header(f.read(_NPY_HEADER_MAX))
            return headers
    except FileNotFoundError:
        raise UserError(f"{path}: no such golden set") from None
    except (OSError, zipfile.BadZipFile, ValueError, SyntaxError) as exc:
        raise UserError(f"{path}: not a readable .npz golden set ({exc})") from None


def _npy_header(data: bytes) -> ArrayHeader:
    if not data.startswith(_NPY_MAGIC) or len(data) < 10:
        raise ValueError("an entry is not a .npy array")
    major = data[6]
    if major == 1:
        size, start = struct.unpack_from("<H", data, 8)[0], 10
    else:
        size, start = struct.unpack_from("<I", data, 8)[0], 12
    fields = ast.literal_eval(data[start : start + size].decode("latin-1"))
    if not isinstance(fields, dict) or not isinstance(fields.get("descr"), str):
        raise ValueError("a .npy header without a plain dtype")
    shape = fields.get("shape")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) for d in shape):
        raise ValueError("a .npy header without a shape")
    header = ArrayHeader(shape, fields["descr"])
    if header.kind not in _NPY_KINDS:
        raise ValueError(f"dtype {fields['descr']!r} is not numeric")
    return header


class _Missing(ValueError):
    pass


def _ref(content: bytes, table: int, slot: int) -> int:
    at = field_ref(content, table, slot)
    if at is None:
        raise _Missing(f"field {slot} missing")
    return at
