"""The inference threads of one model, shared by every pipeline that uses the model: they
batch those pipelines' frames, invoke, decode and hand results off. Each replica is an
interpreter of its own on a thread of its own; only that thread touches it, so a model
swap waits until every replica is between two batches."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from edge_agent.config.settings import BatchSettings
from edge_agent.counters import Counters
from edge_agent.pipeline.jobs import Job, JobOwner, JobQueue
from edge_agent.pipeline.stats import Window
from edge_agent.runtime.model import LoadedModel

log = logging.getLogger(__name__)


class InferenceWorker:
    def __init__(self, name: str, replicas: list[LoadedModel], batch: BatchSettings) -> None:
        self.name = name
        self.replicas = replicas
        self.generation = 0
        self.batch = batch
        self.queue = JobQueue()
        # Added to by every replica's thread at once.
        self.counts = Counters("invokes", "errors")
        # Invoke times of the model now in use (reset by a swap): the update health watch
        # compares a new model's p95 with the old one's.
        self.infer_times = Window(512)
        # When each replica's current batch began (None: idle): the watchdog's health check
        # finds an inference that never returns.
        self.busy_since: list[float | None] = [None] * len(replicas)
        self._pipelines: dict[str, JobOwner] = {}
        self._pending: list[LoadedModel] | None = None
        self._parked = 0
        self._swap_done = threading.Condition()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._run,
                args=(i,),
                name=f"infer-{name}" + (f"-{i}" if len(replicas) > 1 else ""),
                daemon=True,
            )
            for i in range(len(replicas))
        ]

    @property
    def model(self) -> LoadedModel:
        return self.replicas[0]

    @property
    def invokes(self) -> int:
        return self.counts["invokes"]

    @property
    def errors(self) -> int:
        """Batches that failed."""
        return self.counts["errors"]

    # Called from other threads ---------------------------------------------------------

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def attach(self, pipeline: JobOwner) -> None:
        with self._lock:
            self._pipelines[pipeline.name] = pipeline
            pipeline.use_model(self.model, self.generation)

    def detach(self, pipeline: JobOwner) -> list[Job]:
        with self._lock:
            self._pipelines.pop(pipeline.name, None)
        return self.queue.remove_pipeline(pipeline.name)

    @property
    def pipelines(self) -> list[str]:
        with self._lock:
            return list(self._pipelines)

    def swap(self, replicas: list[LoadedModel], timeout: float = 10.0) -> bool:
        """Replaces the model between batches; True once every replica has taken it, False
        (and the old model runs on) when they did not within `timeout`."""
        if len(replicas) != len(self.replicas):
            raise ValueError("a swap keeps the number of replicas")
        with self._swap_done:
            self._pending = replicas
            self.queue.wake()
            if self._swap_done.wait_for(lambda: self._pending is None, timeout):
                return True
            # Not taken in time (a replica is stuck in an inference): withdrawn, so the old
            # model really keeps running and no later batch swaps unannounced.
            self._pending = None
            self._parked = 0
            self._swap_done.notify_all()
            return False

    def submit(
        self, job: Job, capacity: int, give_up: Callable[[], bool] | None = None
    ) -> Job | None:
        """Queues `job`: see JobQueue.put."""
        return self.queue.put(job, capacity, give_up)

    def stuck_for(self) -> float:
        """Seconds the longest-running batch has been in the interpreter (0: none)."""
        now = time.monotonic()
        return max((now - t for t in self.busy_since if t is not None), default=0.0)

    @property
    def alive(self) -> bool:
        return all(t.is_alive() for t in self._threads) or self.queue.closed

    def stop(self, timeout: float = 5.0) -> None:
        """Finishes what is queued, then ends the threads."""
        self.queue.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    # The inference threads -------------------------------------------------------------

    def _run(self, replica: int) -> None:
        clock = time.perf_counter
        while True:
            self._park_for_swap()
            jobs = self.queue.take(self.batch.max_batch, self.batch.max_wait_ms / 1000, clock)
            if not jobs:
                if self.queue.closed:
                    return
                continue
            self.busy_since[replica] = time.monotonic()
            try:
                self._process(jobs, self.replicas[replica])
            except Exception:  # one bad batch must not end the thread
                self.counts.add("errors")
                log.exception("model %s: inference failed on a batch of %d", self.name, len(jobs))
                for job in jobs:
                    job.pipeline.stats.count("errors")
            finally:
                self.busy_since[replica] = None

    def _park_for_swap(self) -> None:
        """Every replica stops here; the last to arrive swaps, then all go on."""
        with self._swap_done:
            if self._pending is None:
                return
            self._parked += 1
            if self._parked == len(self.replicas):
                self._apply_swap(self._pending)
                self._pending = None
                self._parked = 0
                self._swap_done.notify_all()
            else:
                self._swap_done.wait_for(lambda: self._pending is None)

    def _apply_swap(self, replicas: list[LoadedModel]) -> None:
        with self._lock:
            self.replicas = replicas
            self.generation += 1
            self.infer_times = Window(512)
            for pipeline in self._pipelines.values():
                pipeline.use_model(self.model, self.generation)

    def _process(self, jobs: list[Job], model: LoadedModel) -> None:
        clock = time.perf_counter
        started = clock()
        for job in jobs:
            job.timings["queue"] = started - job.queued_at
            if job.model_generation != self.generation:
                # Prepared for the model before a swap: prepare again, lose nothing.
                job.pipeline.reprepare(job, self.generation)
        samples = [job.sample for job in jobs]
        batch = samples[0][None] if len(samples) == 1 else np.stack(samples)
        raw = model.run(batch)
        outputs = model.dequantize(raw)
        infer_s = clock() - started
        self.counts.add("invokes")
        self.infer_times.add(infer_s / len(jobs))
        for i, job in enumerate(jobs):
            job.timings["infer"] = infer_s
            job.pipeline.finish(job, [out[i] for out in outputs], model)
