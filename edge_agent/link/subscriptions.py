"""The link's subscriptions: the filters subscribed on every connect, who gets the messages
on each, and what the broker granted. A filter the broker refuses in its SUBACK (reason
0x80 or above: an ACL that denies reading it) never delivers a message, so each refused
filter is logged in one line and held as a status problem until a later connect has every
filter granted; a filter granted a lower QoS than asked is logged too."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from edge_agent.link import topics

if TYPE_CHECKING:  # the board is the agent's; the link only reports to it
    from edge_agent.status_board import StatusBoard

log = logging.getLogger(__name__)

PROBLEM_KEY = "mqtt subscriptions"
_ASKED_QOS = 1
_REFUSED = 0x80  # SUBACK reason codes from here on refuse the filter (MQTT 3.1.1: 0x80 only)


@dataclass(frozen=True)
class Message:
    """An incoming message, its topic already parsed."""

    topic: topics.Topic
    payload: bytes
    properties: Properties | None


Handler = Callable[[Message], None]


class Subscriptions:
    """Who gets the messages of each filter, and what the broker made of each filter. The
    SUBACKs come on paho's network thread; `add` and `subscribe` may come from any."""

    def __init__(self, where: str, status: StatusBoard | None = None) -> None:
        self.where = where  # the broker's host:port, for the lines
        self.status = status
        self._handlers: tuple[tuple[str, Handler], ...] = ()  # replaced whole: no lock
        self._lock = threading.Lock()
        # SUBSCRIBE packet ids still waiting for their SUBACK, with the filters they asked
        # for, and the SUBACKs that came before subscribe() could say whose they are.
        self._asked: dict[int, Sequence[str]] = {}
        self._early: dict[int, list[Any]] = {}
        self._refused: dict[str, str] = {}  # filter -> the broker's reason, at its last SUBACK
        self._said: set[tuple[str, int]] = set()  # (filter, level) logged once per link

    def add(self, topic_filter: str, handler: Handler) -> None:
        self._handlers = (*self._handlers, (topic_filter, handler))

    def filters(self) -> list[str]:
        return list(dict.fromkeys(topic_filter for topic_filter, _ in self._handlers))

    @property
    def refused(self) -> dict[str, str]:
        """The filters the broker refused at their last SUBACK, with its reason."""
        with self._lock:
            return dict(self._refused)

    def subscribe(self, client: mqtt.Client, filters: Sequence[str]) -> None:
        """One SUBSCRIBE for `filters`, at QoS 1; its SUBACK is checked when it comes. A
        connection gone meanwhile subscribes them all again at the next connect."""
        if not filters:
            return
        result, mid = client.subscribe([(f, _ASKED_QOS) for f in filters])
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            return
        with self._lock:
            codes = self._early.pop(mid, None)
            if codes is None:
                self._asked[mid] = filters
        if codes is not None:
            self._granted(filters, codes)

    def forget(self) -> None:
        """The connection changed: SUBACKs of the old one never come."""
        with self._lock:
            self._asked.clear()
            self._early.clear()

    def on_suback(self, mid: int, reason_codes: list[Any]) -> None:
        """paho's network thread: the SUBACK of SUBSCRIBE `mid`."""
        with self._lock:
            filters = self._asked.pop(mid, None)
            if filters is None:
                self._early[mid] = reason_codes  # subscribe() has not returned yet
                return
        self._granted(filters, reason_codes)

    def _granted(self, filters: Sequence[str], reason_codes: list[Any]) -> None:
        for topic_filter, code in zip(filters, reason_codes, strict=False):
            value = int(getattr(code, "value", code))
            if value >= _REFUSED:
                reason = str(code) if hasattr(code, "value") else f"{value:#x}"
                with self._lock:
                    self._refused[topic_filter] = reason
                self._say_once(
                    topic_filter,
                    logging.ERROR,
                    f"refused the subscription to {topic_filter} ({reason}): its messages "
                    "never arrive",
                )
                continue
            with self._lock:
                self._refused.pop(topic_filter, None)
            if value < _ASKED_QOS:
                self._say_once(
                    topic_filter,
                    logging.WARNING,
                    f"granted QoS {value} for {topic_filter}, not {_ASKED_QOS}: a message on it "
                    "is lost if the connection drops while it comes",
                )
        self._report()

    def _say_once(self, topic_filter: str, level: int, line: str) -> None:
        """A refusal at ERROR, a lower QoS at WARNING: each once per filter and link."""
        if (topic_filter, level) not in self._said:
            self._said.add((topic_filter, level))
            log.log(level, "mqtt: broker %s %s", self.where, line)

    def _report(self) -> None:
        """The refused filters on the status board, as one problem; resolved once none is."""
        if self.status is None:
            return
        refused = self.refused
        if not refused:
            self.status.resolve(PROBLEM_KEY)
            return
        named = ", ".join(f"{f} ({reason})" for f, reason in sorted(refused.items()))
        self.status.raise_problem(
            PROBLEM_KEY,
            f"mqtt: broker {self.where} refused the subscription to {named}: its messages "
            "never arrive",
            logged=True,
        )

    def route(self, message: mqtt.MQTTMessage) -> None:
        """An incoming message to every handler whose filter matches its topic."""
        topic = topics.parse(message.topic)
        if topic is None:
            log.debug("mqtt: a message on %s, not a topic of ours: dropped", message.topic)
            return
        incoming = Message(topic, bytes(message.payload), getattr(message, "properties", None))
        for topic_filter, handler in self._handlers:
            if mqtt.topic_matches_sub(topic_filter, message.topic):
                handler(incoming)
