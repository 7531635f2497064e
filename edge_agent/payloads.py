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
