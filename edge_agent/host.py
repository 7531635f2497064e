"""The models that run: each loaded from its current file (the update store's active version,
else the config's), on its own inference worker, swapped between batches when it changes.
Reload, updates, commands and the health check use this; none of them builds a worker."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_agent.config.settings import AgentSettings, BatchSettings
from edge_agent.errors import UserError
from edge_agent.pipeline.worker import FrameTap, InferenceWorker
from edge_agent.runtime.backend import Backend
from edge_agent.runtime.delegates import DelegateEntry
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.model import LoadedModel
from edge_agent.status_board import StatusBoard
from edge_agent.updates.store import ModelStore

log = logging.getLogger(__name__)


class SwapTimeout(UserError):
    """The workers did not take the new model in time; the old one still runs."""


@dataclass(frozen=True)
class LoadPlan:
    """How a model is loaded: the same for running it and for staging an update of it."""

    path: Path
    backend: Backend
    delegates: list[DelegateEntry]
    threads: int | None


class ShadowRun(Protocol):
    """An update's shadow canary beside a running model (updates/shadow.py)."""

    @property
    def tap(self) -> FrameTap: ...

    def start(self) -> Any: ...

    def stop(self) -> None: ...

    def stuck_for(self) -> float: ...

    def snapshot(self) -> dict[str, Any]: ...


def needed_models(settings: AgentSettings) -> list[str]:
    """The models some enabled pipeline uses."""
    return sorted({p.model for p in settings.pipelines.values() if p.enabled})


def pipelines_of(settings: AgentSettings, model: str) -> list[str]:
    """The enabled pipelines that run `model`."""
    return [n for n, p in settings.pipelines.items() if p.enabled and p.model == model]


class ModelHost:
    def __init__(self, backend: Backend, store: ModelStore, status: StatusBoard) -> None:
        self.backend = backend
        self.store = store
        self.status = status
        self._workers: dict[str, InferenceWorker] = {}
        self._shadows: dict[str, tuple[ShadowRun, InferenceWorker]] = {}
        # Models some pipeline needs that did not load (an AOT model without its NPU or a
        # CPU twin): their pipelines wait, the other models run, each reload tries again.
        self._refused: dict[str, str] = {}
        # Held while the set of running models or what they run changes: a reload, an
        # update's swap and a model file edit take turns.
        self.lock = threading.RLock()

    # Reading --------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self._workers)

    def worker(self, name: str) -> InferenceWorker | None:
        return self._workers.get(name)

    def workers(self) -> dict[str, InferenceWorker]:
        return dict(self._workers)

    def refused(self) -> dict[str, str]:
        """The needed models that did not load, with why."""
        return dict(self._refused)

    def plan(self, name: str, settings: AgentSettings) -> LoadPlan:
        model = settings.models[name]
        return LoadPlan(
            self.store.model_path(name) or model.path,
            self.backend,
            model.delegates or settings.runtime.delegates,
            model.threads or settings.runtime.threads,
        )

    def model_path(self, name: str, settings: AgentSettings) -> Path:
        return self.store.model_path(name) or settings.models[name].path

    # Changing -------------------------------------------------------------------------

    def load(self, name: str, settings: AgentSettings) -> list[LoadedModel]:
        """The model's replicas (one, unless configured otherwise); raises UserError."""
        plan = self.plan(name, settings)
        overrides = settings.models[name].overrides()
        replicas = [
            load_model(plan.path, plan.backend, plan.delegates, plan.threads, overrides)
            for _ in range(settings.models[name].replicas)
        ]
        model = replicas[0]
        log.info(
            "model %s: %s %s on %s (%s)",
            name,
            model.info.name,
            model.info.version,
            model.delegate,
            model.info.file_run.name,
        )
        return replicas

    def start(
        self, name: str, replicas: list[LoadedModel], batch: BatchSettings
    ) -> InferenceWorker:
        """A worker for the model. One already running under the name is replaced here but
        not stopped: the caller moves its pipelines over first, then stops it."""
        worker = InferenceWorker(name, replicas, batch)
        self._workers[name] = worker
        worker.start()
        if self._refused.pop(name, None) is not None:
            self.status.resolve(f"model {name}")
        return worker

    def refuse(self, name: str, reason: str, pipelines: list[str]) -> None:
        """The model did not load: its pipelines wait for it, named in a status problem
        until it loads or no pipeline needs it."""
        self._refused[name] = reason
        waiting = f"; pipeline {', '.join(pipelines)} not started" if pipelines else ""
        self.status.raise_problem(f"model {name}", f"model {name} not loaded: {reason}{waiting}")

    def forget(self, name: str) -> None:
        """No pipeline needs the refused model any more."""
        if self._refused.pop(name, None) is not None:
            self.status.resolve(f"model {name}")

    def swap(self, name: str, replicas: list[LoadedModel]) -> None:
        """The running worker takes `replicas` between two batches; SwapTimeout when it did
        not in time (and the old model keeps running)."""
        if not self._workers[name].swap(replicas):
            raise SwapTimeout(f"model {name}: the swap did not finish in time, old model runs")

    def stop(self, name: str, timeout: float = 5.0) -> None:
        worker = self._workers.pop(name, None)
        if worker is not None:
            worker.stop(timeout)

    def stop_all(self, timeout: float) -> None:
        for worker in self._workers.values():
            worker.stop(timeout)

    def load_current(self, name: str, settings: AgentSettings) -> LoadedModel:
        """Loads the model's current file and swaps it in; the model that now runs. Raises
        UserError, and keeps the old model running, when it does not load or swap."""
        with self.lock:
            key = f"model {name}"
            try:
                replicas = self.load(name, settings)
                if len(replicas) == len(self._workers[name].replicas):
                    self.swap(name, replicas)
                else:
                    raise UserError(f"{key}: replicas changed; applied by the next reload")
            except UserError as exc:
                self.status.raise_problem(
                    key, f"{key}: new file not used, old model keeps running: {exc}"
                )
                raise
            if not self.status.resolve(key):
                self.status.touch()  # operators see the version that now runs
            return self._workers[name].model

    # Shadows --------------------------------------------------------------------------

    def attach_shadow(self, name: str, shadow: ShadowRun) -> None:
        """Starts `shadow` on a sample of the running model's frames; UserError when no
        pipeline runs the model (there is nothing to compare it with)."""
        with self.lock:
            worker = self._workers.get(name)
            if worker is None:
                raise UserError(f"model {name}: no pipeline runs it, so nothing to shadow")
            shadow.start()
            self._shadows[name] = (shadow, worker)
            worker.shadow = shadow.tap

    def detach_shadow(self, name: str) -> None:
        with self.lock:
            found = self._shadows.pop(name, None)
            if found is not None:
                shadow, worker = found
                worker.shadow = None
                shadow.stop()

    def shadows(self) -> dict[str, dict[str, Any]]:
        """The running shadows' figures, for telemetry."""
        return {name: found[0].snapshot() for name, found in list(self._shadows.items())}

    # Health ---------------------------------------------------------------------------

    def health(self, stuck_after_s: float) -> list[str]:
        problems = []
        for name, worker in self._workers.items():
            stuck = worker.stuck_for()
            if stuck > stuck_after_s:
                problems.append(f"model {name}: an inference has not returned for {stuck:.0f} s")
            if not worker.alive:
                problems.append(f"model {name}: an inference thread died")
        for name, (shadow, _) in list(self._shadows.items()):
            # The updater drops a shadow stuck for half this long; one still here is not
            # let go, and its hung thread holds a core.
            stuck = shadow.stuck_for()
            if stuck > stuck_after_s:
                problems.append(f"model {name}: a shadow inference hung for {stuck:.0f} s")
        return problems
