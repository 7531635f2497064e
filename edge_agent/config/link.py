"""The settings of the broker link ([mqtt], its TLS) and of the commands that come over it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from edge_agent.config.local_only import LOCAL_ONLY
from edge_agent.config.secrets import SecretSpec, read_secret
from edge_agent.config.section import Name, Section


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
    resend_acked_within_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="When the connection drops without the agent closing it, messages the "
        "broker acknowledged in this many seconds up to its last acknowledgement go again "
        "after the reconnect: a broker that is going down may acknowledge what it never "
        "stores (NATS 2.9 under SIGTERM did). Costs duplicates, which consumers drop by id; "
        "0: off.",
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
