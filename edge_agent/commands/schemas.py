"""The command bodies: one envelope every command shares, one pydantic model per command
for its own fields, and the reply."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RequestId = str
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


class CommandSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key_id: str = Field(max_length=64, description="One of [updates] trusted_keys.")
    value: str = Field(max_length=200, description="Base64 Ed25519 signature.")


class Command(BaseModel):
    """Fields every command has. A command's own fields come beside them."""

    model_config = ConfigDict(extra="forbid")

    request_id: RequestId = Field(
        pattern=REQUEST_ID_PATTERN, description="Unique per request; a repeat gets the first reply."
    )
    # NaN and infinity pass every age comparison: refused here, not only by the parser.
    issued_at: float | None = Field(
        None,
        allow_inf_nan=False,
        description="Unix time it was sent: refused when older than commands.max_age_s.",
    )
    expires_at: float | None = Field(
        None, allow_inf_nan=False, description="Unix time after which it is refused."
    )
    nonce: str | None = Field(
        None, max_length=64, description="Signed commands: unique, a replay is refused."
    )
    signature: CommandSignature | None = Field(
        None, description="Ed25519 over the canonical body without this field."
    )


class Ping(Command):
    pass


class Status(Command):
    pass


class GetConfig(Command):
    pass


class SetConfig(Command):
    changes: dict[str, Any] = Field(
        description=(
            "A partial config kept in the remote overlay (remote.toml in the state folder): "
            "tables merged key by key, values replaced, null takes a key back out."
        )
    )


class PipelineCommand(Command):
    pipeline: str = Field(max_length=64, description="A pipeline name.")


class Snapshot(Command):
    source: str = Field(max_length=64, description="A camera or image source name.")
    quality: int = Field(85, ge=10, le=100, description="JPEG quality.")


class ListModels(Command):
    pass


class UpdateModel(Command):
    manifest: dict[str, Any] = Field(description="The signed update manifest.")


class ModelCommand(Command):
    name: str = Field(max_length=64, description="A model name ([models.NAME]).")


class ActivateModel(ModelCommand):
    version: str = Field(max_length=64, description="An installed version.")


class RemoveModel(ModelCommand):
    version: str = Field(
        max_length=64,
        description="An installed version that is neither active nor the rollback target.",
    )


class FlushOutbox(Command):
    pass


class SetLogLevel(Command):
    level: Literal["debug", "info", "warning", "error"]


class Reply(BaseModel):
    schema_: Literal["edge-agent/reply/1"] = Field("edge-agent/reply/1", alias="schema")
    id: str
    ts: float
    device: str
    request_id: str | None
    command: str
    status: Literal["ok", "error"]
    reason: str | None = None
    result: Any = None
