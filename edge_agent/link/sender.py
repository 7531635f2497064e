"""Drains the outbox through the link: oldest rows first (events, results, telemetry),
QoS 1, inside a bounded in-flight window (`mqtt.inflight`, or the broker's Receive Maximum when
that is lower). A row is marked delivered only on its own PUBACK,
which the link hands to the sender for the publish that row went out in;
rows in flight when the connection drops stay pending and go again after the reconnect,
so delivery is at least once and duplicates stay within the window. When the connection
drops without the agent closing it, the rows acknowledged in the last
`mqtt.resend_acked_within_s` before its last PUBACK go again too (a broker that is going
down may acknowledge what it never stores): turning a possible loss into a duplicate.

Two threads: `mqtt-sender` reads pages of rows and publishes them, `outbox-marks` writes
the acknowledgements to the outbox in batches, so publishing never waits on a write.
Writing a mark can fail (a full disk): the acknowledgement is then kept in memory, the row
is not sent again, and the mark is retried every second. Neither thread dies of it; if one
dies of anything else, `died` says so and the health check stops the watchdog."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from functools import partial

from edge_agent.config.settings import MqttSettings
from edge_agent.counters import Counters
from edge_agent.link.mqtt import MqttLink, PublishError
from edge_agent.outbox.database import OutboxWriteError
from edge_agent.outbox.store import SENDER_CLASSES, Outbox, Stored

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
_SETTLE_S = 0.05  # acknowledgements are written this often, in one transaction
_IDLE_S = 1.0  # with nothing pending, look again this often even without a wake-up
_READ_AHEAD = 256  # rows read from the outbox at once when the window is smaller
# The oldest row in flight at this many drops in a row is taken for the reason (a broker
# that disconnects instead of refusing, e.g. an oversized message on MQTT 3.1.1). A broker
# handles publishes in order, so the rows sent after it are not suspected.
_SUSPECT_DROPS = 3
# ...and its size is taken for the reason when it is this many times the largest message
# acknowledged so far.
_LARGER = 2
_RETRY_S = 1.0  # marks that failed to be written are tried again this often


class Sender:
    def __init__(self, outbox: Outbox, link: MqttLink, settings: MqttSettings) -> None:
        self.outbox = outbox
        self.link = link
        self.window = settings.inflight  # the broker's Receive Maximum may lower it
        self.rate = settings.drain_rate
        self.resend_within_s = settings.resend_acked_within_s
        # Rows published, rows acknowledged, and acknowledged rows sent again after a drop,
        # this run: added to by the sender and marks threads, read from others.
        self.counts = Counters("sent", "acked", "put_back")
        # Outbox seqs published, their PUBACK not yet in, in the order they were sent, with
        # each one's size on the wire.
        self._inflight: dict[int, int] = {}
        self._largest_acked = 0  # the largest message the broker acknowledged this run
        self._acked: list[int] = []
        self._refused: list[tuple[int, str]] = []
        self._suspects: dict[int, int] = {}
        self._cursor: dict[str, int] = {}  # last seq read, by class, since the connect
        # Rows read from the outbox ahead of the window (the sender thread's own): a broker
        # with a small Receive Maximum would otherwise cost a query every few messages.
        self._ahead: deque[Stored] = deque()
        self._reread = False  # the cursor went back: what was read ahead is dropped
        self._epoch = 0  # counts connection changes
        lock = threading.RLock()
        self._changed = threading.Condition(lock)
        # The marks thread's own wake-up, on the same lock: a row acknowledged or refused.
        self._to_mark = threading.Condition(lock)
        self._stop = False
        self._started = False
        self._idle = False  # the outbox had nothing pending at the last look
        # Set at a drop the agent did not ask for: rows marked delivered from this Unix
        # time on go again. Nothing is sent until the marks thread has put them back.
        self._put_back_since: float | None = None
        # Unix time of the last PUBACK of the current connection (None: none yet). A broker
        # going down stops acknowledging before it closes the connection, a second or more
        # later under load: the put-back counts back from here, not from the drop.
        self._last_ack_at: float | None = None
        # Acknowledged or refused, not yet written to the outbox: never sent again
        # (guarded by _changed; the sender thread reads it, the marks thread empties it).
        self._not_marked: set[int] = set()
        # Taken for writing but not written yet (a full disk): the marks thread's own
        # (and stop()'s, once it has ended).
        self._unmarked: list[int] = []
        self._unrefused: list[tuple[int, str]] = []
        self._write_error = ""
        self._retry_at = 0.0
        self._acked_by = self._on_ack  # bound once: a publish binds only its row's seq
        link.add_connection_listener(self._on_connection)
        self._thread = threading.Thread(target=self._run, name="mqtt-sender", daemon=True)
        self._marks = threading.Thread(target=self._mark_run, name="outbox-marks", daemon=True)

    def start(self) -> None:
        self._started = True
        self._thread.start()
        self._marks.start()

    @property
    def died(self) -> bool:
        """A thread ended without being asked to."""
        ended = not (self._thread.is_alive() and self._marks.is_alive())
        return self._started and ended and not self._stop

    def stop(self, timeout: float = 2.0) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify_all()
            self._to_mark.notify_all()
        self._thread.join(timeout / 2)
        self._marks.join(timeout / 2)
        self._settle(final=True)
        if self._unmarked:
            log.error(
                "outbox: %d acknowledged message(s) could not be marked delivered (%s): they"
                " go again after the restart, as duplicates",
                len(self._unmarked),
                self._write_error,
            )

    def wake(self) -> None:
        """New rows were committed."""
        with self._changed:
            self._idle = False
            self._changed.notify_all()

    @property
    def sent(self) -> int:
        return self.counts["sent"]

    @property
    def acked(self) -> int:
        return self.counts["acked"]

    @property
    def in_flight(self) -> int:
        with self._changed:
            return len(self._inflight)

    # paho's network thread (or ours, for a PUBACK that beat publish() returning) ----------

    def _on_ack(self, seq: int, reason: int) -> None:
        """The PUBACK of the publish that carried row `seq`, and no other."""
        with self._changed:
            size = self._inflight.pop(seq, 0)
            if reason < 0x80 and size > self._largest_acked:
                self._largest_acked = size
            self._not_marked.add(seq)
            self._last_ack_at = time.time()
            self._ack(seq, reason)
            # Wake the sender only when this ack gives it a page of room: waking it at every
            # PUBACK costs more than the publishing itself.
            if self._room() >= self._page():
                self._changed.notify_all()

    def _ack(self, seq: int, reason: int) -> None:
        self._mark_due()
        if reason >= 0x80:
            self._refused.append((seq, _REFUSALS.get(reason, f"refused_{reason:#x}")))
        else:
            self._acked.append(seq)
        self._suspects.pop(seq, None)

    def _on_connection(self, up: bool) -> None:
        """Told by the link of a connect, and of a drop it did not cause (never at stop)."""
        with self._changed:
            if not up and self._inflight:
                oldest = next(iter(self._inflight))
                self._suspects = {oldest: self._suspects.get(oldest, 0) + 1}
                # Not acknowledged: they stay pending in the outbox and go again, read
                # from the start.
                self._inflight.clear()
                self._cursor.clear()
                self._reread = True
            if not up and self.resend_within_s > 0 and self._last_ack_at is not None:
                # Every PUBACK of the lost connection came before this call (the same
                # thread): the marks thread writes them, then puts the last ones back.
                self._put_back_since = self._last_ack_at - self.resend_within_s
                self._to_mark.notify()
            self._last_ack_at = None
            self._epoch += 1
            self._changed.notify_all()

    # The sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_send = time.monotonic()
        while True:
            with self._changed:
                self._changed.wait_for(
                    lambda: (
                        self._stop
                        or (
                            self.link.connected.is_set()
                            and self._room() >= self._page()
                            and not self._idle
                            and self._put_back_since is None
                        )
                    ),
                    timeout=_IDLE_S,
                )
                if self._stop:
                    return
                after = dict(self._cursor)
                epoch = self._epoch
                if self._reread:
                    self._reread = False
                    self._ahead.clear()
                room = self._room()
                page = self._page()
                putting_back = self._put_back_since is not None
                self._idle = False
            if room < page or putting_back or not self.link.connected.is_set():
                continue
            rows = self._take(room, after)
            if not rows:
                with self._changed:
                    self._idle = True  # until new rows are committed (wake) or a timeout
                continue
            if not self.rate:
                # paho's lock handed over once a page, not at every message; the PUBACKs
                # that come meanwhile are taken after it. (Our lock is taken inside paho's,
                # as on paho's thread when it hands a PUBACK over.)
                with self.link.holding_acks():
                    for row in rows:
                        if not self._publish(row, epoch):
                            self._ahead.clear()  # read again from the cursor
                            break
                continue
            for row in rows:
                delay = next_send - time.monotonic()
                if delay > 0 and self._wait(delay):
                    return
                next_send = max(next_send + 1 / self.rate, time.monotonic())
                if not self._publish(row, epoch):
                    self._ahead.clear()
                    break

    def _take(self, room: int, after: dict[str, int]) -> list[Stored]:
        """Up to `room` rows to publish, from those read ahead, else read from `after`."""
        if not self._ahead:
            rows = self.outbox.pending_after(max(room, _READ_AHEAD), after)
            with self._changed:
                if self._not_marked:
                    # Acknowledged already, only the mark is missing: not sent again.
                    known = self._not_marked
                    for row in rows:
                        if row.seq in known:
                            self._cursor[row.cls] = max(self._cursor.get(row.cls, 0), row.seq)
                    rows = [row for row in rows if row.seq not in known]
            self._ahead.extend(rows)
        take = min(room, len(self._ahead))
        return [self._ahead.popleft() for _ in range(take)]

    def _room(self) -> int:
        """Rows that may be published now. While a row is suspected of a drop, one at a
        time: a broker that closes the connection at a publish may not have flushed the
        PUBACKs of the rows before it, which would then be suspected in its place."""
        window = 1 if self._suspects else self.link.window(self.window)
        return window - len(self._inflight)

    def _page(self) -> int:
        """The window is refilled half at a time: a wake-up for many PUBACKs. (A quarter
        cost a fifth of the drain's speed with Mosquitto's Receive Maximum of 20.)"""
        return 1 if self._suspects else max(1, self.link.window(self.window) // 2)

    def _wait(self, seconds: float) -> bool:
        with self._changed:
            self._changed.wait_for(lambda: self._stop, seconds)
            return self._stop

    def _publish(self, row: Stored, epoch: int) -> bool:
        limit = self.link.max_packet_size
        size = len(row.payload) + len(row.topic) + _FIXED_HEADER
        if limit and size > limit:
            self._put_aside(row, "too_large", "is larger than the broker takes")
            return True
        if self._suspects.get(row.seq, 0) >= _SUSPECT_DROPS:
            if self._largest_acked > 0 and size > _LARGER * self._largest_acked:
                # Far larger than anything the broker took: its size is the likely reason
                # (not a topic the broker refuses), and every row as large goes aside from
                # now on without three drops each.
                self.link.limit_packet_size(
                    size,
                    f"dropped the connection {_SUSPECT_DROPS} times in a row at a message of "
                    f"{size} bytes, having taken messages of up to {self._largest_acked}",
                )
                self._put_aside(row, "too_large", "is larger than the broker takes")
            else:
                self._put_aside(
                    row,
                    "dropped_connection",
                    f"was the oldest in flight at {_SUSPECT_DROPS} drops in a row",
                )
            return True
        with self._changed:
            if epoch != self._epoch:
                # The connection changed under this page: read again from the cursor the
                # new connection starts with (a duplicate at worst, never a gap).
                return False
            # Read and in flight before it is sent: its PUBACK may come before publish()
            # returns. A connection change from here on clears both.
            self._inflight[row.seq] = size
            read_before = self._cursor.get(row.cls, 0)
            self._cursor[row.cls] = max(read_before, row.seq)
        # Not under our lock: the link calls _on_ack holding paho's lock, which publish()
        # takes too.
        try:
            self.link.publish(
                row.topic, row.payload, qos=row.qos, on_ack=partial(self._acked_by, row.seq)
            )
        except PublishError:
            # Not connected any more, or paho's queue is full: it stays pending.
            with self._changed:
                self._inflight.pop(row.seq, None)
                if epoch == self._epoch:
                    self._cursor[row.cls] = read_before  # to be read again
            return False
        self.counts.add("sent")
        return True

    def _put_aside(self, row: Stored, reason: str, why: str) -> None:
        log.warning("outbox row %d (%s) %s: set aside", row.seq, row.topic, why)
        with self._changed:
            self._mark_due()
            self._suspects.pop(row.seq, None)
            self._refused.append((row.seq, reason))
            self._not_marked.add(row.seq)
            self._cursor[row.cls] = max(self._cursor.get(row.cls, 0), row.seq)

    def _mark_due(self) -> None:
        """Called under the lock before a row joins the ones to write: the first of a batch
        wakes the marks thread."""
        if not (self._acked or self._refused):
            self._to_mark.notify()

    def _mark_run(self) -> None:
        """The marks thread: asleep until a row is acknowledged or refused (an idle link
        wakes no one), then what comes within _SETTLE_S goes to the outbox in one write,
        while the sender thread publishes on: batching is the point."""
        while True:
            with self._changed:
                # A write that failed (a full disk) is tried again when due.
                retry = self._unmarked or self._unrefused
                due = max(0.0, self._retry_at - time.monotonic()) if retry else None
                self._to_mark.wait_for(
                    lambda: (
                        self._stop
                        or self._acked
                        or self._refused
                        or self._put_back_since is not None
                    ),
                    due,
                )
                # On _to_mark, not _changed: the sender's wake-ups at every page of PUBACKs
                # would wake this thread too, for nothing.
                if self._stop or self._to_mark.wait_for(lambda: self._stop, timeout=_SETTLE_S):
                    return
            self._settle()
            self._put_back()

    def _put_back(self) -> None:
        """After a drop: the rows acknowledged in its last resend_within_s pending again,
        so they go after the reconnect (the sender waits for this)."""
        with self._changed:
            since = self._put_back_since
        if since is None:
            return
        self._settle()  # every acknowledgement of the lost connection written first
        try:
            count = self.outbox.put_back(since, SENDER_CLASSES)
        except OutboxWriteError as exc:
            count = 0
            log.warning("outbox: acknowledged rows not put back after the drop: %s", exc)
        with self._changed:
            self._put_back_since = None
            self._idle = False
            self._cursor.clear()  # read from the start: the rows put back are older
            self._reread = True
            self._changed.notify_all()
        if count:
            self.counts.add("put_back", count)
            log.info(
                "mqtt: %d message(s) acknowledged in the last %g s before the connection was "
                "lost go again (mqtt.resend_acked_within_s): a broker going down may not have "
                "stored them; consumers drop the duplicates by id",
                count,
                self.resend_within_s,
            )

    def _settle(self, final: bool = False) -> None:
        """Writes what the broker acknowledged or refused to the outbox. When that fails
        (a full disk) it is kept and tried again after a while, not on every call."""
        with self._changed:
            acked, self._acked = self._acked, []
            refused, self._refused = self._refused, []
        for seq, reason in refused:
            if reason not in ("too_large", "dropped_connection"):
                log.warning("broker refused outbox row %d (%s): set aside", seq, reason)
        self.counts.add("acked", len(acked))
        self._unmarked.extend(acked)
        self._unrefused.extend(refused)
        if not self._unmarked and not self._unrefused:
            return
        if self._write_error and time.monotonic() < self._retry_at and not final:
            return
        try:
            while self._unmarked:
                chunk = self._unmarked[:_MARK_BATCH]
                self.outbox.mark_delivered(chunk)
                del self._unmarked[: len(chunk)]
                with self._changed:
                    self._not_marked.difference_update(chunk)
            while self._unrefused:
                seq, reason = self._unrefused[0]
                self.outbox.set_aside(seq, reason)
                del self._unrefused[0]
                with self._changed:
                    self._not_marked.discard(seq)
        except OutboxWriteError as exc:
            if str(exc) != self._write_error:
                log.error(
                    "outbox: %s; %d acknowledgement(s) kept in memory, retrying every %.0f s",
                    exc,
                    len(self._unmarked) + len(self._unrefused),
                    _RETRY_S,
                )
            self._write_error = str(exc)
            self._retry_at = time.monotonic() + _RETRY_S
            return
        if self._write_error:
            log.info("outbox: acknowledgements written again (%s before)", self._write_error)
            self._write_error = ""
