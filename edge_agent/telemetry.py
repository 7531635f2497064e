"""Telemetry: the system and the agent in one message every `telemetry.interval_s`,
through the outbox as class telemetry (delivered last, dropped first when full)."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from edge_agent.agent import Agent

TELEMETRY_SCHEMA = "edge-agent/telemetry/1"


class Telemetry:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.process = psutil.Process()
        # The first cpu_percent call only sets the baseline; later ones measure from it.
        psutil.cpu_percent(percpu=True)
        self.process.cpu_percent()

    def collect(self) -> dict[str, Any]:
        agent = self.agent
        env = agent.envelope
        per_core = psutil.cpu_percent(percpu=True)
        memory = psutil.virtual_memory()
        disk = psutil.disk_usage(str(agent.settings.device.state_dir))
        with self.process.oneshot():
            process = {
                "rss_bytes": self.process.memory_info().rss,
                "cpu_percent": self.process.cpu_percent(),
                "threads": self.process.num_threads(),
                "open_files": self.process.num_fds(),
            }
        snapshot = agent.snapshot()
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
            "outbox": snapshot["outbox"],
            "link": snapshot["link"],
        }

    def publish(self) -> None:
        message = self.collect()
        topic = f"{self.agent.settings.mqtt.topic_prefix}/{self.agent.envelope.device}/telemetry"
        body = json.dumps(message, default=float).encode()
        self.agent.writer.put_message(topic, body, "telemetry", message["id"])


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
