"""The device's side of escalation. Pipelines offer each result (`offer`, on their
finishing thread: a decision and a queue put, never a wait); the `escalation` thread
encodes the chosen ones into requests and stores them in the outbox (class `escalation`,
its own TTL and size bound), publishes them with a response topic and correlation data
(MQTT 5; the request's `reply_to` on 3.1.1), and turns each answer into a new result record
naming the original by id. A request that expires unsent, or gets no answer in time, is
settled the same way with the device's own result, marked `expired` or `timeout`."""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from edge_agent.config.settings import EscalateSettings
from edge_agent.counters import Counters
from edge_agent.escalation.policy import Policy, crop_region, top_box
from edge_agent.json_body import BodyError, parse_object
from edge_agent.link import topics
from edge_agent.link.mqtt import Message, MqttLink, OnAck, PublishError
from edge_agent.outbox.database import OutboxWriteError
from edge_agent.outbox.store import Outbox, Stored
from edge_agent.outbox.writer import OutboxWriter
from edge_agent.payloads import (
    Envelope,
    EscalationAnswer,
    EscalationRequest,
    ModelRef,
    RefinedResult,
    ResultPayload,
)
from edge_agent.runtime.quantization import QuantParams
from edge_agent.sinks import ResultSink
from edge_agent.sources.base import Frame
from edge_agent.sources.jpeg import decode_full, encode

log = logging.getLogger(__name__)

_WINDOW = 32  # requests published and not yet acknowledged
_TICK_S = 0.05
_EXPIRE_EVERY_S = 1.0
_MARK_EVERY_S = 0.5  # acknowledged requests are marked delivered at most this often
_ANSWERS_WAITING = 1000  # answers queued from the network thread; more are dropped


@dataclass
class _Offer:
    settings: EscalateSettings
    result: ResultPayload
    frame: Frame
    sample: npt.NDArray[Any]
    quant: QuantParams
    shape: list[int]  # the frame's height and width


@dataclass
class _InFlight:
    request: EscalationRequest
    sent: float  # monotonic
    deadline: float


class EscalationClient:
    """Implements the pipeline's Escalator. One per agent, for every pipeline."""

    def __init__(
        self,
        link: MqttLink,
        outbox: Outbox,
        writer: OutboxWriter,
        sink: ResultSink,
        prefix: str,
        device: str,
        envelope: Envelope,
    ) -> None:
        self.link = link
        self.outbox = outbox
        self.writer = writer
        self.sink = sink
        self.prefix = prefix
        self.device = device
        self.envelope = envelope
        # Always shown: offered, sent, answered, timeout, expired; as they come: band and
        # audit (escalated), over_budget, queue_full, stored, dropped_* (bad answers).
        self.counts = Counters("offered", "sent", "answered", "timeout", "expired")
        self.round_trips: list[float] = []  # seconds, the latest 10,000, for the benchmark
        self._policies: dict[str, Policy] = {}
        self._timeouts: dict[str, float] = {}  # pipeline -> timeout_s, as last offered
        self._max_answer: dict[str, int] = {}
        self._offers: queue.Queue[_Offer] = queue.Queue()
        self._answers: queue.Queue[Message] = queue.Queue(_ANSWERS_WAITING)
        self._acks: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
        self._unacked: set[int] = set()
        self._delivered: list[int] = []  # acknowledged, to be marked in the next batch
        self._marked_at = 0.0
        self._to_send = 0  # requests stored and not yet published by this process
        self._inflight: dict[str, _InFlight] = {}
        self._settled: dict[str, None] = {}  # request ids answered lately: repeats dropped
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="escalation", daemon=True)

    # Pipelines' finishing threads --------------------------------------------------------

    def offer(
        self,
        settings: EscalateSettings,
        result: ResultPayload,
        frame: Frame,
        sample: npt.NDArray[Any],
        quant: QuantParams,
    ) -> None:
        policy = self._policies.get(result.pipeline)
        if policy is None:
            policy = self._policies[result.pipeline] = Policy(settings)
        else:
            policy.configure(settings)
        decision = policy.decide(result.result)
        self.counts.add("offered")
        if decision == "no":
            return
        if decision == "over_budget" or self._offers.qsize() >= settings.queue:
            self.counts.add("over_budget" if decision == "over_budget" else "queue_full")
            return
        self.counts.add(decision)
        # Copies of what the request needs alone (the source and the worker may reuse their
        # buffers after this returns); the rest is left behind as empty arrays.
        empty = np.empty(0, np.uint8)
        picture = settings.send in ("jpeg", "crop")
        jpeg = frame.jpeg.copy() if picture and frame.jpeg is not None else None
        image = frame.data.copy() if picture and jpeg is None else empty
        kept = Frame(image, frame.captured, frame.wall_time, frame.index, jpeg=jpeg)
        tensor = sample.copy() if settings.send == "tensor" else empty
        shape = list(frame.data.shape[:2])
        self._offers.put(_Offer(settings, result, kept, tensor, quant, shape))
        self._wake.set()

    # Lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.link.subscribe(
            topics.Escalated(self.prefix, self.device, topics.ANY).topic, self._on_answer
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def dead(self) -> bool:
        return (
            self._thread.ident is not None
            and not self._thread.is_alive()
            and not self._stop.is_set()
        )

    def snapshot(self) -> dict[str, Any]:
        return {**self.counts.snapshot(), "in_flight": len(self._inflight)}

    # paho's network thread ---------------------------------------------------------------

    def _on_answer(self, message: Message) -> None:
        try:
            self._answers.put_nowait(message)
        except queue.Full:
            self.counts.add("dropped_flood")
        self._wake.set()

    # The escalation thread ---------------------------------------------------------------

    def _run(self) -> None:
        next_expiry = 0.0
        while not self._stop.is_set():
            self._wake.wait(_TICK_S)
            self._wake.clear()
            try:
                self._encode_offers()
                self._take_answers()
                self._mark_acks()
                now = time.monotonic()
                if self.link.connected.is_set():
                    self._send(backlog=now >= next_expiry)
                self._time_out(now)
                if now >= next_expiry:
                    next_expiry = now + _EXPIRE_EVERY_S
                    for row in self.outbox.take_expired("escalation"):
                        self._settle_unsent(row)
            except OutboxWriteError as exc:
                log.warning("escalation: outbox write failed (%s); retrying", exc)
            except Exception:  # a bug here must not end escalation for good
                log.exception("escalation: unexpected error")
        if self._delivered:  # not sent again after a restart
            try:
                self.outbox.mark_delivered(self._delivered)
            except OutboxWriteError as exc:
                log.warning("escalation: outbox write failed (%s) at stop", exc)

    def _encode_offers(self) -> None:
        while True:
            try:
                offer = self._offers.get_nowait()
            except queue.Empty:
                return
            request = self._request(offer)
            body = request.model_dump_json(by_alias=True).encode()
            policy = self._policies[offer.result.pipeline]
            if not policy.budget.take_bytes(len(body)):
                self.counts.add("over_budget")
                continue
            self._timeouts[request.pipeline] = offer.settings.timeout_s
            self._max_answer[request.pipeline] = offer.settings.max_answer_bytes
            topic = topics.Escalate(self.prefix, self.device, request.pipeline).topic
            self.writer.put_message(topic, body, "escalation", request.id)
            self._to_send += 1
            self.counts.add("stored")

    def _request(self, offer: _Offer) -> EscalationRequest:
        settings, frame = offer.settings, offer.frame
        region: list[int] | None = None
        if settings.send == "tensor":
            real = (
                offer.quant.dequantize(offer.sample) if offer.quant.is_quantized else offer.sample
            )
            tensor = np.ascontiguousarray(real, dtype="<f4")
            data, shape = tensor.tobytes(), list(tensor.shape)
        else:
            crop = _crop(offer) if settings.send == "crop" else None
            if crop is None:
                data, shape = _jpeg(frame, settings.jpeg_quality), offer.shape
            else:
                data, shape, region = crop
        pipeline = offer.result.pipeline
        return EscalationRequest.model_construct(
            id=self.envelope.new_id(),
            ts=time.time(),
            device=self.device,
            pipeline=pipeline,
            result_id=offer.result.id,
            reply_to=topics.Escalated(self.prefix, self.device, pipeline).topic,
            format="tensor" if settings.send == "tensor" else "jpeg",  # a crop is a JPEG
            shape=shape,
            data=base64.b64encode(data).decode(),
            crop=region,
            result=offer.result,
        )

    def _send(self, backlog: bool) -> None:
        """Publishes stored requests; reads the outbox only while some this process stored
        are unpublished, or for `backlog` (stored before a restart or a reconnect)."""
        room = _WINDOW - len(self._unacked)
        if room <= 0 or not (backlog or self._to_send > 0):
            return
        exclude = frozenset(self._unacked.union(self._delivered))
        for row in self.outbox.pending(room, exclude, cls="escalation"):
            try:
                request = EscalationRequest.model_validate_json(row.payload)
            except ValidationError:
                self.outbox.set_aside(row.seq, "unreadable")
                continue
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = request.reply_to
            props.CorrelationData = request.id.encode()
            now = time.monotonic()
            timeout = self._timeouts.get(request.pipeline, EscalateSettings().timeout_s)
            self._inflight[request.id] = _InFlight(request, now, now + timeout)
            seq = row.seq
            try:
                self.link.publish(
                    row.topic,
                    row.payload,
                    qos=1,
                    properties=props,
                    on_ack=self._acker(seq),
                )
            except PublishError as exc:
                del self._inflight[request.id]
                log.debug("escalation: not sent now (%s)", exc)
                return
            self._unacked.add(seq)
            self._to_send = max(0, self._to_send - 1)
            self.counts.add("sent")

    def _acker(self, seq: int) -> OnAck:
        """Hands the PUBACK of row `seq` from paho's thread to this one."""
        return lambda code: self._acks.put((seq, code))

    def _mark_acks(self) -> None:
        delivered = []
        while True:
            try:
                seq, code = self._acks.get_nowait()
            except queue.Empty:
                break
            self._unacked.discard(seq)
            if code >= 0x80:
                self.outbox.set_aside(seq, "rejected")
            else:
                delivered.append(seq)
        self._delivered.extend(delivered)
        # Marked together: each mark is a commit (an fsync at durability "full").
        now = time.monotonic()
        if self._delivered and (len(self._delivered) >= _WINDOW or now >= self._marked_at):
            self.outbox.mark_delivered(self._delivered)
            self._delivered = []
            self._marked_at = now + _MARK_EVERY_S
        if not self.link.connected.is_set() and self._unacked:
            # Their PUBACKs never come: the rows are sent again.
            self._to_send += len(self._unacked)
            self._unacked.clear()

    def _time_out(self, now: float) -> None:
        late = [rid for rid, f in self._inflight.items() if f.deadline <= now]
        for rid in late:
            flight = self._inflight.pop(rid)
            self.counts.add("timeout")
            self._remember(rid)
            self._settle(flight.request.result, "timeout", None)

    def _settle_unsent(self, row: Stored) -> None:
        try:
            request = EscalationRequest.model_validate_json(row.payload)
        except ValidationError:
            return
        self.counts.add("expired")
        self._inflight.pop(request.id, None)
        self._settle(request.result, "expired", None)

    def _take_answers(self) -> None:
        while True:
            try:
                message = self._answers.get_nowait()
            except queue.Empty:
                return
            self._answer(message)

    def _answer(self, message: Message) -> None:
        topic = message.topic
        pipeline = topic.pipeline if isinstance(topic, topics.Escalated) else ""
        limit = self._max_answer.get(pipeline, EscalateSettings().max_answer_bytes)
        if len(message.payload) > limit:
            return self._drop("oversize", f"{len(message.payload)} bytes, over {limit}")
        try:
            answer = EscalationAnswer.model_validate(parse_object(message.payload))
        except (BodyError, ValidationError) as exc:
            return self._drop("bad_shape", str(exc).splitlines()[0])
        correlation = getattr(message.properties, "CorrelationData", None)
        request_id = correlation.decode(errors="replace") if correlation else answer.request_id
        if request_id != answer.request_id:
            return self._drop(
                "unknown_id", f"correlation {request_id!r} is not {answer.request_id!r}"
            )
        flight = self._inflight.pop(request_id, None)
        if flight is None:
            why = "answered already" if request_id in self._settled else "no such request waiting"
            return self._drop("unknown_id", f"request {request_id!r}: {why}")
        self._remember(request_id)
        self.round_trips.append(time.monotonic() - flight.sent)
        del self.round_trips[:-10_000]
        self.counts.add("answered")
        self._settle(flight.request.result, "answered", answer)

    def _drop(self, why: str, detail: str) -> None:
        self.counts.add(f"dropped_{why}")
        log.warning("escalation: answer dropped (%s): %s", why, detail)

    def _remember(self, request_id: str) -> None:
        self._settled[request_id] = None
        if len(self._settled) > 10_000:
            del self._settled[next(iter(self._settled))]

    def _settle(self, original: ResultPayload, state: str, answer: EscalationAnswer | None) -> None:
        """The new result record naming the original: the answer's, or the device's own."""
        fields = original.model_dump(by_alias=False, exclude={"id", "schema_"})
        envelope = self.envelope
        fields.update(
            id=envelope.new_id(),
            seq=envelope.next_seq(),
            boot_id=envelope.boot_id,
            refines=original.id,
            escalation=state,
        )
        if answer is not None:
            fields.update(
                model=ModelRef.model_validate(answer.model.model_dump()),
                delegate=f"escalation:{answer.delegate}",
                result=answer.result,
                latency_ms={**original.latency_ms, "escalation": answer.latency_ms},
            )
        self.sink.put(RefinedResult.model_validate(fields))


def _crop(offer: _Offer) -> tuple[bytes, list[int], list[int]] | None:
    """The top detection's region of the whole frame as a JPEG, its height and width, and
    where it is; None for a result without a box (the whole frame goes instead)."""
    box = top_box(offer.result.result)
    if box is None:
        return None
    frame = offer.frame
    # Boxes are in the frame's own pixels: a frame decoded at reduced scale is decoded
    # whole for its crop (here, off the pipeline's threads).
    image = decode_full(frame.jpeg) if frame.jpeg is not None else frame.data
    if image is None:  # a JPEG that does not decode whole: the frame as it came
        return None
    height, width = image.shape[:2]
    region = crop_region(box, offer.settings.crop_margin, width, height)
    if region is None:
        return None
    left, top, right, bottom = region
    part = Frame(image[top:bottom, left:right], frame.captured, frame.wall_time, frame.index)
    data = _jpeg(part, offer.settings.jpeg_quality)
    return data, [bottom - top, right - left], [left, top, right, bottom]


def _jpeg(frame: Frame, quality: int) -> bytes:
    """The frame as a JPEG: the camera's own when it came as one, else encoded here."""
    if frame.jpeg is not None:
        return frame.jpeg.tobytes()
    data = encode(frame.data, quality)
    if data is None:
        raise ValueError("the frame does not encode as a JPEG")
    return data
