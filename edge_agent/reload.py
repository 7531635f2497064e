"""A config change applied to the running agent, all or nothing: every model the change
needs is loaded, and every swap taken, before anything else is touched, so a model that
cannot load or a swap that does not finish leaves the agent exactly as it was. Each section
declares how it applies (AgentSettings, config/section.py); the answer names what was done
and which keys wait for a restart."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.section import applies_of
from edge_agent.config.settings import AgentSettings, ModelSettings
from edge_agent.errors import UserError
from edge_agent.graph import PipelineGraph
from edge_agent.host import ModelHost, SwapTimeout, needed_models, pipelines_of
from edge_agent.logs import setup_logging
from edge_agent.runtime.model import LoadedModel

log = logging.getLogger(__name__)

# Sections whose changes the steps below apply themselves; other live sections are read
# where they are used (the service loop, the updater) and only need naming.
_APPLIED_BY_STEPS = ("runtime", "models", "sources", "pipelines")


class ReloadRefused(UserError):
    """The change cannot take effect (a model does not load, a swap does not finish);
    nothing was changed."""


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

    def __init__(
        self, host: ModelHost, graph: PipelineGraph, old: AgentSettings, new: AgentSettings
    ) -> None:
        self.host = host
        self.graph = graph
        self.old = old
        self.new = new
        # Every changed key, read once: what waits for a restart, and what is named as
        # applied where it is used.
        self.changed = changed_keys(old, new)
        self.applied = Applied(restart_required=restart_required(self.changed))
        # Models refused before this reload that still do not load: carried forward with
        # their pipelines waiting, not a reason to refuse the change.
        self.still_refused: dict[str, str] = {}

    def apply(self) -> Applied:
        host, graph, old, new = self.host, self.graph, self.old, self.new
        needed = needed_models(new)
        loaded = self._load_all(needed)  # raises ReloadRefused before anything changes
        self._swap_all(loaded)  # raises ReloadRefused with every swap undone
        done = self.applied.done
        for name, why in self.still_refused.items():
            host.refuse(name, why, pipelines_of(new, name))
            done.append(f"model {name} still not loaded")
        # 1. Models: new ones start; another number of replicas gets a new worker.
        for name, replicas in loaded.items():
            running = host.worker(name)
            if running is None:
                host.start(name, replicas, new.models[name].batch)
                done.append(_loaded(name, "loaded", replicas))
            elif len(running.replicas) != len(replicas):  # same number: swapped above
                replacement = host.start(name, replicas, new.models[name].batch)
                graph.move_model(running, replacement)
                running.stop()
                done.append(_loaded(name, f"now {len(replicas)} replica(s)", replicas))
        # 2. Pipelines removed, or moved to another source or model: take them out.
        for name in graph.pipelines():
            p_old = old.pipelines.get(name)
            p_new = new.pipelines.get(name)
            if (
                p_new is None
                or not p_new.enabled
                or p_old is None
                or (p_new.source, p_new.model) != (p_old.source, p_old.model)
            ):
                graph.remove(name)
                if p_new is None or not p_new.enabled:
                    done.append(f"pipeline {name} stopped")
        # A changed source restarts alone; its pipelines stay as they are.
        for name in graph.hubs():
            if new.sources[name] != old.sources.get(name):
                graph.replace_source(name, new.sources[name])
                done.append(f"source {name} restarted")
        # 3. Pipelines added or rebuilt; in-place settings for the others.
        started: list[str] = []
        for name, p_new in new.pipelines.items():
            if not p_new.enabled:
                continue
            running_pipeline = graph.pipeline(name)
            if running_pipeline is not None:
                if p_new != old.pipelines[name]:
                    running_pipeline.apply(p_new)
                    done.append(f"pipeline {name} settings applied")
                continue
            model_worker = host.worker(p_new.model)
            if model_worker is None:
                continue  # its model was refused: named on the status, tried again next time
            if graph.add(name, new, model_worker):
                started.append(p_new.source)
            done.append(f"pipeline {name} started")
        graph.start_sources(started)
        # 4. Models no pipeline uses any more.
        for name in host.names():
            if name not in needed:
                host.stop(name)
                done.append(f"model {name} unloaded")
        for name in host.refused():
            if name not in needed:
                host.forget(name)
        for name in needed:
            model_worker = host.worker(name)
            if model_worker is not None:
                model_worker.batch = new.models[name].batch
        self._logging()
        done.extend(_read_where_used(self.changed))
        return self.applied

    def _load_all(self, needed: list[str]) -> dict[str, list[LoadedModel]]:
        """Every model that is new, changed or refused before, loaded; or ReloadRefused
        naming each failure of a model that was not already refused."""
        runtime_changed = self.new.runtime != self.old.runtime
        refused_before = self.host.refused()
        loaded, failed = {}, []
        for name in needed:
            changed = _model_changed(self.old.models.get(name), self.new.models[name])
            if self.host.worker(name) is not None and not (runtime_changed or changed):
                continue
            try:
                loaded[name] = self.host.load(name, self.new)
            except UserError as exc:
                if name in refused_before:
                    self.still_refused[name] = str(exc)
                else:
                    failed.append(f"model {name}: {exc}")
        if failed:
            raise ReloadRefused("; ".join(failed))
        return loaded

    def _swap_all(self, loaded: dict[str, list[LoadedModel]]) -> None:
        """Running models with the same number of replicas take their new ones; when one
        does not in time, those already swapped go back and the reload is refused."""
        swapped: list[tuple[str, list[LoadedModel]]] = []
        for name, replicas in loaded.items():
            running = self.host.worker(name)
            if running is None or len(running.replicas) != len(replicas):
                continue
            previous = running.replicas
            try:
                self.host.swap(name, replicas)
            except SwapTimeout as exc:
                for back, old_replicas in reversed(swapped):
                    try:
                        self.host.swap(back, old_replicas)
                    except SwapTimeout:
                        log.error("model %s: could not go back to the previous model", back)
                raise ReloadRefused(str(exc)) from None
            swapped.append((name, previous))
            self.applied.done.append(_loaded(name, "swapped", replicas))

    def _logging(self) -> None:
        old, new = self.old.logging, self.new.logging
        if new.format != old.format:
            setup_logging(new.format, new.level)
        elif new.level != old.level:
            logging.getLogger().setLevel(new.level.upper())


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


def changed_keys(old: AgentSettings, new: AgentSettings) -> list[str]:
    before, after = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def section_applies(section: str) -> str:
    """How a change to `section` takes effect: "live", "part" or "restart"."""
    declared = applies_of(AgentSettings.model_fields[section].metadata)
    assert declared is not None, f"AgentSettings.{section} declares no Applies"
    return declared.how


def restart_required(changed: list[str]) -> list[str]:
    """The changed keys in sections that need a restart."""
    return [k for k in changed if section_applies(k.split(".")[0]) == "restart"]


def _read_where_used(changed: list[str]) -> list[str]:
    """Live sections that the reload steps do not touch (updates, telemetry, logging,
    service) are read where they are used: they took effect once the settings are swapped.
    Named here, so a change is never answered with "nothing changed"."""
    by_section: dict[str, list[str]] = {}
    for key in changed:
        section = key.split(".")[0]
        if section not in _APPLIED_BY_STEPS and section_applies(section) != "restart":
            by_section.setdefault(section, []).append(key)
    return [f"{', '.join(keys)} applied" for keys in by_section.values()]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
