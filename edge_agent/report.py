"""What the agent says of itself, read from its parts: the retained status, the status
command's answer, telemetry's snapshot and the log's status line. Nothing here changes a
part."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.config.settings import AgentSettings
from edge_agent.graph import PipelineGraph
from edge_agent.host import ModelHost
from edge_agent.outbox.store import Outbox
from edge_agent.payloads import Envelope
from edge_agent.status_board import StatusBoard

if TYPE_CHECKING:
    from edge_agent.escalation.client import EscalationClient
    from edge_agent.link.mqtt import MqttLink


class Report:
    def __init__(
        self,
        envelope: Envelope,
        settings: Callable[[], AgentSettings],
        host: ModelHost,
        graph: PipelineGraph,
        outbox: Outbox,
        board: StatusBoard,
        link: MqttLink | None,
        escalation: EscalationClient | None,
    ) -> None:
        self.envelope = envelope
        self.settings = settings  # the settings that run now (a reload replaces them)
        self.host = host
        self.graph = graph
        self.outbox = outbox
        self.board = board
        self.link = link
        self.escalation = escalation

    def online(self) -> dict[str, Any]:
        """The retained status published on every connect and when a problem comes or goes."""
        problems = self.board.problems()
        return {
            "boot_id": self.envelope.boot_id,
            "version": __version__,
            "started": self.envelope.started,
            "models": {
                name: {
                    "name": w.model.info.name,
                    "version": w.model.info.version,
                    "sha256": w.model.info.sha256,
                    "delegate": w.model.delegate,
                }
                for name, w in self.host.workers().items()
            },
            "pipelines": sorted(self.graph.pipelines()),
            "groups": list(self.settings().device.groups),  # for `edge-fleet --group`
            "problems": [p.as_dict() for p in problems],
            "last_error": problems[-1].text if problems else "",
        }

    def command(self) -> dict[str, Any]:
        """The `status` command's answer: the retained status with live counters."""
        return {
            **self.online(),
            "pipelines": {
                name: {**p.stats.snapshot(), "paused": p.paused.is_set()}
                for name, p in self.graph.pipelines().items()
            },
            "outbox": self.outbox.stats(),
            "link": self.link.snapshot() if self.link is not None else None,
            **({"escalation": self.escalation.snapshot()} if self.escalation is not None else {}),
        }

    def snapshot(self) -> dict[str, Any]:
        """Telemetry's figures: every part's counts."""
        return {
            **self.graph.snapshot(),
            "models": {
                name: {
                    "name": w.model.info.name,
                    "version": w.model.info.version,
                    "delegate": w.model.delegate,
                    "invokes": w.invokes,
                }
                for name, w in self.host.workers().items()
            },
            "shadows": self.host.shadows(),
            # The escalation client's counts (offered, sent, answered, ...): absent when off.
            **({"escalation": self.escalation.snapshot()} if self.escalation is not None else {}),
            "outbox": self.outbox.stats(),
            "link": self.link.snapshot() if self.link else {"state": "disabled"},
            "problems": [p.as_dict() for p in self.board.problems()],
            "last_error": self.board.last_error,
        }

    def line(self) -> str:
        """One line for the log and systemd's STATUS=."""
        parts = []
        hubs = self.graph.hubs()
        for name, pipeline in self.graph.pipelines().items():
            s = pipeline.stats.snapshot()
            total = s["latency_ms"]["total"].get("p50", 0.0)
            hub = hubs.get(pipeline.settings.source)
            state = hub.runner.state.value if hub else "?"
            parts.append(
                f"{name}: {s['fps']:.1f} fps, p50 {total:.1f} ms, {s['results']} results, "
                f"{s['dropped']} dropped, {s['skipped']} skipped, {s['cache_hits']} cached"
                + ("" if state == "running" else f", source {state}")
            )
        if self.link is not None:
            link = self.link.snapshot()
            offline = link["state"] != "online" and link["last_error"]
            problem = f" ({link['last_error']})" if offline else ""
            parts.append(f"mqtt {link['state']}{problem}")
        outbox = self.outbox.stats()
        full_in = outbox["full_in_s"]
        filling = "" if full_in is None else f", full in {_duration(full_in)}"
        parts.append(f"outbox {outbox['pending']} pending{filling}")
        return " | ".join(parts) or "no pipeline running"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
