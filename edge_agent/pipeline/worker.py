"""One inference thread per model, shared by every pipeline that uses the model: it
batches their frames, invokes, decodes and hands results off. It alone touches the
interpreter, so a model swap happens here, between two batches."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from edge_agent.config.settings import BatchSettings
from edge_agent.pipeline.jobs import Job, JobQueue
from edge_agent.runtime.model import LoadedModel

if TYPE_CHECKING:
    from edge_agent.pipeline.pipeline import Pipeline

log = logging.getLogger(__name__)


class InferenceWorker:
    def __init__(self, name: str, model: LoadedModel, batch: BatchSettings) -> None:
        self.name = name
        self.model = model
        self.generation = 0
        self.batch = batch
        self.queue = JobQueue()
        self.invokes = 0
        self.errors = 0
        self._pipelines: dict[str, Pipeline] = {}
        self._pending: LoadedModel | None = None
        self._swapped = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"infer-{name}", daemon=True)

    # Called from other threads ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def attach(self, pipeline: Pipeline) -> None:
        with self._lock:
            self._pipelines[pipeline.name] = pipeline
            pipeline.use_model(self.model, self.generation)

    def detach(self, pipeline: Pipeline) -> list[Job]:
        with self._lock:
            self._pipelines.pop(pipeline.name, None)
        return self.queue.remove_pipeline(pipeline.name)

    @property
    def pipelines(self) -> list[str]:
        with self._lock:
            return list(self._pipelines)

    def swap(self, model: LoadedModel, timeout: float = 10.0) -> bool:
        """Replaces the model between two batches; True once the worker has taken it."""
        with self._lock:
            self._pending = model
            self._swapped.clear()
        self.queue.wake()
        return self._swapped.wait(timeout)

    def submit(self, job: Job, capacity: int) -> Job | None:
        job.queued_at = time.perf_counter()
        return self.queue.put(job, capacity)

    def stop(self, timeout: float = 5.0) -> None:
        """Finishes what is queued, then ends the thread."""
        self.queue.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # The inference thread ----------------------------------------------------------------

    def _run(self) -> None:
        clock = time.perf_counter
        while True:
            jobs = self.queue.take(self.batch.max_batch, self.batch.max_wait_ms / 1000, clock)
            self._apply_swap()
            if not jobs:
                if self.queue.closed:
                    return
                continue
            try:
                self._process(jobs)
            except Exception:  # one bad batch must not end the thread
                self.errors += 1
                log.exception("model %s: inference failed on a batch of %d", self.name, len(jobs))
                for job in jobs:
                    job.pipeline.stats.count("errors")

    def _apply_swap(self) -> None:
        with self._lock:
            model, self._pending = self._pending, None
            if model is None:
                return
            self.model = model
            self.generation += 1
            for pipeline in self._pipelines.values():
                pipeline.use_model(model, self.generation)
        self._swapped.set()

    def _process(self, jobs: list[Job]) -> None:
        clock = time.perf_counter
        started = clock()
        for job in jobs:
            job.timings["queue"] = started - job.queued_at
            if job.model_generation != self.generation:
                # Prepared for the model before a swap: prepare again, lose nothing.
                job.pipeline.reprepare(job, self.generation)
        samples = [job.sample for job in jobs]
        batch = samples[0][None] if len(samples) == 1 else np.stack(samples)
        raw = self.model.run(batch)
        outputs = self.model.dequantize(raw)
        done = clock()
        self.invokes += 1
        infer_s = done - started
        for i, job in enumerate(jobs):
            job.timings["infer"] = infer_s
            job.pipeline.finish(job, [out[i] for out in outputs], self.model)
