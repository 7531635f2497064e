"""/metrics: the agent's live state in the Prometheus exposition format. Nothing is counted
twice: a collector reads the status and the pipelines' own counters at scrape time, into a
registry of this endpoint's own (prometheus_client's global one stays untouched)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from edge_agent.outbox.store import PRIORITY
from edge_agent.pipeline.stats import PipelineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "edge_agent"
# Pipeline counters (PipelineStats' COUNTS) exposed as <PREFIX>_pipeline_<name>_total.
PIPELINE_COUNTS = {
    "frames": "Frames captured.",
    "results": "Results handed off.",
    "dropped": "Frames dropped, the oldest first, as inference fell behind.",
    "skipped": "Frames skipped by the change gate.",
    "cache_hits": "Results reused from an identical earlier input.",
    "errors": "Frames not inferred or not decoded.",
}
LINK_STATES = ("online", "connecting", "waiting", "offline", "disabled")


class HasStats(Protocol):
    @property
    def stats(self) -> PipelineStats: ...


class AgentCollector(Collector):
    """`status`: the status command's answer (Agent.command_status); `pipelines`: the
    running pipelines by name, for their latency histograms."""

    def __init__(
        self,
        status: Callable[[], dict[str, Any]],
        pipelines: Callable[[], Mapping[str, HasStats]],
    ) -> None:
        self._status = status
        self._pipelines = pipelines

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from agent_info(status)
        yield from pipeline_metrics(status["pipelines"])
        yield from latency_histograms(self._pipelines())
        yield from model_info(status["models"])
        yield from outbox_metrics(status["outbox"])
        yield from link_metrics(status["link"])


def registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def agent_info(status: dict[str, Any]) -> Iterator[Metric]:
    info = InfoMetricFamily(f"{PREFIX}", "This agent.", labels=["version", "boot_id"])
    info.add_metric([status["version"], status["boot_id"]], {})
    yield info
    started = GaugeMetricFamily(f"{PREFIX}_start_time_seconds", "Unix time the agent started.")
    started.add_metric([], status["started"])
    yield started
    problems = GaugeMetricFamily(f"{PREFIX}_problems", "Problems active on the status.")
    problems.add_metric([], len(status["problems"]))
    yield problems


def pipeline_metrics(pipelines: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    fps = GaugeMetricFamily(
        f"{PREFIX}_pipeline_fps", "Results per second, lately.", labels=["pipeline"]
    )
    paused = GaugeMetricFamily(
        f"{PREFIX}_pipeline_paused", "1 while the pipeline is paused.", labels=["pipeline"]
    )
    counts = {
        name: CounterMetricFamily(f"{PREFIX}_pipeline_{name}", doc, labels=["pipeline"])
        for name, doc in PIPELINE_COUNTS.items()
    }
    for pipeline, p in pipelines.items():
        fps.add_metric([pipeline], p["fps"])
        paused.add_metric([pipeline], 1.0 if p["paused"] else 0.0)
        for name, family in counts.items():
            family.add_metric([pipeline], p[name])
    yield fps
    yield paused
    yield from counts.values()


def latency_histograms(pipelines: Mapping[str, HasStats]) -> Iterator[Metric]:
    family = HistogramMetricFamily(
        f"{PREFIX}_stage_latency_seconds",
        "Latency of each stage of a pipeline, since it started.",
        labels=["pipeline", "stage"],
    )
    for pipeline, p in pipelines.items():
        for stage, h in p.stats.latency_histograms().items():
            bounds = [repr(float(b)) for b in h.bounds] + ["+Inf"]
            family.add_metric(
                [pipeline, stage], list(zip(bounds, h.cumulative, strict=True)), h.sum
            )
    yield family


def model_info(models: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    family = InfoMetricFamily(
        f"{PREFIX}_model",
        "Each loaded model: its version, file hash and the delegate that runs it.",
        labels=["model"],
    )
    for name, m in models.items():
        family.add_metric(
            [name],
            {
                "name": m["name"],
                "version": m["version"],
                "sha256": m["sha256"],
                "delegate": m["delegate"],
            },
        )
    yield family


def outbox_metrics(outbox: dict[str, Any]) -> Iterator[Metric]:
    messages = GaugeMetricFamily(
        f"{PREFIX}_outbox_messages",
        "Messages in the outbox: pending by class; delivered (kept for local use) and set "
        "aside are counted for all classes together, with an empty class.",
        labels=["class", "state"],
    )
    size = GaugeMetricFamily(
        f"{PREFIX}_outbox_pending_bytes", "Bytes of pending messages.", labels=["class"]
    )
    by_class = outbox["by_class"]
    for cls in PRIORITY:
        counts = by_class.get(cls, {})
        messages.add_metric([cls, "pending"], counts.get("pending", 0))
        size.add_metric([cls], counts.get("bytes", 0))
    messages.add_metric(["", "delivered"], outbox["delivered_kept"])
    messages.add_metric(["", "set_aside"], outbox["set_aside"])
    yield messages
    yield size
    yield _gauge("outbox_file_bytes", "Size of the outbox files.", outbox["file_bytes"])
    yield _gauge(
        "outbox_oldest_pending_age_seconds",
        "Age of the oldest pending message; 0 when none is pending.",
        outbox["oldest_age_s"],
    )
    drops = CounterMetricFamily(
        f"{PREFIX}_outbox_drops", "Messages lost, by class and reason.", labels=["reason"]
    )
    for reason, n in outbox["drops"].items():
        drops.add_metric([reason], n)
    yield drops
    full_in = outbox.get("full_in_s")
    if full_in is not None:  # None: not filling, so no sample
        yield _gauge(
            "outbox_full_in_seconds",
            "How long until the outbox is full at the current rate.",
            full_in,
        )


def link_metrics(link: dict[str, Any] | None) -> Iterator[Metric]:
    current = link["state"] if link is not None else "disabled"
    state = StateSetMetricFamily(f"{PREFIX}_link_state", "The broker link's state.")
    state.add_metric([], {s: s == current for s in LINK_STATES})
    yield state
    if link is None:
        return
    reconnects = CounterMetricFamily(
        f"{PREFIX}_link_reconnects", "Connections made again after a loss."
    )
    reconnects.add_metric([], link["reconnects"])
    yield reconnects
    offline = CounterMetricFamily(
        f"{PREFIX}_link_offline_seconds", "Time the link has spent offline since start."
    )
    offline.add_metric([], link["seconds_offline"])
    yield offline


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
    family.add_metric([], value)
    return family
