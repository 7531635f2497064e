"""A TCP proxy that reads the MQTT packets it forwards: it sees each PUBLISH the client
sends (its packet id and topic) and each PUBACK the broker returns, and can withhold the
client's PUBLISHes on some topics once the client's packet ids have wrapped around
(65,535 -> 1). What it withholds never reaches the broker, so no PUBACK comes for it."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass

from paho.mqtt.client import topic_matches_sub

from tests.mqtt_fixtures import HOST, Endpoint

CONNECT, PUBLISH, PUBACK = 1, 3, 4
_BACKWARDS = 32_768  # a packet id this far below the last one: the ids wrapped around
_READ = 65_536


@dataclass(frozen=True)
class Withheld:
    packet_id: int
    topic: str
    payload: bytes


def _remaining_length(buf: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(value, bytes used) of the variable-length integer at `start`; None if incomplete."""
    value, shift = 0, 0
    for used in range(4):
        if start + used >= len(buf):
            return None
        byte = buf[start + used]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, used + 1
        shift += 7
    raise ValueError("malformed remaining length")


def _packets(buf: bytearray) -> list[bytes]:
    """The complete packets at the start of `buf`, taken out of it."""
    out = []
    while len(buf) >= 2:
        parsed = _remaining_length(buf, 1)
        if parsed is None:
            break
        length, used = parsed
        end = 1 + used + length
        if len(buf) < end:
            break
        out.append(bytes(buf[:end]))
        del buf[:end]
    return out


class WireProxy:
    """Forwards 127.0.0.1:port to `target`, packet by packet. Once armed (`withhold`), the
    client's PUBLISHes on topics matching the filter are dropped after its packet ids
    wrapped around, until `cut()`, which closes every connection and disarms."""

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        self.withheld: list[Withheld] = []
        self.wrapped = False
        self._filter: str | None = None
        self._protocol = 5
        self._last_id = 0
        self._published = 0  # QoS 1 PUBLISHes forwarded to the broker
        self._acked = 0  # PUBACKs forwarded to the client
        self._cond = threading.Condition()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((HOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self.host = HOST
        self._thread = threading.Thread(target=self._accept, name="wire-proxy", daemon=True)

    def start(self) -> WireProxy:
        self._thread.start()
        return self

    def withhold(self, topic_filter: str) -> None:
        with self._cond:
            self._filter = topic_filter

    def cut(self) -> None:
        with self._cond:
            self._filter = None
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._listener.close()
        self.cut()
        self._thread.join(5)

    def unanswered(self) -> int:
        """PUBLISHes the broker got and has not acknowledged yet."""
        with self._cond:
            return self._published - self._acked

    def wait_unanswered_below(self, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._published - self._acked < count, timeout):
                raise AssertionError(f"{self._published - self._acked} PUBLISHes unanswered")

    # Threads -----------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.create_connection((self.target.host, self.target.port))
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                self._sockets += [client, upstream]
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(src, dst, up), name="wire-pump", daemon=True
                ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        buf = bytearray()
        try:
            while data := src.recv(_READ):
                buf += data
                out = [
                    p if upstream else self._rewrite(p)
                    for p in _packets(buf)
                    if self._forward(p, upstream)
                ]
                if out:
                    dst.sendall(b"".join(out))
        except OSError:
            pass  # cut
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _rewrite(self, packet: bytes) -> bytes:
        """A packet from the broker as the client gets it: unchanged here."""
        return packet

    def _forward(self, packet: bytes, upstream: bool) -> bool:
        kind = packet[0] >> 4
        start = 1 + (_remaining_length(packet, 1) or (0, 0))[1]
        if not upstream:
            if kind == PUBACK:
                with self._cond:
                    self._acked += 1
                    self._cond.notify_all()
            return True
        if kind == CONNECT:
            self._protocol = packet[start + 6]  # after the protocol name "MQTT"
            return True
        if kind != PUBLISH or not (packet[0] >> 1) & 3:
            return True
        size = int.from_bytes(packet[start : start + 2], "big")
        topic = packet[start + 2 : start + 2 + size].decode()
        at = start + 2 + size
        packet_id = int.from_bytes(packet[at : at + 2], "big")
        at += 2
        if self._protocol == 5:
            length, used = _remaining_length(packet, at) or (0, 1)
            at += used + length
        with self._cond:
            if self._last_id - packet_id > _BACKWARDS:
                self.wrapped = True
            self._last_id = packet_id
            if self.wrapped and self._filter and topic_matches_sub(self._filter, topic):
                self.withheld.append(Withheld(packet_id, topic, packet[at:]))
                self._cond.notify_all()
                return False
            self._published += 1
        return True

    def wait_withheld(self, count: int, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.withheld) >= count, timeout):
                raise AssertionError(f"{len(self.withheld)} PUBLISHes withheld, not {count}")
