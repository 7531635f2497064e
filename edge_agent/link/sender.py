"""Drains the outbox through the link: oldest rows first (events, results, telemetry),
QoS 1, inside a bounded in-flight window. A row is marked delivered only on its PUBACK;
rows in flight when the connection drops stay pending and go again after the reconnect,
so delivery is at least once and duplicates stay within the window."""

from __future__ import annotations

import logging
import threading
import time

from paho.mqtt.client import MQTT_ERR_SUCCESS

from edge_agent.config.settings import MqttSettings
from edge_agent.link.mqtt import MqttLink
from edge_agent.outbox.store import Outbox, Stored

log = logging.getLogger(__name__)

# PUBACK reason codes that mean "never": the row is set aside instead of retried.
_REFUSALS = {
    0x87: "not_authorized",
    0x90: "topic_invalid",
    0x95: "too_large",
    0x99: "payload_invalid",
}
_FIXED_HEADER = 16  # room for the MQTT fixed and variable headers around topic + payload
_MARK_BATCH = 500
_SETTLE_S = 0.05  # acknowledgements wait at most this long to be written
_IDLE_S = 1.0  # with nothing pending, look again this often even without a wake-up
# A row in flight at this many drops in a row is taken for the reason (a broker that
# disconnects instead of refusing, e.g. an oversized message on MQTT 3.1.1).
_SUSPECT_DROPS = 3


class Sender:
    def __init__(self, outbox: Outbox, link: MqttLink, settings: MqttSettings) -> None:
        self.outbox = outbox
        self.link = link
        self.window = settings.inflight
        self.rate = settings.drain_rate
        self.sent = 0
        self.acked = 0
        self._inflight: dict[int, int] = {}  # mid -> outbox seq
        self._early: dict[int, int] = {}  # PUBACKs that beat publish() returning: mid -> rc
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []
        self._suspects: dict[int, int] = {}
        self._cursor: dict[str, int] = {}  # last seq read, by class, since the connect
        self._epoch = 0  # counts connection changes
        self._changed = threading.Condition()
        self._stop = False
        self._idle = False  # the outbox had nothing pending at the last look
        link.on_publish = self._on_publish
        link.connection_listeners.append(self._on_connection)
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify_all()
        self._thread.join(timeout)
        self._settle()

    def wake(self) -> None:
        """New rows were committed."""
        with self._changed:
            self._idle = False
            self._changed.notify_all()

    @property
    def in_flight(self) -> int:
        with self._changed:
            return len(self._inflight)

    # paho's network thread ---------------------------------------------------------------

    def _on_publish(self, mid: int, reason: int) -> None:
        with self._changed:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._early[mid] = reason
                return
            self._ack(seq, reason)
            self._changed.notify_all()

    def _ack(self, seq: int, reason: int) -> None:
        if reason >= 0x80:
            self._refused.append((seq, _REFUSALS.get(reason, f"refused_{reason:#x}")))
        else:
            self._acked.append(seq)
        self._suspects.pop(seq, None)

    def _on_connection(self, up: bool) -> None:
        with self._changed:
            if not up:
                for seq in self._inflight.values():
                    self._suspects[seq] = self._suspects.get(seq, 0) + 1
                # Not acknowledged: they stay pending in the outbox and go again, read
                # from the start.
                self._inflight.clear()
                self._cursor.clear()
                self._early.clear()
            self._epoch += 1
            self._changed.notify_all()

    # The sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_send = time.monotonic()
        # Refill the window a page at a time, and write acknowledgements in batches: one
        # query and one transaction per many messages, not per message.
        refill = max(1, self.window // 4)
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: (
                        self._stop
                        or len(self._acked) + len(self._refused) >= _MARK_BATCH
                        or (
                            self.link.connected.is_set()
                            and self._room() >= refill
                            and not self._idle
                        )
                    ),
                    timeout=_SETTLE_S if self._acked or self._refused else _IDLE_S,
                )
                if self._stop:
                    return
                after = dict(self._cursor)
                epoch = self._epoch
                room = self._room()
                self._idle = False
            self._settle()
            if room < refill or not self.link.connected.is_set():
                continue
            rows = self.outbox.pending_after(room, after)
            if not rows:
                with self._changed:
                    self._idle = True  # until new rows are committed (wake) or a timeout
                continue
            for row in rows:
                if self.rate:
                    delay = next_send - time.monotonic()
                    if delay > 0 and self._wait(delay):
                        return
                    next_send = max(next_send + 1 / self.rate, time.monotonic())
                if not self._publish(row, epoch):
                    break

    def _room(self) -> int:
        return self.window - len(self._inflight)

    def _wait(self, seconds: float) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: self._stop, seconds)
            return self._stop

    def _publish(self, row: Stored, epoch: int) -> bool:
        limit = self.link.max_packet_size
        if limit and len(row.payload) + len(row.topic) + _FIXED_HEADER > limit:
            self.outbox.set_aside(row.seq, "too_large")
            log.warning(
                "outbox row %d (%s) is larger than the broker takes: set aside", row.seq, row.topic
            )
            return True
        if self._suspects.get(row.seq, 0) >= _SUSPECT_DROPS:
            self.outbox.set_aside(row.seq, "dropped_connection")
            log.warning(
                "outbox row %d (%s) was in flight at %d drops in a row: set aside",
                row.seq,
                row.topic,
                _SUSPECT_DROPS,
            )
            return True
        # Not under our lock: paho calls on_publish holding its own, and publish() takes
        # that one. A PUBACK that beats this call returning is kept in _early.
        info = self.link.client.publish(row.topic, row.payload, qos=row.qos)
        if info.rc != MQTT_ERR_SUCCESS:
            return False  # not connected any more: the row stays pending
        with self._changed:
            if epoch != self._epoch:
                # The connection changed under this page: read again from the cursor the
                # new connection starts with (a duplicate at worst, never a gap).
                return False
            self._cursor[row.cls] = max(self._cursor.get(row.cls, 0), row.seq)
            early = self._early.pop(info.mid, None)
            if early is None:
                self._inflight[info.mid] = row.seq
            else:
                self._ack(row.seq, early)
            self.sent += 1
        return True

    def _settle(self) -> None:
        """Writes what the broker acknowledged or refused to the outbox."""
        with self._changed:
            acked, self._acked = self._acked, []
            refused, self._refused = self._refused, []
        for start in range(0, len(acked), _MARK_BATCH):
            self.outbox.mark_delivered(acked[start : start + _MARK_BATCH])
        self.acked += len(acked)
        for seq, reason in refused:
            self.outbox.set_aside(seq, reason)
            log.warning("broker refused outbox row %d (%s): set aside", seq, reason)
