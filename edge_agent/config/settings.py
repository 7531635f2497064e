"""Every section of the agent's settings. Unknown keys are errors; every field says what it
is for, so `configs/agent.toml` and `config validate` can explain themselves."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from edge_agent.config.environment import environment_layer, merge_over
from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.config.models import BatchSettings as BatchSettings
from edge_agent.config.models import InputOverrides as InputOverrides
from edge_agent.config.models import ModelSettings as ModelSettings
from edge_agent.config.secrets import read_secret, secret_path
from edge_agent.config.section import LIVE, NEEDS_RESTART, restarts
from edge_agent.config.section import Section as Section
from edge_agent.runtime.backend import BackendName
from edge_agent.runtime.decoders.options import (
    AnomalyThreshold,
    IouThreshold,
    MaxDetections,
    ScoreThreshold,
    TopK,
)
from edge_agent.runtime.delegates import CpuConfig, DelegateEntry
from edge_agent.sources import SourceEntry

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
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


class DecodeOverrides(Section):
    """Options of the pipeline's decoder over its model's manifest: any option that
    decoder's Config has (docs/decoders.md), checked when the model is loaded. The options
    several built-in decoders share are checked here already."""

    model_config = ConfigDict(extra="allow")

    top_k: TopK | None = Field(None, description="classification: classes reported.")
    score_threshold: ScoreThreshold | None = Field(
        None, description="detection, yolo, ssd_anchors: lowest score reported."
    )
    max_detections: MaxDetections | None = Field(
        None, description="detection, yolo, ssd_anchors: most boxes per frame."
    )
    iou_threshold: IouThreshold | None = Field(
        None, description="yolo, ssd_anchors: overlap above which NMS drops a box."
    )
    threshold: AnomalyThreshold | None = Field(
        None, description="anomaly: a score above this is anomalous."
    )


class GateSettings(Section):
    enabled: bool = Field(False, description="Skip frames too like the last inferred one.")
    threshold: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Mean absolute difference (0..1) on a small gray copy below which a "
        "frame counts as unchanged.",
    )
    size: int = Field(32, ge=4, le=256, description="Side of the gray copy compared.")
    max_skip_s: float = Field(10.0, gt=0, description="Infer at least this often, changed or not.")


class CacheSettings(Section):
    enabled: bool = Field(False, description="Reuse the result of an identical input.")
    size: int = Field(256, ge=1, le=100_000, description="Results kept, least recent dropped.")


class EscalateSettings(Section):
    """Which results also go to a bigger model elsewhere (docs/escalation.md). A result is
    escalated when its top score lies in [min_score, max_score] and its top label is in
    `classes` (empty: any), or, outside that, by the audit sample; all within the budget."""

    enabled: bool = Field(False, description="Send uncertain results to an escalation server.")
    min_score: float = Field(0.3, ge=0, le=1, description="Lower end of the top-1 score band.")
    max_score: float = Field(0.6, ge=0, le=1, description="Upper end of the top-1 score band.")
    classes: list[str] = Field(
        default_factory=list, description="Top-1 labels escalated in the band; empty: any label."
    )
    sample_rate: float = Field(
        0.0, ge=0, le=1, description="Share of the other results sent too, for audit."
    )
    max_per_minute: int = Field(60, ge=0, description="Requests per minute at most (budget).")
    max_bytes_per_hour: int = Field(
        50_000_000, ge=0, description="Request bytes per hour at most (budget)."
    )
    send: Literal["jpeg", "tensor"] = Field(
        "jpeg", description="What goes: the frame as a JPEG, or the model's input tensor."
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of a sent frame.")
    timeout_s: float = Field(
        10.0, gt=0, description="A sent request with no answer after this is given up."
    )
    max_answer_bytes: int = Field(
        65536, gt=0, description="Larger answers are dropped, with one log line."
    )
    queue: int = Field(
        64, ge=1, le=10_000, description="Offers waiting to be encoded; more are dropped."
    )

    @model_validator(mode="after")
    def _band(self) -> EscalateSettings:
        if self.min_score > self.max_score:
            raise ValueError("min_score is above max_score")
        return self


class PipelineSettings(Section):
    source: Name = Field(description="Name of a [sources.NAME] entry.")
    model: Name = Field(description="Name of a [models.NAME] entry.")
    enabled: bool = Field(True, description="A disabled pipeline is configured but not run.")
    queue_size: int = Field(
        2,
        ge=1,
        le=1000,
        description="Frames waiting for inference; when full, on_full says what happens.",
    )
    on_full: Literal["auto", "drop_oldest", "wait"] = Field(
        "auto",
        description="When queue_size frames wait: drop_oldest keeps latency bounded (a live "
        "camera wants the newest frame); wait holds the source until there is room, so "
        "every frame gets a result (a recording wants all of them). auto: wait for "
        "recorded input (a video file, an image folder, a file of lines not followed), "
        "drop_oldest for the rest.",
    )
    decode: DecodeOverrides = Field(
        default_factory=DecodeOverrides,
        description="Decoder options over the manifest's (a table of the decoder's options).",
    )
    gate: GateSettings = Field(default_factory=GateSettings, description="Change gating.")
    cache: CacheSettings = Field(default_factory=CacheSettings, description="Result cache.")
    escalate: EscalateSettings = Field(
        default_factory=EscalateSettings, description="Escalation to a bigger model; off."
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


def _findable(spec: str) -> str:
    secret_path(spec)  # a ValueError saying why it cannot be found
    return spec


# A file path or credential:NAME (systemd LoadCredential=), checked where it would be read.
SecretSpec = Annotated[str, AfterValidator(_findable)]


class TlsSettings(Section):
    ca_file: Annotated[Path | None, LOCAL_ONLY] = Field(
        None, description="CA certificate(s) to trust, PEM."
    )
    cert_file: Annotated[Path | None, LOCAL_ONLY] = Field(
        None, description="Client certificate, PEM."
    )
    key_file: Annotated[SecretSpec | None, LOCAL_ONLY] = Field(
        None, description="Client key: a file, or credential:NAME (systemd LoadCredential=)."
    )


class MqttSettings(Section):
    enabled: bool = Field(False, description="Connect to a broker.")
    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    topic_prefix: Name = Field("edge", description="First topic level.")
    username: str | None = Field(None, description="User name, when the broker wants one.")
    password: SecretStr | None = Field(
        None, description="Password; better kept in password_file than in this file."
    )
    password_file: Annotated[str | None, LOCAL_ONLY] = Field(
        None,
        description="File holding the password, or credential:NAME for a systemd credential "
        "in $CREDENTIALS_DIRECTORY. Read at load: a missing one is a config error.",
    )
    tls: TlsSettings | None = Field(None, description="TLS; none: plain TCP.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto",
        description="MQTT protocol version. auto: MQTT 5, and MQTT 3.1.1 for a broker that "
        "refuses 5 (NATS, RabbitMQ 3.10), kept for its reconnects; 5 or 3.1.1: that one only.",
    )
    transport: Literal["tcp", "websockets"] = Field("tcp", description="TCP or WebSocket.")
    websocket_path: str = Field("/mqtt", description="Path of the WebSocket endpoint.")
    client_id: str | None = Field(None, description="MQTT client id; empty: the device id.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="Keepalive interval.")
    session_expiry_s: int = Field(
        86400,
        ge=0,
        le=2**32 - 1,
        description="How long the broker keeps our session (and commands sent while we are "
        "offline) after a disconnect; 0: a clean session every time.",
    )
    reconnect_min_s: float = Field(1.0, gt=0, description="Shortest wait before reconnecting.")
    reconnect_max_s: float = Field(
        120.0, gt=0, description="Longest wait; each wait is random up to the current cap."
    )
    inflight: int = Field(
        500, ge=1, le=65535, description="Messages published and not yet acknowledged, at most."
    )
    drain_rate: float = Field(
        0.0, ge=0, description="Messages per second while catching up; 0: no cap."
    )
    max_packet_size: int = Field(
        0,
        ge=0,
        description="Largest message the broker takes, in bytes; 0: as the broker says in "
        "CONNACK (MQTT 5), else unlimited. Larger messages are set aside and counted.",
    )

    @model_validator(mode="after")
    def _password_from_file(self) -> MqttSettings:
        if self.password_file is not None:
            if self.password is not None:
                raise ValueError("password_file: give password or password_file, not both")
            self.password = SecretStr(read_secret(self.password_file))
        return self


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


class CommandsSettings(Section):
    enabled: bool = Field(True, description="Take commands over MQTT (needs [mqtt]).")
    max_bytes: int = Field(256 * 1024, gt=0, description="Largest command body accepted.")
    require_signed: bool = Field(
        False, description="Refuse commands not signed by a key in [updates] trusted_keys."
    )
    max_age_s: float = Field(
        300.0, gt=0, description="A command issued longer ago than this is refused."
    )
    remember: int = Field(
        1000, ge=1, description="Replies kept, so a repeated request id gets the first one."
    )
    # What set_config may set (config/remote.py). These three are read from this file and
    # the environment only, never from the remote overlay.
    remote_keys: list[
        Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9_-]+)(\.(\*|[A-Za-z0-9_-]+))*$")]
    ] = Field(
        default_factory=lambda: [
            "pipelines",
            "sources",
            "models.*.threads",
            "models.*.delegates",
            "models.*.batch",
            "models.*.input",
            "models.*.decode",
            "models.*.replicas",
            "runtime.threads",
            "runtime.delegates",
            "outbox",
            "telemetry",
            "logging",
            "updates",
        ],
        description="Keys set_config may set, as patterns: a key or a whole table, * for "
        "one level (a name). Default: pipelines, sources, models' tuning (threads, "
        "delegates, batch, input, decode, replicas), runtime threads and delegates, "
        "outbox, telemetry, logging, updates. Never enough alone for a file path or "
        "library (remote_paths), a security key (allow_remote_security_changes) or "
        "device.state_dir.",
    )
    allow_remote_security_changes: bool = Field(
        False,
        description="set_config may change trusted keys, credentials, the broker address "
        "and the [commands] settings other than these three.",
    )
    remote_paths: list[str] = Field(
        default_factory=list,
        description="Keys whose file path or library set_config may set, as patterns with * "
        'for a name ("models.*.path", "sources.*.device"); empty: none. Paths and libraries '
        "otherwise come only from this file. device.state_dir is never changed remotely.",
    )

    @field_validator("remote_paths")
    @classmethod
    def _not_the_state_dir(cls, value: list[str]) -> list[str]:
        if "device.state_dir" in value:
            raise ValueError("device.state_dir is never changed remotely")
        return value


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
