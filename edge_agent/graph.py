"""The pipelines and the sources that feed them: each source read once, by one thread,
fanning its frames out to every pipeline that names it. Reload and commands add, remove and
restart pipelines here; a source starts with its first pipeline and stops with its last."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_agent.config.settings import AgentSettings
from edge_agent.payloads import Envelope
from edge_agent.pipeline.pipeline import Escalator, Pipeline
from edge_agent.pipeline.worker import InferenceWorker
from edge_agent.runtime.preprocess import image_input_size
from edge_agent.sinks import ResultSink
from edge_agent.sources import SourceConfig, create_source
from edge_agent.sources.base import Frame, Source
from edge_agent.sources.runner import SourceRunner


class SourceHub:
    """One source, read once, feeding every pipeline that names it."""

    def __init__(self, name: str, source: Source) -> None:
        self.name = name
        self._pipelines: tuple[Pipeline, ...] = ()  # replaced whole: the reader needs no lock
        self.last_frame: Frame | None = None  # for snapshots
        self._sized_for: tuple[object, ...] | None = None  # the models wanted_size was for
        self.runner = self._runner(source)

    @property
    def pipelines(self) -> tuple[Pipeline, ...]:
        return self._pipelines

    @pipelines.setter
    def pipelines(self, pipelines: tuple[Pipeline, ...]) -> None:
        self._pipelines = pipelines
        self.runner.source.wanted_size = wanted_size(pipelines)

    def replace(self, source: Source) -> None:
        self.runner.stop()
        self.runner = self._runner(source)
        self.runner.start()

    def _runner(self, source: Source) -> SourceRunner:
        source.wanted_size = wanted_size(self._pipelines)
        return SourceRunner(source, self._dispatch, on_stop=self._wake_producers)

    def _wake_producers(self) -> None:
        """A stop wakes the source's thread out of a wait for room in a full queue."""
        for pipeline in self.pipelines:
            pipeline.wake_producer()

    def _dispatch(self, frame: Frame) -> None:
        self.last_frame = frame
        pipelines = self.pipelines
        if frame.on_durable is not None and len(pipelines) > 1:
            frame.on_durable = _countdown(len(pipelines), frame.on_durable)
        runner = self.runner
        for pipeline in pipelines:
            pipeline.on_frame(frame, runner)
        # A model update may have changed an input size: sized again only when a model
        # behind the pipelines changed, not on every frame.
        models = tuple(p.worker.model for p in pipelines)
        sized = self._sized_for
        if (
            sized is None
            or len(sized) != len(models)
            or any(a is not b for a, b in zip(sized, models, strict=True))
        ):
            self._sized_for = models  # held, so a model's identity is not reused meanwhile
            runner.source.wanted_size = wanted_size(pipelines)


class PipelineGraph:
    def __init__(
        self,
        sink: ResultSink,
        envelope: Envelope,
        state_dir: Path,
        escalator: Escalator | None = None,
    ) -> None:
        self.sink = sink
        self.escalator = escalator  # for every pipeline; each says whether it escalates
        self.envelope = envelope
        self.state_dir = state_dir
        self._pipelines: dict[str, Pipeline] = {}
        self._hubs: dict[str, SourceHub] = {}

    # Reading --------------------------------------------------------------------------

    def pipelines(self) -> dict[str, Pipeline]:
        return dict(self._pipelines)

    def pipeline(self, name: str) -> Pipeline | None:
        return self._pipelines.get(name)

    def hub(self, source: str) -> SourceHub | None:
        return self._hubs.get(source)

    def hubs(self) -> dict[str, SourceHub]:
        return dict(self._hubs)

    # Changing -------------------------------------------------------------------------

    def add(self, name: str, settings: AgentSettings, worker: InferenceWorker) -> bool:
        """Builds the pipeline on `worker`; True when its source is new (not yet started:
        start_sources starts it, once every pipeline on it is in place)."""
        pipeline_settings = settings.pipelines[name]
        pipeline = Pipeline(
            name, pipeline_settings, worker, self.sink, self.envelope, self.escalator
        )
        pipeline.attach(worker)
        source_name = pipeline_settings.source
        hub = self._hubs.get(source_name)
        new_source = hub is None
        if hub is None:
            source = create_source(source_name, settings.sources[source_name], self.state_dir)
            hub = self._hubs[source_name] = SourceHub(source_name, source)
        hub.pipelines = (*hub.pipelines, pipeline)
        self._pipelines[name] = pipeline
        return new_source

    def remove(self, name: str) -> None:
        """Takes the pipeline out; its source stops when no other pipeline reads it."""
        pipeline = self._pipelines.pop(name)
        hub = self._hubs[pipeline.settings.source]
        hub.pipelines = tuple(p for p in hub.pipelines if p is not pipeline)
        pipeline.detach()
        if not hub.pipelines:
            hub.runner.stop()
            del self._hubs[hub.name]

    def restart(self, name: str, settings: AgentSettings, worker: InferenceWorker) -> list[str]:
        """Builds the pipeline again; its source restarts too when no other reads it."""
        source = self._pipelines[name].settings.source
        self.remove(name)
        if self.add(name, settings, worker):
            self.start_sources([source])
            return [f"pipeline {name} restarted", f"source {source} restarted"]
        return [f"pipeline {name} restarted"]

    def replace_source(self, name: str, config: SourceConfig) -> None:
        self._hubs[name].replace(create_source(name, config, self.state_dir))

    def move_model(self, old: InferenceWorker, new: InferenceWorker) -> None:
        """Every pipeline on `old` goes over to `new`."""
        for pipeline in self._pipelines.values():
            if pipeline.worker is old:
                pipeline.detach()
                pipeline.attach(new)

    def start_sources(self, names: list[str] | None = None) -> None:
        for name in self._hubs if names is None else names:
            self._hubs[name].runner.start()

    def stop_sources(self, timeout: float) -> None:
        """In parallel: each may wait out a read."""
        stoppers = [
            threading.Thread(target=hub.runner.stop, args=(timeout,), name=f"stop-{name}")
            for name, hub in self._hubs.items()
        ]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()

    # Health and status ----------------------------------------------------------------

    def health(self) -> list[str]:
        return [
            f"source {name}: its thread died" for name, h in self._hubs.items() if h.runner.dead
        ]

    def snapshot(self) -> dict[str, Any]:
        return {
            "pipelines": {name: p.snapshot() for name, p in self._pipelines.items()},
            "sources": {name: hub.runner.snapshot() for name, hub in self._hubs.items()},
        }


def wanted_size(pipelines: tuple[Pipeline, ...]) -> tuple[int, int] | None:
    """The smallest image that serves every pipeline's model: the largest input width and
    height among them; None (whole frames) when any model is not an image model."""
    sizes = [image_input_size(p.worker.model) for p in pipelines]
    if not sizes or None in sizes:
        return None
    return max(s[0] for s in sizes if s), max(s[1] for s in sizes if s)


def _countdown(count: int, then: Callable[[], None]) -> Callable[[], None]:
    """Calls `then` on the count-th call: once every pipeline's result is durable."""
    left = [count]
    lock = threading.Lock()

    def one_done() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    return one_done
