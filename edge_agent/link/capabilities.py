"""What the broker takes, as its CONNACK says (MQTT 5; a 3.1.1 broker says nothing) or as
the link learnt it: the largest packet, the highest QoS, retained messages, how many QoS 1
messages may wait for their PUBACK at once (Receive Maximum), and how long the session is
kept. Each lack is logged once per link, in one line naming the broker (docs/brokers.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from edge_agent.config.settings import MqttSettings

log = logging.getLogger(__name__)

# CONNACK reason codes of an MQTT 5 broker refusing our Will as it was: retained, or QoS 1.
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
# MQTT 5's Receive Maximum when the CONNACK does not give one: no limit in practice.
_NO_RECEIVE_MAXIMUM = 65_535
# Of a broker's Receive Maximum, left to the link's other publishers (the status, replies,
# chunk requests) beside a full window of the sender's: paho bounds them all only from the
# next connect on (its window cannot change on an open connection).
_OTHERS = 2


class BrokerCapabilities:
    """Learnt from each CONNACK; a refusal of our Will or a drop at a large message teaches
    more. Read by the link (the Will, the publish QoS and retain flag, paho's window) and
    through it by the sender (packet size, window) and the updater (chunk size)."""

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self.where = f"{settings.host}:{settings.port}"
        self.max_packet_size = settings.max_packet_size or 0
        self.max_qos = 2
        self.retain_available = True
        # QoS 1 messages the broker takes unacknowledged at once; 0: it set no limit.
        self.receive_maximum = 0
        self._said: set[str] = set()

    def learn(self, properties: Properties | None) -> bool:
        """What an MQTT 5 CONNACK says (None for MQTT 3.1.1); each lack logged once. True
        when the Will must be made again (a lower QoS, not retained) for the next connect."""
        s = self.settings
        remake = False
        if not s.max_packet_size:
            self.max_packet_size = getattr(properties, "MaximumPacketSize", 0) or 0
            if self.max_packet_size:
                self._say(
                    "max_packet_size",
                    f"takes messages of {self.max_packet_size} bytes at most: larger ones are "
                    "set aside (reason too_large)",
                )
        # A refusal of our Will taught these already; a CONNACK only lowers them further.
        max_qos = getattr(properties, "MaximumQoS", None)
        if max_qos is not None and int(max_qos) < 1 <= self.max_qos:
            self.max_qos = int(max_qos)
            remake = True  # the Will at QoS 0 from the next connect
        if self.max_qos < 1:
            self.say_qos0()
        retain = getattr(properties, "RetainAvailable", None)
        if retain is not None and not retain and self.retain_available:
            self.retain_available = False
            remake = True  # the Will not retained from the next connect
        if not self.retain_available:
            self.say_no_retain()
        self._learn_receive_maximum(properties)
        self._learn_session_expiry(properties)
        return remake

    def _learn_receive_maximum(self, properties: Properties | None) -> None:
        given = getattr(properties, "ReceiveMaximum", None)
        limit = int(given) if given else 0
        self.receive_maximum = limit if 0 < limit < _NO_RECEIVE_MAXIMUM else 0
        if self.receive_maximum and self.receive_maximum < self.settings.inflight:
            # A broker's own setting, not a fault: Mosquitto says 20 by default.
            self._say(
                "receive_maximum",
                f"takes {self.receive_maximum} unacknowledged QoS 1 messages at a time "
                f"(Receive Maximum): at most that many are in flight, not mqtt.inflight "
                f"{self.settings.inflight}",
                level=logging.INFO,
            )

    def _learn_session_expiry(self, properties: Properties | None) -> None:
        granted = getattr(properties, "SessionExpiryInterval", None)
        asked = self.settings.session_expiry_s
        if granted is not None and int(granted) < asked:
            self._say(
                "session_expiry",
                f"keeps our session {int(granted)} s after a disconnect, not the "
                f"{asked} s asked (mqtt.session_expiry_s): commands sent to the device while "
                f"it is away longer are lost",
            )

    def window(self, inflight: int) -> int:
        """QoS 1 messages the sender may keep unacknowledged: `inflight`, or fewer than the
        broker's Receive Maximum, leaving room for the other publishers."""
        if not self.receive_maximum:
            return inflight
        return min(inflight, max(1, self.receive_maximum - _OTHERS))

    def refused_will(self, reason: int) -> bool:
        """A CONNACK refusing our Will as it was: True when the Will can be made to fit
        (not retained, QoS 0) and tried again at once."""
        if reason == RETAIN_NOT_SUPPORTED and self.retain_available:
            self.retain_available = False
            self.say_no_retain()
            return True
        if reason == QOS_NOT_SUPPORTED and self.max_qos > 0:
            self.max_qos = 0
            self.say_qos0()
            return True
        return False

    def say_qos0(self) -> None:
        self._say(
            "max_qos",
            "takes QoS 0 only: messages go at QoS 0, counted delivered once written, with no "
            "acknowledgement from the broker",
        )

    def say_no_retain(self) -> None:
        self._say(
            "retain",
            "keeps no retained messages: the status and the Will are published not retained, "
            "so an operator sees them only when subscribed at the time",
        )

    def limit_packet_size(self, size: int, why: str) -> None:
        """Messages of `size` bytes or more are taken as too large for this broker from now
        on: what the sender learnt on a broker that says no limit (MQTT 3.1.1) but drops the
        connection at a message this large."""
        if self.max_packet_size and self.max_packet_size < size:
            return
        self.max_packet_size = size - 1
        log.warning(
            "mqtt: broker %s %s: messages of %d bytes or more are set aside from now on "
            "(reason too_large); mqtt.max_packet_size sets the limit",
            self.where,
            why,
            size,
        )

    def _say(self, what: str, line: str, level: int = logging.WARNING) -> None:
        if what not in self._said:
            self._said.add(what)
            log.log(level, "mqtt: broker %s %s", self.where, line)
