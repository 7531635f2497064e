"""One pipeline: a source's frames, gated and preprocessed on the source's thread, inferred
on the model's threads, decoded and handed off as results on the model's finishing thread."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import numpy.typing as npt

from edge_agent.config.settings import EscalateSettings, PipelineSettings
from edge_agent.payloads import Envelope, ModelRef, ResultPayload
from edge_agent.pipeline.cache import ResultCache, digest
from edge_agent.pipeline.gate import ChangeGate
from edge_agent.pipeline.jobs import Job, Producer
from edge_agent.pipeline.stats import PipelineStats
from edge_agent.pipeline.worker import InferenceWorker
from edge_agent.runtime.decoders import DecoderImportError
from edge_agent.runtime.model import LoadedModel, ModelInfo
from edge_agent.runtime.predictor import Predictor
from edge_agent.runtime.preprocess import Geometry
from edge_agent.runtime.quantization import QuantParams
from edge_agent.sinks import ResultSink
from edge_agent.sources.base import Frame

log = logging.getLogger(__name__)


class Escalator(Protocol):
    """Where a result may go on to a bigger model (edge_agent/escalation). `offer` is called
    on the finishing thread for every fresh result while the pipeline's escalation is on;
    it decides and queues, and never waits on the network."""

    def offer(
        self,
        settings: EscalateSettings,
        result: ResultPayload,
        frame: Frame,
        sample: npt.NDArray[Any],
        quant: QuantParams,
    ) -> None: ...


class Pipeline:
    def __init__(
        self,
        name: str,
        settings: PipelineSettings,
        worker: InferenceWorker,
        sink: ResultSink,
        envelope: Envelope,
        escalator: Escalator | None = None,
    ) -> None:
        self.name = name
        self.escalator = escalator
        self.settings = settings
        self.worker = worker
        self.sink = sink
        self.envelope = envelope
        self.stats = PipelineStats()
        self.paused = threading.Event()
        self.last_result: ResultPayload | None = None  # for snapshots with detections drawn
        # A segmentation decoder's last class mask (model-input pixels) and how it maps to
        # the frame, for snapshots to draw; None for other decoders.
        self.last_mask: tuple[npt.NDArray[Any], Geometry | None] | None = None
        # Why this pipeline has no decoder (a plugin that does not import): its frames are
        # counted as errors, the other pipelines go on.
        self.unusable: str | None = None
        self._decode_failure_logged = False
        self._gate = ChangeGate(settings.gate) if settings.gate.enabled else None
        self._cache = ResultCache(settings.cache.size) if settings.cache.enabled else None
        # (predictor, generation): replaced whole, so a reader sees one or the other.
        self._prepared: tuple[Predictor, int] | None = None
        self._ref: tuple[ModelInfo, ModelRef] | None = None  # the model named in results

    # Lifecycle ---------------------------------------------------------------------------

    def attach(self, worker: InferenceWorker) -> None:
        self.worker = worker
        worker.attach(self)

    def detach(self) -> None:
        """Leaves the model's worker; frames still waiting are dropped and counted."""
        dropped = self.worker.detach(self)
        if dropped:
            self.stats.count("dropped", len(dropped))

    def apply(self, settings: PipelineSettings) -> None:
        """Settings that change in place: thresholds, gate, cache, queue size."""
        old, self.settings = self.settings, settings
        if settings.gate != old.gate:
            self._gate = ChangeGate(settings.gate) if settings.gate.enabled else None
        if settings.cache != old.cache:
            self._cache = ResultCache(settings.cache.size) if settings.cache.enabled else None
        if settings.decode != old.decode and self._prepared is not None:
            predictor, generation = self._prepared
            self.use_model(predictor.model, generation)

    def use_model(self, model: LoadedModel, generation: int) -> None:
        """Builds the predictor for `model`. Bad decoder options raise UserError (a config
        problem); a decoder plugin that does not import leaves this pipeline unusable,
        said once, and the others running."""
        overrides = self.settings.decode.model_dump(exclude_none=True)
        try:
            predictor = Predictor(model, overrides, where=f"pipelines.{self.name}.decode")
        except DecoderImportError as exc:
            self._prepared = None
            if self.unusable != str(exc):
                log.error("pipeline %s: %s; its frames count as errors", self.name, exc)
            self.unusable = str(exc)
            return
        self.unusable = None
        self._decode_failure_logged = False
        self._prepared = (predictor, generation)
        if self._cache is not None:
            self._cache.clear()

    # The source's thread -----------------------------------------------------------------

    def on_frame(self, frame: Frame, producer: Producer | None = None) -> None:
        """`producer`, when given, decides with on_full whether a full queue drops its
        oldest frame or makes this call wait for room."""
        self.stats.count("frames")
        if self.paused.is_set():
            return
        now = time.perf_counter()
        if self._gate is not None and not self._gate.should_infer(frame.data, now):
            self.stats.count("skipped")
            return
        prepared = self._prepared
        if prepared is None:
            if self.unusable is not None:
                self.stats.count("errors")
            return
        predictor, generation = prepared
        sample, geometry = predictor.prepare(frame.data, frame.full_size)
        prepared_at = time.perf_counter()
        key = digest(sample) if self._cache is not None else None
        job = Job(self, frame, sample, geometry, generation, key)
        job.timings["capture"] = frame.read_s
        job.timings["preprocess"] = prepared_at - now
        if key is not None and self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None:
                self.stats.count("cache_hits")
                job.timings["queue"] = job.timings["infer"] = 0.0
                self._emit(job, cached, predictor.model, cached=True)
                return
        on_full = self.settings.on_full
        waits = producer is not None and (
            on_full == "wait" or (on_full == "auto" and producer.recorded)
        )
        give_up = (lambda: producer.stopping) if waits and producer is not None else None
        dropped = self.worker.submit(job, self.settings.queue_size, give_up)
        if dropped is not None:
            self.stats.count("dropped")

    def wake_producer(self) -> None:
        """Makes an on_frame() waiting for room look at its producer's stopping again."""
        self.worker.queue.wake_producers()

    # The model's threads -----------------------------------------------------------------

    def reprepare(self, job: Job, generation: int) -> None:
        prepared = self._prepared
        if prepared is not None:
            frame = job.frame
            job.sample, job.geometry = prepared[0].prepare(frame.data, frame.full_size)
            job.model_generation = generation

    def finish(self, job: Job, outputs: list[npt.NDArray[Any]], model: LoadedModel) -> None:
        started = time.perf_counter()
        prepared = self._prepared
        if prepared is None:
            return
        decoder = prepared[0].decoder
        try:
            result = decoder(outputs, job.geometry)
        except Exception as exc:  # a decoder (a plugin's, say) failing must not stop the others
            self.stats.count("errors")
            if not self._decode_failure_logged:
                self._decode_failure_logged = True
                log.error(
                    "pipeline %s: decoder %s failed on a frame: %s: %s (said once; further "
                    "failures are counted in the pipeline's errors)",
                    self.name,
                    prepared[0].model.manifest.task,
                    type(exc).__name__,
                    exc,
                )
            return
        # Added to the dequantizing the worker timed before.
        job.timings["decode"] = job.timings.get("decode", 0.0) + time.perf_counter() - started
        mask = getattr(decoder, "last_mask", None)
        if mask is not None:
            self.last_mask = (mask, job.geometry)
        if job.digest is not None and self._cache is not None:
            self._cache.put(job.digest, result)
        self._emit(job, result, model, cached=False)

    def _emit(self, job: Job, result: dict[str, Any], model: LoadedModel, cached: bool) -> None:
        started = time.perf_counter()
        frame = job.frame
        # Built from values this code made itself: construct without re-validating them,
        # which would cost more than the rest of the hand-off.
        payload = ResultPayload.model_construct(
            id=self.envelope.new_id(),
            seq=self.envelope.next_seq(),
            ts=frame.wall_time,
            boot_id=self.envelope.boot_id,
            device=self.envelope.device,
            pipeline=self.name,
            source={"name": self.settings.source, "index": frame.index, **frame.meta},
            model=self._model_ref(model),
            delegate=model.delegate,
            cached=cached,
            latency_ms={k: round(v * 1000, 3) for k, v in job.timings.items()},
            result=result,
        )
        self.sink.put(payload, frame.on_durable)
        self.last_result = payload
        if self.escalator is not None and not cached and self.settings.escalate.enabled:
            self.escalator.offer(
                self.settings.escalate, payload, frame, job.sample, model.input.quant
            )
        ended = time.perf_counter()
        job.timings["handoff"] = ended - started
        # From the start of the frame's read: both clocks taken now, so nothing counts twice.
        job.timings["total"] = time.monotonic() - frame.captured + frame.read_s
        self.stats.record(job.timings)

    def _model_ref(self, model: LoadedModel) -> ModelRef:
        """The same ModelRef for every result of one model (replicas share their info)."""
        info = model.info
        cached = self._ref
        if cached is None or (cached[0] is not info and cached[0] != info):
            ref = ModelRef.model_construct(name=info.name, version=info.version, sha256=info.sha256)
            cached = self._ref = (info, ref)
        return cached[1]

    def snapshot(self) -> dict[str, Any]:
        prepared = self._prepared
        model = prepared[0].model if prepared else None
        return {
            **self.stats.snapshot(),
            "paused": self.paused.is_set(),
            "source": self.settings.source,
            "model": model.info.name if model else None,
            "delegate": model.delegate if model else None,
        }
