"""The endpoint's life: bound and served on one named daemon thread while the agent runs.
It never stops the agent: a missing token or a taken port leaves one line in the log and a
problem on the status, and the agent runs on without it."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.config.settings import HttpSettings
from edge_agent.http.auth import EndpointRefused, TokenGate, load_token
from edge_agent.http.handler import EndpointServer
from edge_agent.http.metrics import AgentCollector, HasStats, registry_of, render
from edge_agent.http.reuse import Reused
from edge_agent.http.routes import AgentView, Routes
from edge_agent.http.snapshot import Hubs, Snapshots
from edge_agent.status_board import StatusBoard

log = logging.getLogger(__name__)

PROBLEM = "http"  # the key of the endpoint's problem on the status board
# How often the serving loop looks for a stop request.
_POLL_S = 0.25


class HttpEndpoint:
    def __init__(
        self,
        settings: HttpSettings,
        *,
        device: str,
        status: Callable[[], dict[str, Any]],
        pipelines: Callable[[], Mapping[str, HasStats]],
        graph: Hubs,
        events: deque[dict[str, Any]],
        board: StatusBoard,
    ) -> None:
        self.settings = settings
        self._board = board
        registry = registry_of(AgentCollector(status, pipelines))
        self._snapshots = Snapshots(graph, settings.snapshot_quality)
        reuse_s = settings.reuse_ms / 1000
        self._view = AgentView(
            device=device,
            # `ts`: when it was made, so a reused answer shows its true age.
            status=Reused(lambda: {"ts": time.time(), **status()}, reuse_s),
            events=lambda: list(events),
            metrics=Reused(lambda: render(registry), reuse_s),
            snapshot=self._snapshots.latest,
        )
        self._server: EndpointServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def address(self) -> tuple[str, int] | None:
        """Where it listens, once started (the port chosen by the system when port 0)."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> bool:
        """Binds and serves; False (said once, and on the status) when it cannot."""
        s = self.settings
        try:
            gate = TokenGate(load_token(s))
        except EndpointRefused as exc:
            self._board.raise_problem(PROBLEM, f"http endpoint not started: {exc}")
            return False
        try:
            self._server = EndpointServer(s.host, s.port, Routes(self._view, gate))
        except OSError as exc:
            self._board.raise_problem(
                PROBLEM,
                f"http endpoint not started: port {s.port} on {s.host}: {exc.strerror or exc}; "
                "the agent runs on without it",
            )
            return False
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_S,), name="http", daemon=True
        )
        self._thread.start()
        host, port = self.address or (s.host, s.port)
        auth = "token required" if gate.required else "localhost only, no token"
        log.info("http endpoint on http://%s:%d/ (%s)", host, port, auth)
        return True

    def stop(self, timeout: float = 1.0) -> None:
        self._stopping = True
        self._snapshots.close()
        if self._server is None or self._thread is None:
            return
        if self._thread.is_alive():  # shutdown() would wait forever for a loop that ended
            self._server.shutdown()  # returns once serve_forever has
            self._thread.join(timeout)
        self._server.server_close()

    @property
    def dead(self) -> bool:
        """Its serving thread ended while the agent runs."""
        return self._thread is not None and not self._thread.is_alive() and not self._stopping
