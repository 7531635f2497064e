"""Every topic the agent and edge-fleet use, built and parsed in one place.

    {prefix}/{device}/status                          retained online/offline status
    {prefix}/{device}/results/{pipeline}              results (outbox)
    {prefix}/{device}/events/{kind}                   events (outbox)
    {prefix}/{device}/telemetry                       telemetry (outbox)
    {prefix}/{device}/cmd/{command}                   a command to one device
    {prefix}/all/cmd/{command}                        a command to every device
    {prefix}/group/{group}/cmd/{command}              a command to a group's devices
    {prefix}/{device}/reply/{request_id}              a device's reply to a command
    {prefix}/{device}/transfer/{id}/get               a device asks for chunks
    {prefix}/{device}/transfer/{id}/data/{role}/{i}   one chunk of an update's file
    {prefix}/{device}/escalate/{pipeline}             a result sent to an escalation server
    {prefix}/{device}/escalated/{pipeline}            an escalation server's answer

Each form is a small frozen dataclass whose `topic` is the string; `parse()` is the
inverse. A field may be `ANY` (`+`) to make a subscription filter. Pure Python: edge-fleet
imports it, and it must not pull in paho, numpy or OpenCV."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

ANY = "+"  # one level, any value: for subscription filters
_FORBIDDEN = ("/", "+", "#", "\x00")
_TOPICS_CACHED = 1024  # result topics remembered: one per (prefix, device, pipeline)

Kind = Literal[
    "status",
    "result",
    "event",
    "telemetry",
    "command",
    "reply",
    "transfer_get",
    "transfer_data",
    "escalate",
    "escalated",
]


def check_level(what: str, value: str) -> str:
    """`value` unless it cannot be exactly one topic level (ValueError, one line); `ANY`
    passes, so a builder can make a filter."""
    if value == ANY:
        return value
    if not value or any(c in value for c in _FORBIDDEN):
        raise ValueError(f"{what} {value!r} cannot be one MQTT topic level")
    return value


@dataclass(frozen=True)
class _OfDevice:
    """A topic under one device: `prefix/device/...`. Each subclass names its further
    levels in `levels` (what a bad value is called, the field), all checked alike."""

    kind: ClassVar[Kind]
    levels: ClassVar[tuple[tuple[str, str], ...]] = ()
    prefix: str
    device: str

    def __post_init__(self) -> None:
        check_level("prefix", self.prefix)
        check_level("device", self.device)
        for what, name in self.levels:
            check_level(what, getattr(self, name))


@dataclass(frozen=True)
class Status(_OfDevice):
    kind: ClassVar[Kind] = "status"

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/status"


@dataclass(frozen=True)
class Result(_OfDevice):
    kind: ClassVar[Kind] = "result"
    levels: ClassVar[tuple[tuple[str, str], ...]] = (("pipeline", "pipeline"),)
    pipeline: str

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/results/{self.pipeline}"


@dataclass(frozen=True)
class Event(_OfDevice):
    kind: ClassVar[Kind] = "event"
    levels: ClassVar[tuple[tuple[str, str], ...]] = (("event kind", "event"),)
    event: str  # the event's kind: update, agent, ...

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/events/{self.event}"


@dataclass(frozen=True)
class Telemetry(_OfDevice):
    kind: ClassVar[Kind] = "telemetry"

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/telemetry"


@dataclass(frozen=True)
class Command:
    """To one device (`device`), a group's devices (`group`), or every device (neither)."""

    kind: ClassVar[Kind] = "command"
    prefix: str
    command: str
    device: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        check_level("prefix", self.prefix)
        check_level("command", self.command)
        if self.device is not None and self.group is not None:
            raise ValueError("a command topic names a device or a group, not both")
        if self.device is not None:
            check_level("device", self.device)
        if self.group is not None:
            check_level("group", self.group)

    @property
    def topic(self) -> str:
        if self.device is not None:
            return f"{self.prefix}/{self.device}/cmd/{self.command}"
        if self.group is not None:
            return f"{self.prefix}/group/{self.group}/cmd/{self.command}"
        return f"{self.prefix}/all/cmd/{self.command}"


@dataclass(frozen=True)
class Reply(_OfDevice):
    kind: ClassVar[Kind] = "reply"
    levels: ClassVar[tuple[tuple[str, str], ...]] = (("request id", "request_id"),)
    request_id: str

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/reply/{self.request_id}"


@dataclass(frozen=True)
class TransferGet(_OfDevice):
    kind: ClassVar[Kind] = "transfer_get"
    levels: ClassVar[tuple[tuple[str, str], ...]] = (("transfer id", "transfer"),)
    transfer: str

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/transfer/{self.transfer}/get"


@dataclass(frozen=True)
class TransferData(_OfDevice):
    kind: ClassVar[Kind] = "transfer_data"
    levels: ClassVar[tuple[tuple[str, str], ...]] = (
        ("transfer id", "transfer"),
        ("file role", "role"),
    )
    transfer: str
    role: str
    index: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.index < 0:
            raise ValueError(f"chunk index {self.index} is negative")

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/transfer/{self.transfer}/data/{self.role}/{self.index}"


@dataclass(frozen=True)
class Escalate(_OfDevice):
    kind: ClassVar[Kind] = "escalate"
    levels: ClassVar[tuple[tuple[str, str], ...]] = (("pipeline", "pipeline"),)
    pipeline: str

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/escalate/{self.pipeline}"


@dataclass(frozen=True)
class Escalated(_OfDevice):
    """An answer to an escalation: the response topic (MQTT 5) or the reply_to (3.1.1)."""

    kind: ClassVar[Kind] = "escalated"
    levels: ClassVar[tuple[tuple[str, str], ...]] = (("pipeline", "pipeline"),)
    pipeline: str

    @property
    def topic(self) -> str:
        return f"{self.prefix}/{self.device}/escalated/{self.pipeline}"


Topic = (
    Status
    | Result
    | Event
    | Telemetry
    | Command
    | Reply
    | TransferGet
    | TransferData
    | Escalate
    | Escalated
)


# Subscription filters the dataclasses cannot spell (a trailing `#`, several at once).


def command_filters(prefix: str, device: str, groups: list[str] | tuple[str, ...]) -> list[str]:
    """What a device subscribes to for commands: its own, everyone's, its groups'."""
    return [
        Command(prefix, ANY, device=device).topic,
        Command(prefix, ANY).topic,
        *(Command(prefix, ANY, group=group).topic for group in groups),
    ]


def transfer_data_filter(prefix: str, device: str, transfer: str = ANY) -> str:
    """Every chunk of one transfer (or of every transfer) to a device."""
    return TransferGet(prefix, device, transfer).topic.removesuffix("/get") + "/data/#"


def escalate_share_filter(group: str, prefix: str) -> str:
    """Every device's escalations, split among the subscribers of one shared group."""
    check_level("share group", group)
    return f"$share/{group}/{Escalate(prefix, ANY, ANY).topic}"


@lru_cache(maxsize=_TOPICS_CACHED)
def result_topic(prefix: str, device: str, pipeline: str) -> str:
    """`Result(...).topic`, remembered: it is built for every result."""
    return Result(prefix, device, pipeline).topic


# Parsing.


def parse(topic: str) -> Topic | None:
    """The topic's form and fields; None when it is none of ours (or has a wildcard)."""
    levels = topic.split("/")
    if any(not level or level in ("+", "#") for level in levels):
        return None
    try:
        return _parse_levels(levels)
    except ValueError:  # a level with a wildcard or NUL inside
        return None


def _parse_levels(levels: list[str]) -> Topic | None:
    n = len(levels)
    if n < 3:
        return None
    prefix, second, third = levels[0], levels[1], levels[2]
    if n == 4 and second == "all" and third == "cmd":
        return Command(prefix, levels[3])
    if n == 5 and second == "group" and levels[3] == "cmd":
        return Command(prefix, levels[4], group=third)
    if n == 3:
        if third == "status":
            return Status(prefix, second)
        if third == "telemetry":
            return Telemetry(prefix, second)
        return None
    if n == 4:
        last = levels[3]
        if third == "results":
            return Result(prefix, second, last)
        if third == "events":
            return Event(prefix, second, last)
        if third == "cmd":
            return Command(prefix, last, device=second)
        if third == "reply":
            return Reply(prefix, second, last)
        if third == "escalate":
            return Escalate(prefix, second, last)
        if third == "escalated":
            return Escalated(prefix, second, last)
        return None
    if third != "transfer":
        return None
    if n == 5 and levels[4] == "get":
        return TransferGet(prefix, second, levels[3])
    if n == 7 and levels[4] == "data" and levels[6].isascii() and levels[6].isdigit():
        return TransferData(prefix, second, levels[3], levels[5], int(levels[6]))
    return None
