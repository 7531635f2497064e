"""The signed update manifest (docs/updates.md): what a model update holds, where its files
come from, and the canonical bytes its Ed25519 signature covers."""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_agent.errors import UserError
from edge_agent.json_body import loads

SCHEMA: Final = "edge-agent/update/1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$"
ROLES = ("model", "manifest", "cpu_twin", "labels", "golden")
Role = Literal["model", "manifest", "cpu_twin", "labels", "golden"]
# The store writes the update manifest beside the files, under this name.
UPDATE_FILE = "update.json"
# A manifest is a few hundred bytes; anything far larger is not one.
MAX_MANIFEST_BYTES = 64 * 1024
MAX_FILE_NAME = 128


class UpdateRefused(UserError):
    """An update that must not be installed: bad signature, unknown key, wrong file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Strict(BaseModel):
    # Unknown keys are refused: a field we ignored would be signed but never checked.
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_file_name(path: str) -> str:
    """A bare file name that cannot leave the folder it is written into."""
    if not path:
        raise ValueError("empty file name")
    if len(path) > MAX_FILE_NAME:
        raise ValueError(f"file name longer than {MAX_FILE_NAME} characters")
    if "/" in path or "\\" in path:
        raise ValueError(f"{path!r} is not a bare file name (no '/' or '\\')")
    if path in (".", ".."):
        raise ValueError(f"{path!r} is not a file name")
    if path.startswith("."):
        raise ValueError(f"{path!r}: a file name may not start with '.'")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise ValueError(f"{path!r}: control characters (NUL included) are not allowed")
    return path


class FileRef(_Strict):
    path: str = Field(description="Bare file name, also the name it is stored under.")
    size: int = Field(ge=0, description="Exact size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256.")

    @field_validator("path")
    @classmethod
    def _bare_name(cls, value: str) -> str:
        return check_file_name(value)


class HttpSource(_Strict):
    kind: Literal["http"] = "http"
    url: str = Field(description="Base URL: each file is fetched from url + path.")

    @field_validator("url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        # Files are fetched from url + path: a base without its slash would glue the names.
        return value if value.endswith("/") else value + "/"

    def file_url(self, ref: FileRef) -> str:
        return self.url + ref.path


class MqttSource(_Strict):
    kind: Literal["mqtt"] = "mqtt"
    transfer: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Transfer id.")
    chunk_size: int = Field(262144, ge=1024, le=1048576, description="Bytes per chunk.")


Source = Annotated[HttpSource | MqttSource, Field(discriminator="kind")]


class GoldenSpec(_Strict):
    min_agreement: float = Field(
        0.95, ge=0, le=1, description="Share of golden samples whose argmax must match."
    )


class Requires(_Strict):
    delegates: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(
        default_factory=list, description="Delegates the model needs (e.g. edgetpu)."
    )


class ShadowPolicy(_Strict):
    """Run the update beside the active model on live frames before it replaces anything
    (docs/shadow.md); promoted when it meets these figures, dropped otherwise."""

    sample: float | None = Field(
        None, gt=0, le=1, description="Share of inferred frames the shadow also runs on."
    )
    every: int | None = Field(None, ge=1, description="Or: every Nth inferred frame.")
    min_frames: int = Field(200, ge=1, description="Frames compared before a decision.")
    min_agreement: float = Field(
        0.95, ge=0, le=1, description="Share of compared frames on which both models agree."
    )
    max_latency_ratio: float = Field(
        1.5, gt=0, description="Largest median invoke time of the shadow over the active's."
    )
    latency_slack_ms: float = Field(
        0.2, ge=0, description="...and slower by more than this (tiny models jitter by 1.5x)."
    )
    max_errors: int = Field(0, ge=0, description="Shadow inferences that may fail.")
    cpu_budget: float = Field(
        0.1, gt=0, le=16, description="CPU the shadow may use, in cores (0.1: a tenth of one)."
    )
    timeout_s: float = Field(
        600.0, gt=0, description="Dropped when min_frames are not compared within this."
    )

    @model_validator(mode="after")
    def _one_rate(self) -> ShadowPolicy:
        if self.sample is not None and self.every is not None:
            raise ValueError("shadow: give sample or every, not both")
        return self

    def takes(self, count: int) -> bool:
        """Whether the `count`th inferred frame (from 1) goes to the shadow too."""
        if self.every is not None:
            return count % self.every == 0
        share = 0.25 if self.sample is None else self.sample
        # Evenly spread: frame n is taken when floor(n * share) steps up.
        return int(count * share) != int((count - 1) * share)


class Signature(_Strict):
    key_id: str = Field(min_length=1, max_length=128, description="A [updates] trusted_keys id.")
    value: str = Field(description="Base64 Ed25519 signature of the canonical manifest.")

    @field_validator("value")
    @classmethod
    def _base64_64_bytes(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        if len(raw) != 64:
            raise ValueError(f"an Ed25519 signature is 64 bytes, this is {len(raw)}")
        return value


class UpdateManifest(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # `schema` would shadow a BaseModel attribute, hence the alias.
    schema_: Literal["edge-agent/update/1"] = Field(SCHEMA, alias="schema")
    name: str = Field(pattern=NAME_PATTERN, description="The [models.NAME] it updates.")
    version: str = Field(pattern=VERSION_PATTERN, description="Version of this update.")
    created: float = Field(ge=0, description="Unix time the update was made.")
    files: dict[Role, FileRef] = Field(description="The update's files by role.")
    golden: GoldenSpec | None = Field(None, description="Golden-set acceptance check.")
    requires: Requires = Field(default_factory=Requires, description="What the device needs.")
    shadow: ShadowPolicy | None = Field(
        None, description="Run as a shadow on live frames before promotion (docs/shadow.md)."
    )
    source: Source | None = Field(None, description="Where the files come from (not signed).")
    signature: Signature | None = Field(None, description="Ed25519 signature.")

    @model_validator(mode="after")
    def _files_fit_together(self) -> UpdateManifest:
        for role in ("model", "manifest"):
            if role not in self.files:
                raise ValueError(f"files.{role}: required")
        stem = PurePosixPath(self.files["model"].path).stem
        if self.files["manifest"].path != f"{stem}.json":
            raise ValueError(
                f"files.manifest.path: must be {stem + '.json'!r}, the model's stem + .json"
            )
        seen: dict[str, str] = {}
        for role, ref in self.files.items():
            if ref.path == UPDATE_FILE:
                raise ValueError(f"files.{role}.path: {UPDATE_FILE!r} is reserved")
            if ref.path in seen:
                raise ValueError(f"files.{role}.path: {ref.path!r} is also files.{seen[ref.path]}")
            seen[ref.path] = role
        if self.golden is not None and "golden" not in self.files:
            raise ValueError("golden: given, but files has no 'golden'")
        return self

    def golden_spec(self) -> GoldenSpec | None:
        """The golden check to run: None without a golden file; defaults when unspecified."""
        if "golden" not in self.files:
            return None
        return self.golden or GoldenSpec()

    def to_json(self) -> bytes:
        """The whole manifest (signature and source included), as sent and stored."""
        return json.dumps(self.as_dict(), sort_keys=True, ensure_ascii=False).encode()

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def canonical_bytes(manifest: UpdateManifest) -> bytes:
    """What the signature covers: the validated manifest without `signature` and `source`,
    defaults filled in and nulls left out, keys sorted, no whitespace, UTF-8. Built from the
    validated model, so signer and verifier agree however the JSON was laid out."""
    data = manifest.model_dump(
        mode="json", by_alias=True, exclude_none=True, exclude={"signature", "source"}
    )
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_limits(manifest: UpdateManifest, max_bytes: int) -> None:
    """Refuse any file over `[updates] max_model_bytes` before a byte of it is fetched."""
    for role, ref in manifest.files.items():
        if ref.size > max_bytes:
            raise UpdateRefused(
                f"files.{role}.size: {ref.size} bytes is over the limit of {max_bytes} "
                "(updates.max_model_bytes)"
            )


def refuse_older(
    new: UpdateManifest, installed_version: str, installed_created: float | None
) -> None:
    """A signed manifest stays valid forever, so replaying an old one would put its model
    back: an update must be newer than what is installed (by its signed creation time, and
    by version where both versions are dotted numbers). Going back is the rollback_model or
    activate_model command's job."""
    older = installed_created is not None and new.created < installed_created
    both_numeric = _NUMERIC_VERSION.fullmatch(new.version) and _NUMERIC_VERSION.fullmatch(
        installed_version
    )
    if both_numeric:
        older = older or _numbers(new.version) < _numbers(installed_version)
    if older:
        raise UpdateRefused(
            f"update {new.name} {new.version} is older than the installed {installed_version}: "
            "refused (use rollback_model or activate_model to go back)"
        )


_NUMERIC_VERSION = re.compile(r"^\d+(\.\d+)*$")


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def parse_manifest(data: bytes | str | dict[str, Any], max_bytes: int) -> UpdateManifest:
    """A validated manifest, or UserError with one line naming the field and the problem."""
    if isinstance(data, bytes | str):
        if len(data) > MAX_MANIFEST_BYTES:
            raise UserError(
                f"update manifest: {len(data)} bytes, more than {MAX_MANIFEST_BYTES} allowed"
            )
        try:
            # From the network: UTF-8 only, finite numbers, nesting bounded.
            data = loads(data.decode("utf-8") if isinstance(data, bytes) else data)
        except ValueError as exc:  # UnicodeDecodeError too
            raise UserError(f"update manifest: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UserError("update manifest: must be a JSON object")
    try:
        manifest = UpdateManifest.model_validate(data)
    except ValidationError as exc:
        raise UserError(_one_line(exc)) from None
    check_limits(manifest, max_bytes)
    return manifest


def _one_line(err: ValidationError) -> str:
    problems = err.errors()
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if not key and ": " in message:
        # Checks across fields name their key at the start of the message.
        key, message = message.split(": ", 1)
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return f"update manifest: {key or '(top level)'}: {message}{more}"
