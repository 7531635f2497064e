"""What travels between a pipeline's source thread and its model's inference thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy.typing as npt

from edge_agent.pipeline.stats import PipelineStats
from edge_agent.runtime.model import LoadedModel
from edge_agent.runtime.preprocess import Geometry
from edge_agent.sources.base import Frame


class JobOwner(Protocol):
    """What a model's worker needs of a pipeline it runs jobs for (a Pipeline), so the
    worker and the jobs do not import the pipeline that imports them."""

    name: str
    stats: PipelineStats

    def use_model(self, model: LoadedModel, generation: int) -> None: ...

    def reprepare(self, job: Job, generation: int) -> None: ...

    def finish(self, job: Job, outputs: list[npt.NDArray[Any]], model: LoadedModel) -> None: ...


@dataclass
class Job:
    pipeline: JobOwner
    frame: Frame
    sample: npt.NDArray[Any]
    geometry: Geometry | None
    model_generation: int  # which model the sample was prepared for
    digest: bytes | None  # for the result cache
    timings: dict[str, float] = field(default_factory=dict)  # seconds, by stage
    queued_at: float = 0.0


class Producer(Protocol):
    """What a pipeline asks of whatever hands it frames (a source's runner) to choose
    between dropping and waiting when its queue is full."""

    @property
    def recorded(self) -> bool: ...

    @property
    def stopping(self) -> bool: ...


class JobQueue:
    """Jobs waiting for one model. Each pipeline may have at most its `queue_size` jobs
    waiting: past that its oldest is dropped, so a slow model never builds up latency, or
    (on_full "wait") the producer blocks until there is room, so none is lost."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._waiting: dict[str, int] = {}
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        # Producers waiting for room (on_full "wait"), on the same lock.
        self._room = threading.Condition(lock)
        self._closed = False
        self._wake_epoch = 0

    def put(self, job: Job, capacity: int, give_up: Callable[[], bool] | None = None) -> Job | None:
        """Queue `job`; returns the job dropped to make room, if any. With `give_up`, waits
        for room instead, until give_up() is true (woken by wake_producers) or the queue
        closes: then `job` itself is returned, not queued."""
        name = job.pipeline.name
        dropped = None
        with self._ready:
            if give_up is not None:
                while self._waiting.get(name, 0) >= capacity:
                    if self._closed or give_up():
                        return job
                    self._room.wait()
            elif self._waiting.get(name, 0) >= capacity:
                for queued in self._jobs:
                    if queued.pipeline.name == name:
                        dropped = queued
                        break
                if dropped is not None:
                    self._jobs.remove(dropped)
                    self._waiting[name] -= 1
            # Stamped once in: a producer's wait for room is not time in the queue.
            job.queued_at = time.perf_counter()
            self._jobs.append(job)
            self._waiting[name] = self._waiting.get(name, 0) + 1
            self._ready.notify()
        return dropped

    def take(self, max_items: int, max_wait: float, clock: Any) -> list[Job]:
        """Blocks for the first job, then gathers up to `max_items` for at most `max_wait`
        seconds. Empty once the queue is closed and drained."""
        with self._ready:
            epoch = self._wake_epoch
            while not self._jobs and not self._closed and self._wake_epoch == epoch:
                self._ready.wait()
            if max_items > 1 and max_wait > 0:
                deadline = clock() + max_wait
                while len(self._jobs) < max_items and not self._closed:
                    remaining = deadline - clock()
                    if remaining <= 0 or not self._ready.wait(remaining):
                        break
            batch: list[Job] = []
            while self._jobs and len(batch) < max_items:
                job = self._jobs.popleft()
                self._waiting[job.pipeline.name] -= 1
                batch.append(job)
            if batch:
                self._room.notify_all()
            return batch

    def remove_pipeline(self, name: str) -> list[Job]:
        """Takes a pipeline's waiting jobs out (it is being stopped or rebuilt)."""
        with self._ready:
            mine = [job for job in self._jobs if job.pipeline.name == name]
            for job in mine:
                self._jobs.remove(job)
            self._waiting[name] = 0
            self._room.notify_all()
            return mine

    def wake(self) -> None:
        """Makes a blocked take() return, empty if nothing is queued (a model swap waits)."""
        with self._ready:
            self._wake_epoch += 1
            self._ready.notify_all()

    def wake_producers(self) -> None:
        """Makes blocked put()s look at their give_up() again (a source is stopping)."""
        with self._ready:
            self._room.notify_all()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            self._room.notify_all()

    @property
    def closed(self) -> bool:
        with self._ready:
            return self._closed and not self._jobs

    def __len__(self) -> int:
        with self._ready:
            return len(self._jobs)
