"""The agent's settings, section by section (pipelines in config/pipelines.py, the broker
link and commands in config/link.py, models in config/models.py). Unknown keys are errors;
every field says what it is for, so `configs/agent.toml` and `config validate` can explain
themselves."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from edge_agent.config.environment import environment_layer, merge_over
from edge_agent.config.link import CommandsSettings as CommandsSettings
from edge_agent.config.link import MqttSettings as MqttSettings
from edge_agent.config.link import TlsSettings as TlsSettings
from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.config.models import BatchSettings as BatchSettings
from edge_agent.config.models import InputOverrides as InputOverrides
from edge_agent.config.models import ModelSettings as ModelSettings
from edge_agent.config.pipelines import CacheSettings as CacheSettings
from edge_agent.config.pipelines import DecodeOverrides as DecodeOverrides
from edge_agent.config.pipelines import EscalateSettings as EscalateSettings
from edge_agent.config.pipelines import GateSettings as GateSettings
from edge_agent.config.pipelines import PipelineSettings as PipelineSettings
from edge_agent.config.secrets import SecretSpec
from edge_agent.config.section import LIVE, NEEDS_RESTART, Name, restarts
from edge_agent.config.section import Section as Section
from edge_agent.runtime.backend import BackendName
from edge_agent.runtime.delegates import CpuConfig, DelegateEntry
from edge_agent.sources import SourceEntry

RESERVED_DEVICE_IDS = ("all", "group")


def _cpu() -> DelegateEntry:
    return CpuConfig()


class DeviceSettings(Section):
    id: Name = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "edge",
        description="Device id: MQTT client id and topic level. Default: the host name.",
    )
    groups: list[Name] = Field(default_factory=list, description="Fleet groups it belongs to.")

    @field_validator("id")
    @classmethod
    def _not_a_fleet_level(cls, value: str) -> str:
        # {prefix}/all/cmd/... and {prefix}/group/NAME/cmd/... are broadcast and group
        # commands: a device by either name could not be told apart from them.
        if value in RESERVED_DEVICE_IDS:
            raise ValueError(f"{value!r} is a topic level of its own (broadcast or group)")
        return value

    state_dir: Annotated[Path, LOCAL_ONLY] = Field(
        Path("../var"),
        description="Where the agent keeps its state (outbox, models, journals); "
        "relative paths are taken from the config file's folder.",
    )


class RuntimeSettings(Section):
    backend: BackendName = Field(
        "auto",
        description="Interpreter package: auto (LiteRT, else tflite-runtime), litert or "
        "tflite-runtime.",
    )
    threads: int | None = Field(
        None, ge=1, le=64, description="CPU threads per interpreter; empty: one per core."
    )
    delegates: list[DelegateEntry] = Field(
        default_factory=lambda: [_cpu()],
        description="Delegates to try in order; the CPU is always the last resort.",
    )


class OutputSettings(Section):
    jsonl: Annotated[str | None, LOCAL_ONLY] = Field(
        None,
        description='Also write each result as a JSON line to this file ("-": stdout); '
        "relative paths are taken from the config file's folder.",
    )


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    format: Literal["auto", "text", "journal", "json"] = Field(
        "auto", description="auto: journal under systemd, else text."
    )
    status_interval_s: float = Field(
        1.0, ge=0, description="Seconds between status lines on the terminal; 0: none."
    )


class ServiceSettings(Section):
    stuck_after_s: float = Field(
        20.0,
        gt=0,
        description="An inference running longer than this stops the systemd watchdog pings "
        "(set WatchdogSec= in the unit above it): the service is restarted.",
    )


class ClassPolicy(Section):
    """A class's policy. A table given in the file replaces the class's default policy
    whole: a key left out takes the value below, not the class's default."""

    when_full: Literal["reject_new", "drop_oldest"] = Field(
        "drop_oldest",
        description="What gives when the outbox is full: the oldest undelivered messages of "
        "the class dropped so the newest are kept, or new ones refused (held in memory, up "
        "to 16 MB, until there is room). Either way counted and reported.",
    )
    # TOML has no null: leaving the key out is how a file says "never".
    ttl_s: float | None = Field(
        None,
        description="Undelivered messages expire this many seconds after they were made "
        "(applies to those already stored too); left out: never.",
    )
    max_bytes: int | None = Field(
        None,
        gt=0,
        description="Bytes of undelivered messages of this class at most, within the "
        "outbox's own bound; left out: only that bound.",
    )


class OutboxSettings(Section):
    durability: Literal["full", "normal"] = Field(
        "full",
        description="full: every commit survives power loss; normal: survives a crash of the "
        "agent, may lose the last commits on power loss (faster on slow storage).",
    )
    max_bytes: int = Field(
        500_000_000,
        ge=100_000,
        description="Most bytes of undelivered messages the outbox keeps (its WAL counts "
        "against it too). Full: each class's when_full applies.",
    )
    max_disk_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Most share of the free disk (plus the outbox's own files) the outbox may "
        "take; the smaller of this and max_bytes bounds it.",
    )
    retention_s: float = Field(
        24 * 3600, ge=0, description="Delivered results are kept this long for local use."
    )
    commit_interval_ms: float = Field(
        20.0, ge=0, le=5000, description="Longest wait to gather a batch into one commit."
    )
    results: ClassPolicy = Field(
        default_factory=lambda: ClassPolicy(when_full="drop_oldest", ttl_s=7 * 24 * 3600),
        description="Inference results: kept up to 7 days undelivered; when full, the oldest "
        "go so the newest are kept (docs/outbox.md says why).",
    )
    events: ClassPolicy = Field(
        default_factory=lambda: ClassPolicy(when_full="drop_oldest", ttl_s=7 * 24 * 3600),
        description="Events (status changes, command replies): delivered first.",
    )
    telemetry: ClassPolicy = Field(
        default_factory=lambda: ClassPolicy(when_full="drop_oldest", ttl_s=24 * 3600),
        description="Telemetry: delivered last, the oldest dropped first.",
    )
    escalations: ClassPolicy = Field(
        default_factory=lambda: ClassPolicy(
            when_full="drop_oldest", ttl_s=3600, max_bytes=50_000_000
        ),
        description="Escalation requests waiting for the link: sent by the escalation client, "
        "not the sender; one that expires leaves the device's result standing, marked so.",
    )


class TelemetrySettings(Section):
    interval_s: float = Field(30.0, gt=0, description="Seconds between telemetry messages.")


class UpdatesSettings(Section):
    allow_unsigned: bool = Field(False, description="Accept model updates without signature.")
    trusted_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Ed25519 public keys that may sign updates (and commands), by key id: "
        "base64 of the 32 raw bytes, or a PEM file path.",
    )
    keep_versions: int = Field(3, ge=1, le=100, description="Versions kept per model.")
    max_model_bytes: int = Field(
        256 * 2**20, gt=0, description="Largest model (or other update file) accepted."
    )
    download_timeout_s: float = Field(
        30.0, gt=0, description="A download with no progress for this long is retried."
    )
    chunk_window: int = Field(
        8, ge=1, le=256, description="MQTT transfer: chunks asked for ahead of the writer."
    )
    health_window_s: float = Field(
        60.0, ge=0, description="After activation: how long the new model is watched."
    )
    max_latency_ratio: float = Field(
        1.5, gt=1, description="Rolled back if its p95 infer latency exceeds the old one by this."
    )
    latency_slack_ms: float = Field(
        0.2, ge=0, description="...and by more than this many milliseconds."
    )
    max_error_rate: float = Field(
        0.05, ge=0, le=1, description="Rolled back if this share of its inferences fail."
    )


class HttpSettings(Section):
    enabled: bool = Field(False, description="Serve /metrics, /api/status and a status page.")
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on. Anything beyond localhost (0.0.0.0, a LAN address) "
        "needs token_file: without it the endpoint is not started.",
    )
    port: int = Field(
        9110, ge=0, le=65535, description="TCP port to listen on; 0: any free one, logged."
    )
    token_file: Annotated[SecretSpec | None, LOCAL_ONLY] = Field(
        None,
        description="File holding the bearer token clients must send, or credential:NAME "
        "for a systemd credential in $CREDENTIALS_DIRECTORY. Given, every request needs it, "
        "on localhost too.",
    )
    recent_events: int = Field(
        50, ge=0, le=10_000, description="Recent events /api/status shows, newest last."
    )
    snapshot_quality: int = Field(
        80, ge=1, le=100, description="JPEG quality of /api/snapshot.jpg."
    )
    reuse_ms: float = Field(
        250.0,
        ge=0,
        le=10_000,
        description="/metrics and /api/status answers are reused this long: any number of "
        "scrapers and open pages cost one render each per period; 0: a render per request.",
    )


class AgentSettings(Section):
    # Each section says how a change to it takes effect (config/section.py: Applies).
    device: Annotated[DeviceSettings, NEEDS_RESTART] = Field(
        default_factory=DeviceSettings, description="This device."
    )
    runtime: Annotated[RuntimeSettings, LIVE] = Field(
        default_factory=RuntimeSettings, description="Interpreter and delegates."
    )
    models: Annotated[dict[Name, ModelSettings], LIVE] = Field(
        default_factory=dict, description="Models by name."
    )
    sources: Annotated[dict[Name, SourceEntry], restarts("the changed source")] = Field(
        default_factory=dict, description="Inputs by name."
    )
    pipelines: Annotated[dict[Name, PipelineSettings], LIVE] = Field(
        default_factory=dict, description="Pipelines by name: a source into a model."
    )
    output: Annotated[OutputSettings, NEEDS_RESTART] = Field(
        default_factory=OutputSettings, description="Result copies."
    )
    outbox: Annotated[OutboxSettings, NEEDS_RESTART] = Field(
        default_factory=OutboxSettings, description="Local outbox."
    )
    mqtt: Annotated[MqttSettings, NEEDS_RESTART] = Field(
        default_factory=MqttSettings, description="Broker link."
    )
    telemetry: Annotated[TelemetrySettings, LIVE] = Field(
        default_factory=TelemetrySettings, description="Telemetry."
    )
    updates: Annotated[UpdatesSettings, LIVE] = Field(
        default_factory=UpdatesSettings, description="Updates."
    )
    commands: Annotated[CommandsSettings, NEEDS_RESTART] = Field(
        default_factory=CommandsSettings, description="Fleet commands."
    )
    logging: Annotated[LoggingSettings, LIVE] = Field(
        default_factory=LoggingSettings, description="Logging."
    )
    service: Annotated[ServiceSettings, LIVE] = Field(
        default_factory=ServiceSettings, description="Running under systemd."
    )
    http: Annotated[HttpSettings, NEEDS_RESTART] = Field(
        default_factory=HttpSettings, description="Local HTTP endpoint: metrics, status, page."
    )

    @model_validator(mode="after")
    def _references_exist(self) -> AgentSettings:
        for name, pipeline in self.pipelines.items():
            if pipeline.source not in self.sources:
                raise ValueError(f"pipelines.{name}.source: no source named {pipeline.source!r}")
            if pipeline.model not in self.models:
                raise ValueError(f"pipelines.{name}.model: no model named {pipeline.model!r}")
        return self

    @model_validator(mode="before")
    @classmethod
    def _environment_wins(cls, data: Any) -> Any:
        # The EDGE_AGENT_* variables over whatever the settings were built from.
        layer = environment_layer(cls.model_fields)
        if not layer or not isinstance(data, dict):
            return data
        return merge_over(data, layer)
