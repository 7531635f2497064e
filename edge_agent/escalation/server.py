"""The reference escalation server (`edge-fleet serve-escalation`): a bigger model run with
the agent's own runtime. It takes requests through a shared subscription
(`$share/GROUP/{prefix}/+/escalate/+`), so several servers split the load, and answers each
on the request's response topic with its correlation data (MQTT 5) or on its `reply_to`
(MQTT 3.1.1). A request id seen lately is not run or answered again: a device that resends
after a lost PUBACK gets one answer. paho's network thread only queues; the `escalation-
server` thread runs the model."""

from __future__ import annotations

import base64
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from edge_agent.counters import Counters
from edge_agent.json_body import BodyError, parse_object
from edge_agent.link import topics
from edge_agent.link.mqtt import no_nagle, quick_ack
from edge_agent.payloads import EscalationAnswer, EscalationRequest, ModelRef
from edge_agent.runtime.predictor import Predictor

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8 * 1024 * 1024
_SEEN = 100_000  # request ids remembered for dedupe
_QUEUE = 10_000


class EscalationServer:
    def __init__(
        self,
        predictor: Predictor,
        host: str,
        port: int,
        *,
        prefix: str = "edge",
        group: str = "escalation",
        protocol: str = "5",
        client_id: str = "",
        max_request_bytes: int = MAX_REQUEST_BYTES,
        setup: Callable[[mqtt.Client], None] | None = None,
    ) -> None:
        """`setup` configures the client before it connects: credentials, TLS."""
        self.predictor = predictor
        info = predictor.model.info
        self.model = ModelRef(name=info.name, version=info.version, sha256=info.sha256)
        self.filter = topics.escalate_share_filter(group, prefix)
        self.max_request_bytes = max_request_bytes
        self.counts = Counters()  # answered, duplicate, dropped_*
        self.connected = threading.Event()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(_QUEUE)
        self.v5 = protocol == "5"
        version = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version
        )
        self.name = client_id or "escalation-server"
        if setup is not None:
            setup(self.client)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_publish = lambda client, *_: quick_ack(client)  # the answers' PUBACKs
        self._host, self._port = host, port
        self._thread = threading.Thread(target=self._run, name="escalation-server", daemon=True)

    def start(self) -> EscalationServer:
        self.client.connect_async(self._host, self._port, keepalive=30)
        self.client.loop_start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("escalation server: broker refused: %s", reason)
            return
        no_nagle(client)  # an answer is one small message: sent now, not after an ACK
        client.subscribe(self.filter, qos=1)
        self.connected.set()
        log.info(
            "escalation server %s: serving %s with %s", self.name, self.filter, self.model.name
        )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        quick_ack(client)
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self.counts.add("dropped_queue_full")

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            try:
                self._handle(message)
            except Exception:  # one bad request must not stop the server
                log.exception("escalation server: a request failed")
                self.counts.add("failed")

    def _handle(self, message: mqtt.MQTTMessage) -> None:
        started = time.perf_counter()
        payload = bytes(message.payload)
        if len(payload) > self.max_request_bytes:
            self.counts.add("dropped_oversize")
            log.warning(
                "escalation server: request of %d bytes dropped (over %d)",
                len(payload),
                self.max_request_bytes,
            )
            return
        try:
            request = EscalationRequest.model_validate(parse_object(payload))
        except (BodyError, ValidationError) as exc:
            self.counts.add("dropped_bad_shape")
            log.warning("escalation server: request dropped: %s", str(exc).splitlines()[0])
            return
        if request.id in self._seen:
            self.counts.add("duplicate")
            return
        self._seen[request.id] = None
        if len(self._seen) > _SEEN:
            self._seen.popitem(last=False)
        result = self._predict(request)
        answer = EscalationAnswer(
            id=request.id + "-a",
            request_id=request.id,
            ts=time.time(),
            server=self.name,
            model=self.model,
            delegate=self.predictor.model.delegate,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            result=result,
        )
        props_in = getattr(message, "properties", None)
        topic = getattr(props_in, "ResponseTopic", None) or request.reply_to
        out = None
        correlation = getattr(props_in, "CorrelationData", None)
        if self.v5 and correlation is not None:
            out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            out.CorrelationData = correlation
        self.client.publish(
            topic, answer.model_dump_json(by_alias=True).encode(), qos=1, properties=out
        )
        self.counts.add("answered")

    def _predict(self, request: EscalationRequest) -> dict[str, Any]:
        data = base64.b64decode(request.data, validate=True)
        if request.format == "tensor":
            tensor = np.frombuffer(data, dtype="<f4").reshape(request.shape)
            sample, geometry = self.predictor.tensor_sample(tensor, "request"), None
        else:
            import cv2  # only for JPEG requests

            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"request {request.id}: the JPEG does not decode")
            sample, geometry = self.predictor.prepare(image)
        return self.predictor.predict([sample], [geometry])[0].result
