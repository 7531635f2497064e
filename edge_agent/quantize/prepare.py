"""Makes a float .tflite acceptable to ai-edge-quantizer, with LiteRT's own flatbuffer
tools (no TensorFlow). Models from outside often need three repairs:

- operator codes from the old schema set only `deprecated_builtin_code`; the quantizer
  reads `builtin_code` and would take every operator for ADD;
- fp16 weights (a FLOAT16 constant feeding a DEQUANTIZE) look like activations to the
  quantizer, which then gives CONV_2D weights a zero point LiteRT refuses: each pair is
  folded into one FLOAT32 constant;
- the quantizer calibrates per SignatureDef: a model without one gets `serving_default`
  over its subgraph's inputs and outputs.

Associated files (a zip appended to the flatbuffer: labels, Ultralytics' metadata.json)
do not survive a re-serialisation; `reattach_files` puts them back."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIGNATURE_KEY = "serving_default"


@dataclass
class Prepared:
    content: bytes
    signature_key: str
    input_name: str
    repairs: list[str] = field(default_factory=list)


def prepare(content: bytes) -> Prepared:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    repairs: list[str] = []
    stale = 0
    for code in model.operatorCodes:
        if code.deprecatedBuiltinCode > code.builtinCode:
            code.builtinCode = code.deprecatedBuiltinCode
            stale += 1
    if stale:
        repairs.append(f"{stale} operator codes from the old schema")
    folded = sum(_fold_fp16(model, graph, schema) for graph in model.subgraphs)
    if folded:
        repairs.append(f"{folded} fp16 weights folded to float32")
    fused = sum(_fuse_relu(model, graph, schema) for graph in model.subgraphs)
    if fused:
        repairs.append(f"{fused} RELU fused into the op before it")
    if not model.signatureDefs:
        model.signatureDefs = [_signature(model.subgraphs[0], schema)]
        repairs.append(f"signature {SIGNATURE_KEY!r} added")
    signature = model.signatureDefs[0]
    out = bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if repairs else content
    return Prepared(
        out,
        signature.signatureKey.decode(),
        signature.inputs[0].name.decode(),
        repairs,
    )


def _fold_fp16(model: Any, graph: Any, schema: Any) -> int:
    dequantize = schema.BuiltinOperator.DEQUANTIZE
    kept, folded = [], 0
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode == dequantize:
            source, target = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
            data = model.buffers[source.buffer].data
            if source.type == schema.TensorType.FLOAT16 and data is not None and len(data):
                halves = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float16)
                # The fp16 buffer now holds the float32 copy; the fp16 tensor, read by
                # no op any more, is dropped below so its bytes are not kept twice.
                buffer = model.buffers[source.buffer]
                buffer.data = np.frombuffer(halves.astype(np.float32).tobytes(), np.uint8)
                target.buffer, source.buffer = source.buffer, 0
                folded += 1
                continue
        kept.append(op)
    graph.operators = kept
    if folded:
        _drop_unused_tensors(graph)
    return folded


def _fuse_relu(model: Any, graph: Any, schema: Any) -> int:
    """A standalone RELU after an ADD or a convolution becomes that op's fused activation.
    The converter fuses these; some exports (MediaPipe's) do not, and XNNPACK leaves a
    standalone int8 RELU to the reference kernels, cutting the graph at each one."""
    ops = schema.BuiltinOperator
    fusable = {ops.ADD, ops.CONV_2D, ops.DEPTHWISE_CONV_2D}
    producer = {out: op for op in graph.operators for out in op.outputs}
    readers: dict[int, int] = {}
    for op in graph.operators:
        for index in op.inputs:
            readers[index] = readers.get(index, 0) + 1
    outputs = set(int(i) for i in graph.outputs)
    kept, fused = [], 0
    for op in graph.operators:
        if model.operatorCodes[op.opcodeIndex].builtinCode == ops.RELU:
            source = int(op.inputs[0])
            before = producer.get(source)
            options: Any = getattr(before, "builtinOptions", None)
            if (
                before is not None
                and model.operatorCodes[before.opcodeIndex].builtinCode in fusable
                and getattr(options, "fusedActivationFunction", None)
                == schema.ActivationFunctionType.NONE
                and readers.get(source) == 1
                and source not in outputs
            ):
                options.fusedActivationFunction = schema.ActivationFunctionType.RELU
                before.outputs = [int(op.outputs[0])]
                fused += 1
                continue
        kept.append(op)
    graph.operators = kept
    if fused:
        _drop_unused_tensors(graph)
    return fused


def _drop_unused_tensors(graph: Any) -> None:
    def indices(values: Any) -> list[int]:
        return [int(i) for i in (values if values is not None else []) if i >= 0]

    used = set(indices(graph.inputs)) | set(indices(graph.outputs))
    for op in graph.operators:
        used |= set(indices(op.inputs)) | set(indices(op.outputs))
        used |= set(indices(op.intermediates))
    order = sorted(used)
    new_index = {old: new for new, old in enumerate(order)}

    def remap(values: Any) -> list[int]:
        return [new_index[int(i)] if i >= 0 else -1 for i in (values if values is not None else [])]

    graph.tensors = [graph.tensors[i] for i in order]
    graph.inputs, graph.outputs = remap(graph.inputs), remap(graph.outputs)
    for op in graph.operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None:
            op.intermediates = remap(op.intermediates)


def _signature(graph: Any, schema: Any) -> Any:
    def entry(index: int) -> Any:
        tensor_map = schema.TensorMapT()
        tensor_map.name = graph.tensors[index].name
        tensor_map.tensorIndex = index
        return tensor_map

    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY.encode()
    signature.subgraphIndex = 0
    signature.inputs = [entry(i) for i in graph.inputs]
    signature.outputs = [entry(i) for i in graph.outputs]
    return signature


def attached_files(content: bytes) -> dict[str, bytes]:
    """Files in a zip appended to the flatbuffer; none if there is no such zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def reattach_files(content: bytes, files: dict[str, bytes]) -> bytes:
    if not files:
        return content
    buffer = io.BytesIO(content)
    # Mode "a" on data that is not a zip appends a new archive after it.
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
