"""TFLite Model Metadata read from the model file itself: the `TFLITE_METADATA` flatbuffer
(Model Maker, MediaPipe, the metadata writers) and the associated files zipped after the
model (labels; Ultralytics' `metadata.json`).

The model's own tables are walked by hand (a few fields, no schema module to import); the
metadata flatbuffer is parsed with the vendored flatc module, which needs `flatbuffers`.
Where that package is missing (tflite-runtime installs) the metadata is skipped with a note
and only the zip is read."""

from __future__ import annotations

import importlib
import io
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

from edge_agent.json_body import BodyError, parse_object
from edge_agent.runtime.flatbuffer import field_ref, field_scalar, string, tables, u32

METADATA_ENTRY = "TFLITE_METADATA"
_METADATA_IDENTIFIER = b"M001"
# Model table slots (schema.fbs): buffers, metadata; Buffer: data, offset, size;
# Metadata: name, buffer.
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_ENTRY_NAME, _ENTRY_BUFFER = 0, 1
ULTRALYTICS_FILE = "metadata.json"
# Ultralytics' metadata.json is a few kB with its class names (LVIS's 1,203 take about
# 20 kB): anything far larger is not one.
MAX_METADATA_JSON_BYTES = 1024 * 1024
# Associated files are labels, vocabularies and metadata.json: an entry bigger than this is
# not read (a model that arrives with an update could carry a zip bomb).
MAX_ASSOCIATED_FILE_BYTES = 16 * 1024 * 1024
# Colour spaces of the schema's ColorSpaceType, by value.
_COLOR_SPACES = {1: "RGB", 2: "GRAY"}
_LABEL_FILE_TYPES = {2: "axis", 3: "value"}  # TENSOR_AXIS_LABELS, TENSOR_VALUE_LABELS


@dataclass(frozen=True)
class TensorMeta:
    """What the metadata says of one tensor, in the metadata's own order."""

    name: str
    content: str | None = None  # image, feature, bounding_box, audio
    color: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    stats_range: tuple[float, float] | None = None
    label_file: str | None = None
    label_kind: str | None = None  # axis (one per class index) or value (class ids as values)
    score_threshold: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class ModelMetadata:
    entries: list[str] = field(default_factory=list)
    name: str | None = None
    description: str | None = None
    version: str | None = None
    author: str | None = None
    license: str | None = None
    inputs: list[TensorMeta] = field(default_factory=list)
    outputs: list[TensorMeta] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)
    ultralytics: dict[str, Any] | None = None
    note: str | None = None  # why part of it could not be read

    @property
    def found(self) -> bool:
        return bool(self.inputs or self.outputs or self.ultralytics or self.name)

    def text_file(self, name: str) -> list[str] | None:
        """An associated text file as its non-empty lines."""
        raw = self.files.get(name)
        if raw is None:
            return None
        text = raw.decode("utf-8", errors="replace")
        return [line.strip() for line in text.splitlines() if line.strip()]

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "entries": self.entries,
            "files": sorted(self.files),
        }
        for key in ("name", "description", "version", "author", "license", "note"):
            if getattr(self, key):
                info[key] = getattr(self, key)
        if self.inputs:
            info["inputs"] = [t.as_dict() for t in self.inputs]
        if self.outputs:
            info["outputs"] = [t.as_dict() for t in self.outputs]
        if self.ultralytics is not None:
            info["ultralytics"] = {
                k: v for k, v in self.ultralytics.items() if k in ("task", "imgsz", "stride")
            } | {"names": len(self.ultralytics.get("names") or {})}
        return info


def read_metadata(content: bytes) -> ModelMetadata:
    """Everything the file says about itself. A file whose metadata cannot be parsed reads
    as having none, with the reason in `note`: it must still run."""
    files, skipped = _associated_files(content)
    ultralytics, ultralytics_note = _ultralytics(files)
    zip_note = (
        f"associated file(s) over {MAX_ASSOCIATED_FILE_BYTES} bytes not read: " + ", ".join(skipped)
        if skipped
        else None
    )

    def noted(note: str | None) -> str | None:
        return "; ".join(n for n in (note, zip_note, ultralytics_note) if n) or None

    try:
        entries = _metadata_entries(content)
    except (struct.error, IndexError, ValueError) as exc:
        return ModelMetadata(files=files, ultralytics=ultralytics, note=noted(f"unreadable: {exc}"))
    raw = entries.get(METADATA_ENTRY)
    names = sorted(entries)
    if not raw or raw[4:8] != _METADATA_IDENTIFIER:
        return ModelMetadata(entries=names, files=files, ultralytics=ultralytics, note=noted(None))
    schema = _schema()
    if schema is None:
        return ModelMetadata(
            entries=names,
            files=files,
            ultralytics=ultralytics,
            note=noted(f"{METADATA_ENTRY} skipped: the flatbuffers package is not installed"),
        )
    try:
        parsed = schema.ModelMetadataT.InitFromPackedBuf(raw, 0)
    except Exception as exc:  # a corrupt flatbuffer fails in many ways inside flatc code
        return ModelMetadata(
            entries=names, files=files, ultralytics=ultralytics, note=noted(f"unreadable: {exc!r}")
        )
    subgraphs = parsed.subgraphMetadata or []
    first = subgraphs[0] if subgraphs else None
    return ModelMetadata(
        entries=names,
        name=_text(parsed.name),
        description=_text(parsed.description),
        version=_text(parsed.version),
        author=_text(parsed.author),
        license=_text(parsed.license),
        inputs=[_tensor(t) for t in (first.inputTensorMetadata or [])] if first else [],
        outputs=[_tensor(t) for t in (first.outputTensorMetadata or [])] if first else [],
        files=files,
        ultralytics=ultralytics,
        note=noted(None),
    )


def _schema() -> Any:
    try:
        return importlib.import_module("edge_agent.runtime.metadata_schema_generated")
    except ImportError:
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _tensor(meta: Any) -> TensorMeta:
    content = meta.content
    kind = color = None
    if content is not None and content.contentProperties is not None:
        kind = {1: "feature", 2: "image", 3: "bounding_box", 4: "audio"}.get(
            int(content.contentPropertiesType)
        )
        if kind == "image":
            color = _COLOR_SPACES.get(int(content.contentProperties.colorSpace))
    mean = std = None
    threshold = None
    for unit in meta.processUnits or []:
        options = unit.options
        # ProcessUnitOptions: 1 NormalizationOptions, 3 ScoreThresholdingOptions.
        if int(unit.optionsType) == 1 and options is not None:
            mean = [float(v) for v in (options.mean if options.mean is not None else [])] or None
            std = [float(v) for v in (options.std if options.std is not None else [])] or None
        elif int(unit.optionsType) == 3 and options is not None:
            threshold = float(options.globalScoreThreshold)
    stats = meta.stats
    stats_range = None
    has_stats = stats is not None and stats.min is not None and stats.max is not None
    if has_stats and len(stats.min) and len(stats.max):
        stats_range = (float(stats.min[0]), float(stats.max[0]))
    label_file = label_kind = None
    for associated in meta.associatedFiles or []:
        kind_name = _LABEL_FILE_TYPES.get(int(associated.type))
        if kind_name is not None and associated.name:
            label_file, label_kind = _text(associated.name), kind_name
            break
    return TensorMeta(
        name=_text(meta.name) or "",
        content=kind,
        color=color,
        mean=mean,
        std=std,
        stats_range=stats_range,
        label_file=label_file,
        label_kind=label_kind,
        score_threshold=threshold,
    )


def _associated_files(content: bytes) -> tuple[dict[str, bytes], list[str]]:
    """The zip appended after the flatbuffer (empty in many models: no names, no harm),
    and the names of entries too big to read. zipfile stops reading an entry at its stated
    size (and fails its CRC past it), so the stated size bounds what is inflated."""
    files: dict[str, bytes] = {}
    skipped: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                if info.file_size > MAX_ASSOCIATED_FILE_BYTES:
                    skipped.append(info.filename)
                    continue
                files[info.filename] = archive.read(info)
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return {}, []
    return files, skipped


def _ultralytics(files: dict[str, bytes]) -> tuple[dict[str, Any] | None, str | None]:
    """Ultralytics' metadata.json, or None with the reason it was not taken."""
    raw = files.get(ULTRALYTICS_FILE)
    if raw is None:
        return None, None
    try:
        return parse_object(raw, max_bytes=MAX_METADATA_JSON_BYTES, what=ULTRALYTICS_FILE), None
    except BodyError as exc:
        return None, f"{exc}; ignored"


def ultralytics_names(data: dict[str, Any]) -> list[str] | None:
    """`names` as Ultralytics writes it: {"0": "person", ...} (or a list)."""
    names = data.get("names")
    if isinstance(names, list):
        return [str(n) for n in names]
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except ValueError:
            return None
        if sorted(by_index) == list(range(len(by_index))):
            return [by_index[i] for i in range(len(by_index))]
    return None


# The model's own flatbuffer: just the metadata entries and the buffers they point at.


def _metadata_entries(content: bytes) -> dict[str, bytes]:
    root = u32(content, 0)
    entries = field_ref(content, root, _MODEL_METADATA)
    buffers = field_ref(content, root, _MODEL_BUFFERS)
    if entries is None:
        return {}
    found: dict[str, bytes] = {}
    for entry in tables(content, entries):
        name_at = field_ref(content, entry, _ENTRY_NAME)
        name = string(content, name_at) if name_at is not None else ""
        index = field_scalar(content, entry, _ENTRY_BUFFER, "<I")
        found[name] = _buffer(content, buffers, int(index)) if buffers is not None else b""
    return found


def _buffer(content: bytes, buffers: int, index: int) -> bytes:
    found = tables(content, buffers)
    if index >= len(found):
        raise ValueError(f"metadata buffer {index} of {len(found)}")
    table = found[index]
    data = field_ref(content, table, _BUFFER_DATA)
    if data is not None:
        size = u32(content, data)
        return content[data + 4 : data + 4 + size]
    # Models over 2 GB keep buffers after the flatbuffer, by offset and size.
    offset = int(field_scalar(content, table, _BUFFER_OFFSET, "<Q"))
    size = int(field_scalar(content, table, _BUFFER_SIZE, "<Q"))
    return content[offset : offset + size] if offset > 1 else b""
