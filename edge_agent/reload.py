"""A config change applied to the running agent: only what changed, in an order that never
leaves a pipeline without its model or source. A model that fails to load keeps the old
one running and is reported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.config.settings import AgentSettings, ModelSettings
from edge_agent.errors import UserError
from edge_agent.sources import create_source

if TYPE_CHECKING:
    from edge_agent.agent import Agent


class Reload:
    """The difference between the running settings and new ones, applied in an order that
    never leaves a pipeline without its model or source."""

    def __init__(self, agent: Agent, new: AgentSettings) -> None:
        self.agent = agent
        self.old = agent.settings
        self.new = new
        self.done: list[str] = []

    def apply(self) -> list[str]:
        agent, old, new = self.agent, self.old, self.new
        runtime_changed = new.runtime != old.runtime
        needed = agent.needed_models(new)
        # 1. Models: load new and changed ones first; on failure keep the old.
        for name in needed:
            if name not in agent.workers:
                if not self._start(name):
                    return self.done
                self.done.append(f"model {name} loaded")
            elif runtime_changed or _model_changed(old.models.get(name), new.models[name]):
                self._swap(name)
        agent.settings = new
        # 2. Pipelines removed, or moved to another source or model: take them out.
        for name in list(agent.pipelines):
            p_old = old.pipelines.get(name)
            p_new = new.pipelines.get(name)
            if (
                p_new is None
                or not p_new.enabled
                or p_old is None
                or (p_new.source, p_new.model) != (p_old.source, p_old.model)
            ):
                agent._remove_pipeline(name)
                if p_new is None or not p_new.enabled:
                    self.done.append(f"pipeline {name} stopped")
        # A changed source restarts alone; its pipelines stay as they are.
        for name, hub in agent.hubs.items():
            if new.sources[name] != old.sources.get(name):
                hub.replace(create_source(name, new.sources[name], new.device.state_dir))
                self.done.append(f"source {name} restarted")
        # 3. Pipelines added or rebuilt; in-place settings for the others.
        started: set[str] = set()
        for name, p_new in new.pipelines.items():
            if not p_new.enabled:
                continue
            if name in agent.pipelines:
                if p_new != old.pipelines[name]:
                    agent.pipelines[name].apply(p_new)
                    self.done.append(f"pipeline {name} settings applied")
                continue
            hub_existed = p_new.source in agent.hubs
            agent._add_pipeline(name, new)
            if not hub_existed:
                started.add(p_new.source)
            self.done.append(f"pipeline {name} started")
        for source in started:
            agent.hubs[source].runner.start()
        # 4. Models no pipeline uses any more.
        for name in list(agent.workers):
            if name not in needed:
                agent.workers.pop(name).stop()
                self.done.append(f"model {name} unloaded")
        for name in needed:
            agent.workers[name].batch = new.models[name].batch
        return self.done

    def _swap(self, name: str) -> None:
        agent = self.agent
        try:
            replicas = agent._load(name, self.new)
        except UserError as exc:
            agent.report(f"model {name}: not changed, old model keeps running: {exc}")
            return
        old = agent.workers[name]
        if len(replicas) == len(old.replicas):
            old.swap(replicas)
            self.done.append(f"model {name} swapped")
            return
        # Another number of replicas: a new worker takes over the pipelines.
        agent._start_worker(name, replicas, self.new)
        for pipeline in agent.pipelines.values():
            if pipeline.worker is old:
                pipeline.detach()
                pipeline.attach(agent.workers[name])
        old.stop()
        self.done.append(f"model {name} now {len(replicas)} replica(s)")

    def _start(self, name: str) -> bool:
        try:
            self.agent._start_worker(name, self.agent._load(name, self.new), self.new)
        except UserError as exc:
            self.agent.report(f"model {name}: cannot load, settings not applied: {exc}")
            return False
        return True


def _model_changed(old: ModelSettings | None, new: ModelSettings) -> bool:
    if old is None:
        return True
    return old.model_dump(exclude={"batch"}) != new.model_dump(exclude={"batch"})
