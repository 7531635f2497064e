"""What each path answers, apart from sockets: a request's path, query and credentials in,
a Response out. The handler (handler.py) only carries bytes to and from here."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edge_agent.http.auth import TokenGate
from edge_agent.http.metrics import CONTENT_TYPE as METRICS_TYPE
from edge_agent.http.snapshot import Snapshot

JSON = "application/json"
# The page's own script and style are inline; it loads data only from this endpoint.
PAGE_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentView:
    """What the endpoint reads of the agent, each read when asked."""

    device: str
    status: Callable[[], dict[str, Any]]  # the status command's answer, with its `ts`
    events: Callable[[], list[dict[str, Any]]]  # recent events, oldest first
    metrics: Callable[[], bytes]  # the exposition text
    snapshot: Callable[[str | None], Snapshot | None]  # a source's latest frame, drawn


class Routes:
    def __init__(self, view: AgentView, gate: TokenGate) -> None:
        self._view = view
        self._gate = gate
        self._page = resources.files(__package__).joinpath("page.html").read_bytes()
        self._paths: dict[str, Callable[[dict[str, list[str]]], Response]] = {
            "/": self.page,
            "/metrics": self.metrics,
            "/api/status": self.status,
            "/api/snapshot.jpg": self.snapshot,
        }

    def get(self, target: str, authorization: str | None, client: str) -> Response:
        url = urlsplit(target)
        query = parse_qs(url.query)
        route = self._paths.get(url.path)
        if route is None:
            return _text(404, f"no such path: {url.path}")
        token = query.get("token", [None])[0]
        if not self._gate.allows(authorization, token, client):
            return Response(
                401,
                "text/plain; charset=utf-8",
                b"a valid token is needed: Authorization: Bearer <token>\n",
                {"WWW-Authenticate": 'Bearer realm="edge-agent"'},
            )
        return route(query)

    def page(self, query: dict[str, list[str]]) -> Response:
        return Response(
            200, "text/html; charset=utf-8", self._page, {"Content-Security-Policy": PAGE_POLICY}
        )

    def metrics(self, query: dict[str, list[str]]) -> Response:
        return Response(200, METRICS_TYPE, self._view.metrics())

    def status(self, query: dict[str, list[str]]) -> Response:
        body = {
            "device": self._view.device,
            **self._view.status(),
            "events": self._view.events(),
        }
        # How old the answer is as it leaves, by the agent's clock alone: a reused answer
        # was made before this request came, and a client adds its own wait to this.
        age = max(0.0, time.time() - body["ts"])
        return Response(200, JSON, json.dumps(body).encode(), {"X-Data-Age": f"{age:.3f}"})

    def snapshot(self, query: dict[str, list[str]]) -> Response:
        source = query.get("source", [None])[0]
        shot = self._view.snapshot(source)
        if shot is None:
            what = f"source {source!r}" if source else "any source"
            return _text(404, f"no image frame from {what} yet")
        return Response(
            200,
            "image/jpeg",
            shot.jpeg,
            {"X-Frame-Time": f"{shot.ts:.3f}", "X-Source": shot.source},
        )


def _text(status: int, text: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", (text + "\n").encode())
