"""Real TFLite variants of the shipped models, made the way exporters make them, for the
describe and inspect tests: Model-Maker-style metadata (normalisation, colour, a labels
file zipped after the flatbuffer), a uint8 input feeding a QUANTIZE op (the converter's
`inference_input_type=uint8`), and an NCHW input feeding a TRANSPOSE (as onnx2tf leaves
it). Uses LiteRT's own flatbuffer tools; the agent never imports this."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

flatbuffers = pytest.importorskip("flatbuffers", reason="needs flatbuffers (LiteRT installs)")
fu = pytest.importorskip("ai_edge_litert.tools.flatbuffer_utils", reason="needs LiteRT")
S: Any = pytest.importorskip("ai_edge_litert.schema_py_generated", reason="needs LiteRT")

from edge_agent.runtime import metadata_schema_generated as M  # noqa: E402

_QUANTIZE = 114  # BuiltinOperator codes (schema.fbs)
_TRANSPOSE = 39


def with_metadata(
    src: Path,
    dst: Path,
    labels: list[str],
    mean: list[float],
    std: list[float],
    color: int = 1,  # ColorSpaceType.RGB
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """`src` with TFLITE_METADATA for an image classifier and its labels zipped after it."""
    md = M.ModelMetadataT()
    md.name = "classifier with metadata"
    md.version = "2.1"
    md.description = "written by tests/model_surgery.py"
    norm = M.NormalizationOptionsT()
    norm.mean, norm.std = mean, std
    unit = M.ProcessUnitT()
    unit.optionsType = M.ProcessUnitOptions.NormalizationOptions
    unit.options = norm
    image = M.ImagePropertiesT()
    image.colorSpace = color
    content_in = M.ContentT()
    content_in.contentPropertiesType = M.ContentProperties.ImageProperties
    content_in.contentProperties = image
    tensor_in = M.TensorMetadataT()
    tensor_in.name = "image"  # not the model's tensor name: metadata is positional
    tensor_in.content = content_in
    tensor_in.processUnits = [unit]
    label_file = M.AssociatedFileT()
    label_file.name = "labels.txt"
    label_file.type = M.AssociatedFileType.TENSOR_AXIS_LABELS
    content_out = M.ContentT()
    content_out.contentPropertiesType = M.ContentProperties.FeatureProperties
    content_out.contentProperties = M.FeaturePropertiesT()
    tensor_out = M.TensorMetadataT()
    tensor_out.name = "probability"
    tensor_out.content = content_out
    tensor_out.associatedFiles = [label_file]
    subgraph = M.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [tensor_in]
    subgraph.outputTensorMetadata = [tensor_out]
    md.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(0)
    builder.Finish(md.Pack(builder), file_identifier=b"M001")
    model = fu.read_model(str(src))
    buffer = S.BufferT()
    buffer.data = np.frombuffer(bytes(builder.Output()), np.uint8)
    model.buffers.append(buffer)
    entry = S.MetadataT()
    entry.name = b"TFLITE_METADATA"
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    files = {"labels.txt": "\n".join(labels).encode(), **(extra_files or {})}
    return _write(model, dst, files)


def zip_only(src: Path, dst: Path, files: dict[str, bytes]) -> Path:
    """`src` with only a zip appended, as Ultralytics' TFLite export leaves metadata.json."""
    return _write(fu.read_model(str(src)), dst, files)


def uint8_input(src: Path, dst: Path) -> Path:
    """An int8-input model given a uint8 input (zero point + 128) and a QUANTIZE op."""
    model = fu.read_model(str(src))
    graph = model.subgraphs[0]
    old = graph.tensors[graph.inputs[0]]
    new = S.TensorT()
    new.name = b"image_uint8"
    new.shape = np.array(old.shape, np.int32)
    new.type = S.TensorType.UINT8
    new.buffer = _empty_buffer(model)
    quant = S.QuantizationParametersT()
    quant.scale = list(old.quantization.scale)
    quant.zeroPoint = [int(z) + 128 for z in old.quantization.zeroPoint]
    new.quantization = quant
    _prepend_op(model, graph, new, _QUANTIZE, extra_inputs=[])
    return _write(model, dst, {})


def nchw_input(src: Path, dst: Path) -> Path:
    """An NHWC model given an NCHW input [1,C,H,W] and a TRANSPOSE to NHWC in front."""
    model = fu.read_model(str(src))
    graph = model.subgraphs[0]
    old = graph.tensors[graph.inputs[0]]
    n, h, w, c = (int(d) for d in old.shape)
    new = S.TensorT()
    new.name = b"image_nchw"
    new.shape = np.array([n, c, h, w], np.int32)
    new.type = old.type
    new.buffer = _empty_buffer(model)
    new.quantization = old.quantization
    perm_buffer = S.BufferT()
    perm_buffer.data = np.frombuffer(np.array([0, 2, 3, 1], np.int32).tobytes(), np.uint8)
    model.buffers.append(perm_buffer)
    perm = S.TensorT()
    perm.name = b"perm"
    perm.shape = np.array([4], np.int32)
    perm.type = S.TensorType.INT32
    perm.buffer = len(model.buffers) - 1
    graph.tensors.append(perm)
    _prepend_op(model, graph, new, _TRANSPOSE, extra_inputs=[len(graph.tensors) - 1])
    return _write(model, dst, {})


def _empty_buffer(model: Any) -> int:
    model.buffers.append(S.BufferT())
    return len(model.buffers) - 1


def _prepend_op(model: Any, graph: Any, new: Any, code: int, extra_inputs: list[int]) -> None:
    graph.tensors.append(new)
    new_index = len(graph.tensors) - 1
    opcode = S.OperatorCodeT()
    opcode.builtinCode = code
    opcode.deprecatedBuiltinCode = min(code, 127)
    opcode.version = 1
    model.operatorCodes.append(opcode)
    op = S.OperatorT()
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.inputs = np.array([new_index, *extra_inputs], np.int32)
    op.outputs = np.array([graph.inputs[0]], np.int32)
    graph.operators = [op, *graph.operators]
    graph.inputs = np.array([new_index], np.int32)
    model.signatureDefs = []  # they name the old input


def _write(model: Any, dst: Path, files: dict[str, bytes]) -> Path:
    content = bytes(fu.convert_object_to_bytearray(model))
    archive = io.BytesIO()
    if files:
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    dst.write_bytes(content + archive.getvalue())
    return dst


_RESHAPE, _FULLY_CONNECTED = 22, 9


def sensor_classifier(
    dst: Path, window: int = 64, channels: int = 3, classes: int = 4, seed: int = 0
) -> Path:
    """A full-int8 sensor-window classifier written from scratch: int8 [1,window,channels]
    -> RESHAPE -> FULLY_CONNECTED (int8 weights, int32 bias) -> int8 logits [1,classes].
    Fixed random weights: what matters is that the agent feeds it as the raw interpreter
    does."""
    rng = np.random.default_rng(seed)
    features = window * channels
    in_scale, w_scale, out_scale = 0.05, 0.01, 0.05
    weights = rng.integers(-30, 31, size=(classes, features), dtype=np.int8)
    bias = rng.integers(-2000, 2000, size=classes, dtype=np.int32)
    buffers = [S.BufferT()]  # buffer 0 stays empty, by convention

    def const(data: bytes) -> int:
        buffer = S.BufferT()
        buffer.data = np.frombuffer(data, np.uint8)
        buffers.append(buffer)
        return len(buffers) - 1

    def tensor(name: str, shape: list[int], kind: int, buffer: int, scale: float | None) -> Any:
        t = S.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), np.array(shape, np.int32), kind, buffer
        if scale is not None:
            q = S.QuantizationParametersT()
            q.scale, q.zeroPoint = [scale], [0]
            t.quantization = q
        return t

    tensors = [
        tensor("window", [1, window, channels], S.TensorType.INT8, 0, in_scale),
        tensor(
            "new_shape",
            [2],
            S.TensorType.INT32,
            const(np.array([1, features], np.int32).tobytes()),
            None,
        ),
        tensor("flat", [1, features], S.TensorType.INT8, 0, in_scale),
        tensor(
            "weights", [classes, features], S.TensorType.INT8, const(weights.tobytes()), w_scale
        ),
        tensor("bias", [classes], S.TensorType.INT32, const(bias.tobytes()), in_scale * w_scale),
        tensor("logits", [1, classes], S.TensorType.INT8, 0, out_scale),
    ]
    codes = []
    for code in (_RESHAPE, _FULLY_CONNECTED):
        opcode = S.OperatorCodeT()
        opcode.builtinCode = opcode.deprecatedBuiltinCode = code
        opcode.version = 1
        codes.append(opcode)
    reshape = S.OperatorT()
    reshape.opcodeIndex, reshape.inputs, reshape.outputs = (
        0,
        np.array([0, 1], np.int32),
        np.array([2], np.int32),
    )
    dense = S.OperatorT()
    dense.opcodeIndex = 1
    dense.inputs, dense.outputs = np.array([2, 3, 4], np.int32), np.array([5], np.int32)
    dense.builtinOptionsType = S.BuiltinOptions.FullyConnectedOptions
    dense.builtinOptions = S.FullyConnectedOptionsT()
    graph = S.SubGraphT()
    graph.tensors, graph.operators = tensors, [reshape, dense]
    graph.inputs, graph.outputs = np.array([0], np.int32), np.array([5], np.int32)
    model = S.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    model.description = b"sensor classifier for tests"
    return _write(model, dst, {})
