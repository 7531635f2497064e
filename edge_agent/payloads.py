"""What the agent publishes. Every payload carries a schema version, a unique id, a
per-boot sequence number, the time, the boot id and the device: consumers drop
duplicates by id, since delivery is at least once."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class ResultPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_: Literal["edge-agent/result/1"] = Field("edge-agent/result/1", alias="schema")
    id: str = Field(description="Unique id: consumers drop duplicates by it.")
    seq: int = Field(description="Per-boot sequence number, from 1.")
    ts: float = Field(description="Unix time the frame was captured.")
    boot_id: str
    device: str
    pipeline: str
    source: dict[str, Any] = Field(description="Source name, frame index and details.")
    model: ModelRef
    delegate: str
    cached: bool = Field(False, description="The result of an identical earlier input.")
    latency_ms: dict[str, float] = Field(description="Per-stage latency of this result.")
    result: dict[str, Any] = Field(description="The decoded output.")


class RefinedResult(ResultPayload):
    """A result that settles an escalated one (docs/escalation.md): a new record naming the
    original by `refines`. Answered: the bigger model's result and model; expired (never
    sent within its TTL) or timeout (no answer in time): the device's own result stands."""

    refines: str = Field(description="The id of the result this one settles.")
    escalation: Literal["answered", "expired", "timeout"]


TensorFormat = Literal["jpeg", "tensor"]


class EscalationRequest(BaseModel):
    """What a device sends to an escalation server: the frame (a JPEG) or the model's input
    tensor (float32 real values, little-endian, base64), and the device's own result."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal["edge-agent/escalation-request/1"] = Field(
        "edge-agent/escalation-request/1", alias="schema"
    )
    id: str = Field(description="The request id: answers carry it; servers answer it once.")
    ts: float
    device: str
    pipeline: str
    result_id: str = Field(description="The id of the device's result this escalates.")
    reply_to: str = Field(description="Where the answer goes when there is no response topic.")
    format: TensorFormat
    shape: list[int] = Field(description="The tensor's shape; for a JPEG, height, width.")
    data: str = Field(description="Base64 of the JPEG, or of the float32 tensor.")
    crop: list[int] | None = Field(
        None, description="A JPEG of part of the frame: its [x1, y1, x2, y2] in frame pixels."
    )
    result: ResultPayload = Field(description="The device's own result.")


class EscalationAnswer(BaseModel):
    """An escalation server's answer to one request."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal["edge-agent/escalation-answer/1"] = Field(
        "edge-agent/escalation-answer/1", alias="schema"
    )
    id: str
    request_id: str
    ts: float
    server: str = Field(description="Which server answered (its client id).")
    model: ModelRef
    delegate: str
    latency_ms: float = Field(description="The server's time from request to answer.")
    result: dict[str, Any] = Field(description="The bigger model's decoded output.")


class Envelope:
    """Identity shared by everything this process publishes: boot id, device, sequence."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.boot_id = uuid.uuid4().hex
        self.started = time.time()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def next_seq(self) -> int:
        with self._lock:
            return next(self._seq)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex
