"""A config change applied to the running agent: only what changed, in an order that never
leaves a pipeline without its model or source. Every model the change needs is loaded before
anything is touched, so a model that cannot load leaves the agent exactly as it was."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.config.settings import AgentSettings, ModelSettings
from edge_agent.errors import UserError
from edge_agent.runtime.model import LoadedModel
from edge_agent.sources import create_source

if TYPE_CHECKING:
    from edge_agent.agent import Agent

# Settings a running agent takes on: everything else is read once at start.
LIVE_KEYS = ("runtime", "models", "sources", "pipelines", "logging.level", "telemetry")


class ReloadRefused(UserError):
    """The change cannot take effect (a model does not load); nothing was changed."""


@dataclass
class Applied:
    done: list[str] = field(default_factory=list)
    # Keys that changed but take effect only at the next start.
    restart_required: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = ", ".join(self.done) or "nothing changed"
        if self.restart_required:
            text += "; at the next start: " + ", ".join(self.restart_required)
        return text


class Reload:
    """The difference between the running settings and new ones, applied in an order that
    never leaves a pipeline without its model or source."""

    def __init__(self, agent: Agent, new: AgentSettings) -> None:
        self.agent = agent
        self.old = agent.settings
        self.new = new
        self.applied = Applied(restart_required=restart_required(self.old, new))

    def apply(self) -> Applied:
        agent, old, new = self.agent, self.old, self.new
        needed = agent.needed_models(new)
        loaded = self._load_all(needed)  # raises ReloadRefused before anything changes
        done = self.applied.done
        # 1. Models: new ones start, changed ones are swapped between batches.
        for name, replicas in loaded.items():
            if name not in agent.workers:
                agent._start_worker(name, replicas, new)
                done.append(_loaded(name, "loaded", replicas))
            else:
                self._swap(name, replicas)
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
                    done.append(f"pipeline {name} stopped")
        # A changed source restarts alone; its pipelines stay as they are.
        for name, hub in agent.hubs.items():
            if new.sources[name] != old.sources.get(name):
                hub.replace(create_source(name, new.sources[name], new.device.state_dir))
                done.append(f"source {name} restarted")
        # 3. Pipelines added or rebuilt; in-place settings for the others.
        started: set[str] = set()
        for name, p_new in new.pipelines.items():
            if not p_new.enabled:
                continue
            if name in agent.pipelines:
                if p_new != old.pipelines[name]:
                    agent.pipelines[name].apply(p_new)
                    done.append(f"pipeline {name} settings applied")
                continue
            hub_existed = p_new.source in agent.hubs
            agent._add_pipeline(name, new)
            if not hub_existed:
                started.add(p_new.source)
            done.append(f"pipeline {name} started")
        for source in started:
            agent.hubs[source].runner.start()
        # 4. Models no pipeline uses any more.
        for name in list(agent.workers):
            if name not in needed:
                agent.workers.pop(name).stop()
                done.append(f"model {name} unloaded")
        for name in needed:
            agent.workers[name].batch = new.models[name].batch
        return self.applied

    def _load_all(self, needed: list[str]) -> dict[str, list[LoadedModel]]:
        """Every model that is new or changed, loaded; or ReloadRefused naming each failure."""
        runtime_changed = self.new.runtime != self.old.runtime
        loaded, failed = {}, []
        for name in needed:
            changed = _model_changed(self.old.models.get(name), self.new.models[name])
            if name in self.agent.workers and not (runtime_changed or changed):
                continue
            try:
                loaded[name] = self.agent._load(name, self.new)
            except UserError as exc:
                failed.append(f"model {name}: {exc}")
        if failed:
            raise ReloadRefused("; ".join(failed))
        return loaded

    def _swap(self, name: str, replicas: list[LoadedModel]) -> None:
        agent, done = self.agent, self.applied.done
        old = agent.workers[name]
        if len(replicas) == len(old.replicas):
            if old.swap(replicas):
                done.append(_loaded(name, "swapped", replicas))
            else:
                agent.report(f"model {name}: the swap did not finish in time, old model runs")
            return
        # Another number of replicas: a new worker takes over the pipelines.
        agent._start_worker(name, replicas, self.new)
        for pipeline in agent.pipelines.values():
            if pipeline.worker is old:
                pipeline.detach()
                pipeline.attach(agent.workers[name])
        old.stop()
        done.append(_loaded(name, f"now {len(replicas)} replica(s)", replicas))


def _loaded(name: str, what: str, replicas: list[LoadedModel]) -> str:
    """`model digits swapped, on cpu (edgetpu skipped: ...)`: the delegate that runs it."""
    model = replicas[0]
    skipped = [f"{a.delegate} skipped: {a.reason}" for a in model.attempts if not a.used]
    return f"model {name} {what}, on {model.delegate}" + (
        f" ({'; '.join(skipped)})" if skipped else ""
    )


def _model_changed(old: ModelSettings | None, new: ModelSettings) -> bool:
    if old is None:
        return True
    return old.model_dump(exclude={"batch"}) != new.model_dump(exclude={"batch"})


def restart_required(old: AgentSettings, new: AgentSettings) -> list[str]:
    """Keys that differ between `old` and `new` and are read only at start."""
    before, after = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return sorted(
        k for k in changed if not any(k == live or k.startswith(live + ".") for live in LIVE_KEYS)
    )


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
