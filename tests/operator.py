"""The operator's side in tests: sends commands to a device through a real broker and
waits for the replies (and update events) by request id."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tests.mqtt_fixtures import Endpoint, Subscriber

DEVICE = "test-device"


class Operator(Subscriber):
    def __init__(self, target: Endpoint, prefix: str = "edge") -> None:
        super().__init__(target, [f"{prefix}/+/reply/#", f"{prefix}/+/events/#"])
        self.prefix = prefix

    def send(
        self,
        command: str,
        /,
        *,
        to: str = f"device:{DEVICE}",
        raw: bytes | None = None,
        **fields: Any,
    ) -> str:
        """Publishes a command; returns its request id. `to` is device:ID, group:NAME or all."""
        request_id = fields.pop("request_id", None) or uuid.uuid4().hex[:16]
        kind, _, target = to.partition(":")
        base = {
            "device": f"{self.prefix}/{target}",
            "group": f"{self.prefix}/group/{target}",
            "all": f"{self.prefix}/all",
        }[kind]
        body = raw if raw is not None else json.dumps({"request_id": request_id, **fields}).encode()
        self.publish(f"{base}/cmd/{command}", body, qos=1)
        return str(request_id)

    def replies(self, request_id: str) -> list[dict[str, Any]]:
        return [
            json.loads(m.payload)
            for m in self.messages
            if "/reply/" in m.topic and json.loads(m.payload).get("request_id") == request_id
        ]

    def reply(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        [message] = self.wait_for(
            lambda m: (
                "/reply/" in m.topic and json.loads(m.payload).get("request_id") == request_id
            ),
            timeout,
        )
        return dict(json.loads(message.payload))

    def call(self, command: str, /, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        return self.reply(self.send(command, **fields), timeout)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(m.payload) for m in self.messages if "/events/" in m.topic]
        return [e for e in found if name is None or e.get("name") == name]

    def wait_event(self, stage: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("stage") == stage:
                    return event
            time.sleep(0.05)
        raise TimeoutError(f"no update event {stage!r}; got {self.events()}")
