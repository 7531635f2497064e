"""The inference threads of one model, shared by every pipeline that uses the model: they
batch those pipelines' frames and invoke. While frames wait, one finishing thread dequantizes,
decodes and hands results off meanwhile, so an interpreter waits on no Python work between two
invokes; when none waits, the inference thread finishes its batch itself. Each
replica is an interpreter of its own on a thread of its own; only that thread touches it, so
a model swap waits until every replica is between two batches and every result is out."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.config.settings import BatchSettings
from edge_agent.counters import Counters
from edge_agent.pipeline.jobs import Job, JobOwner, JobQueue
from edge_agent.pipeline.stats import Window
from edge_agent.runtime.model import LoadedModel

log = logging.getLogger(__name__)

# A batch invoked, waiting for the finishing thread: its jobs, the raw outputs (copies, not
# the interpreter's buffers), the replica that ran it, when it was handed over.
_Done = tuple[list[Job], list[npt.NDArray[Any]], LoadedModel, float]


class FrameTap(Protocol):
    """Sees every batch the model ran (an update's shadow canary, updates/shadow.py). Called
    on the inference thread: it must never wait."""

    def offer(
        self, samples: list[npt.NDArray[Any]], raw: list[npt.NDArray[Any]], per_frame_s: float
    ) -> None: ...


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
        self.finishing_since: float | None = None  # the same for the finishing thread
        self.shadow: FrameTap | None = None  # set by ModelHost while a shadow runs
        self._done: deque[_Done] = deque()
        self._unfinished = 0  # batches handed to the finishing thread, not yet finished
        # One per replica keeps every interpreter busy while the last batch is decoded; a
        # decoder that hangs then holds the interpreters up, so frames wait in the job queue
        # (dropped or waited for as on_full says), not here without bound.
        self._max_unfinished = len(replicas)
        self._finisher_stop = False
        self._pipelines: dict[str, JobOwner] = {}
        self._pending: list[LoadedModel] | None = None
        self._parked = 0
        # One lock for both: a swap waits for the finishing thread while swap() can still
        # time out and withdraw it.
        swap_lock = threading.Lock()
        self._swap_done = threading.Condition(swap_lock)
        self._done_ready = threading.Condition(swap_lock)
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
        self._finisher = threading.Thread(
            target=self._finish_all, name=f"finish-{name}", daemon=True
        )

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
        self._finisher.start()
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
            self._done_ready.notify_all()
            return False

    def submit(
        self, job: Job, capacity: int, give_up: Callable[[], bool] | None = None
    ) -> Job | None:
        """Queues `job`: see JobQueue.put."""
        return self.queue.put(job, capacity, give_up)

    def stuck_for(self) -> float:
        """Seconds the longest-running batch has been in the interpreter or its decoder
        (0: none)."""
        now = time.monotonic()
        since = [*self.busy_since, self.finishing_since]
        return max((now - t for t in since if t is not None), default=0.0)

    @property
    def alive(self) -> bool:
        threads = [*self._threads, self._finisher]
        return all(t.is_alive() for t in threads) or self.queue.closed

    def stop(self, timeout: float = 5.0) -> None:
        """Finishes what is queued, then ends the threads."""
        self.queue.close()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._done_ready:
            self._finisher_stop = True
            self._done_ready.notify_all()
        if self._finisher.is_alive():
            self._finisher.join(max(0.0, deadline - time.monotonic()))

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
                self._failed(jobs, "inference")
            finally:
                self.busy_since[replica] = None

    def _failed(self, jobs: list[Job], step: str) -> None:
        """A batch that raised: counted for the model and each job's pipeline, logged."""
        self.counts.add("errors")
        log.exception("model %s: %s failed on a batch of %d", self.name, step, len(jobs))
        for job in jobs:
            job.pipeline.stats.count("errors")

    def _park_for_swap(self) -> None:
        """Every replica stops here; the last to arrive swaps, then all go on."""
        with self._swap_done:
            if self._pending is None:
                return
            self._parked += 1
            if self._parked == len(self.replicas):
                # Results of the old model are decoded by the decoder made for it.
                self._done_ready.wait_for(lambda: self._unfinished == 0 or self._pending is None)
                if self._pending is None:
                    return  # withdrawn: not finished in time
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
        ended = clock()
        infer_s = ended - started
        self.counts.add("invokes")
        self.infer_times.add(infer_s / len(jobs))
        for job in jobs:
            job.timings["infer"] = infer_s
        tap = self.shadow
        if tap is not None:
            tap.offer(samples, raw, infer_s / len(jobs))
        if not len(self.queue) and not self._unfinished:
            # Nothing waits for this interpreter: finishing here costs no throughput, and a
            # hand-off would add a thread's wake-up to the result's latency. Not while the
            # finishing thread holds an earlier batch: results keep their order.
            self._finish(jobs, raw, model, ended)
            return
        with self._done_ready:
            self._done_ready.wait_for(
                lambda: self._unfinished < self._max_unfinished or self._finisher_stop
            )
            self._done.append((jobs, raw, model, ended))
            self._unfinished += 1
            self._done_ready.notify_all()

    # The finishing thread --------------------------------------------------------------

    def _finish_all(self) -> None:
        while True:
            with self._done_ready:
                while not self._done and not self._finisher_stop:
                    self._done_ready.wait()
                if not self._done:
                    return
                done = self._done.popleft()
            jobs = done[0]
            self.finishing_since = time.monotonic()
            try:
                self._finish(*done)
            except Exception:  # one bad batch must not end the thread
                self._failed(jobs, "decoding")
            finally:
                self.finishing_since = None
                with self._done_ready:
                    self._unfinished -= 1
                    self._done_ready.notify_all()

    @staticmethod
    def _finish(
        jobs: list[Job], raw: list[npt.NDArray[Any]], model: LoadedModel, handed: float
    ) -> None:
        started = time.perf_counter()
        outputs = model.dequantize(raw)
        dequantized = time.perf_counter()
        for i, job in enumerate(jobs):
            # The wait for this thread is queueing too; dequantizing is part of decoding.
            job.timings["queue"] += started - handed
            job.timings["decode"] = dequantized - started
            job.pipeline.finish(job, [out[i] for out in outputs], model)
