"""Telemetry: the system and the agent in one message every `telemetry.interval_s`,
through the outbox as class telemetry (delivered last, dropped first when full)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from edge_agent.outbox.store import MessageClass
from edge_agent.payloads import Envelope

# Stores one message in the outbox: (topic, body, class, id).
Put = Callable[[str, bytes, MessageClass, str], None]

TELEMETRY_SCHEMA = "edge-agent/telemetry/1"


class Telemetry:
    def __init__(
        self,
        envelope: Envelope,
        state_dir: Path,
        snapshot: Callable[[], dict[str, Any]],
        put: Put,
        topic: str,
    ) -> None:
        self.envelope = envelope
        self.state_dir = state_dir
        self.snapshot = snapshot  # the agent's pipelines, models, outbox and link
        self.put = put
        self.topic = topic
        self.process = psutil.Process()
        # The first cpu_percent call only sets the baseline; later ones measure from it.
        psutil.cpu_percent(percpu=True)
        self.process.cpu_percent()

    def collect(self) -> dict[str, Any]:
        env = self.envelope
        per_core = psutil.cpu_percent(percpu=True)
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(self.state_dir))
        with self.process.oneshot():
            process = {
                "rss_bytes": self.process.memory_info().rss,
                "cpu_percent": self.process.cpu_percent(),
                "threads": self.process.num_threads(),
                "open_files": self.process.num_fds(),
            }
        snapshot = self.snapshot()
        return {
            "schema": TELEMETRY_SCHEMA,
            "id": env.new_id(),
            "seq": env.next_seq(),
            "ts": time.time(),
            "boot_id": env.boot_id,
            "device": env.device,
            "uptime_s": round(time.time() - env.started, 1),
            "system": {
                "cpu_percent": round(sum(per_core) / max(1, len(per_core)), 1),
                "cpu_percent_per_core": per_core,
                "load": list(os.getloadavg()),
                "memory_used_bytes": memory.total - memory.available,
                "memory_total_bytes": memory.total,
                "state_disk_free_bytes": disk.free,
                "temperatures_c": _temperatures(),
            },
            "process": process,
            "pipelines": snapshot["pipelines"],
            "models": snapshot["models"],
            # Update canaries running now: their live comparison (never their results).
            **({"shadows": snapshot["shadows"]} if snapshot.get("shadows") else {}),
            **({"escalation": snapshot["escalation"]} if "escalation" in snapshot else {}),
            "outbox": snapshot["outbox"],
            "link": snapshot["link"],
        }

    def publish(self) -> None:
        message = self.collect()
        body = json.dumps(message, default=float).encode()
        self.put(self.topic, body, "telemetry", message["id"])


def _temperatures() -> dict[str, float]:
    """Sensor temperatures where the board has them (thermal zones, hwmon)."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return {}
    try:
        sensors = reader()
    except OSError:
        return {}
    return {
        f"{name}/{entry.label or i}": entry.current
        for name, entries in sensors.items()
        for i, entry in enumerate(entries)
    }
