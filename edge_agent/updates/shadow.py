"""A shadow canary (docs/shadow.md): an update's model runs beside the active one on a
sample of live frames, on a thread of its own, and the two are compared frame by frame.
The active pipeline never waits for it: sampled frames go through a small queue that drops
when full, and the shadow sleeps between invokes to stay inside its CPU budget. Its
results go only to the comparison, never to the results topic.

What "agree" means depends on what the decoder makes of the outputs:
- classification (`top`): the same top-1 label (or index, without labels);
- detection (`detections`): boxes of the same label matched greedily at IoU >= 0.5; a
  frame's agreement is matched / max(boxes of either), 1 when neither finds anything;
  the mean IoU of the matched boxes is reported beside it;
- any other task: not compared (agreement null); latency and errors alone decide."""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.runtime.model import LoadedModel
from edge_agent.runtime.predictor import Predictor
from edge_agent.updates.manifest import ShadowPolicy

log = logging.getLogger(__name__)

MATCH_IOU = 0.5  # a detection box matches one of the same label at least this close
_QUEUE_FRAMES = 2  # sampled frames waiting for the shadow; more are dropped, never waited for
_LATENCY_WINDOW = 512  # recent invoke times kept per side for the latency ratio
_POLL_S = 0.2  # how often the decision is looked at

# One sampled frame: the active model's input sample, its raw outputs for that frame, and
# the active model's invoke time per frame.
Offered = tuple[npt.NDArray[Any], list[npt.NDArray[Any]], float]


@dataclass
class Figures:
    """The comparison so far."""

    sampled: int = 0  # frames the tap chose
    dropped: int = 0  # chosen, but the queue was full
    frames: int = 0  # compared
    agreed: float = 0.0  # sum of per-frame agreement
    compared: bool | None = None  # None: no frame decoded yet; False: task not compared
    iou_sum: float = 0.0
    iou_count: int = 0
    errors: int = 0
    last_error: str | None = None
    shadow_s: list[float] = field(default_factory=list)
    active_s: list[float] = field(default_factory=list)

    @property
    def agreement(self) -> float | None:
        if not self.compared or not self.frames:
            return None
        return self.agreed / self.frames

    @property
    def mean_iou(self) -> float | None:
        return self.iou_sum / self.iou_count if self.iou_count else None

    @property
    def latency_gap_ms(self) -> float:
        if not self.shadow_s or not self.active_s:
            return 0.0
        return (statistics.median(self.shadow_s) - statistics.median(self.active_s)) * 1000

    @property
    def latency_ratio(self) -> float | None:
        if not self.shadow_s or not self.active_s:
            return None
        active = statistics.median(self.active_s)
        return statistics.median(self.shadow_s) / active if active > 0 else None

    def as_dict(self) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "frames": self.frames,
            "agreement": rounded(self.agreement),
            "mean_iou": rounded(self.mean_iou),
            "latency_ratio": rounded(self.latency_ratio),
            "shadow_ms": rounded(statistics.median(self.shadow_s) * 1000)
            if self.shadow_s
            else None,
            "active_ms": rounded(statistics.median(self.active_s) * 1000)
            if self.active_s
            else None,
            "errors": self.errors,
            "sampled": self.sampled,
            "dropped": self.dropped,
            "compared": "not compared" if self.compared is False else "top-1 or boxes",
        }


def decide(policy: ShadowPolicy, figures: Figures, elapsed_s: float) -> str | None:
    """None while undecided; "promote"; or the reason to drop the shadow."""
    if figures.errors > policy.max_errors:
        return (
            f"{figures.errors} shadow inference(s) failed (max_errors {policy.max_errors}): "
            f"{figures.last_error}"
        )
    if figures.frames >= policy.min_frames:
        agreement = figures.agreement
        if agreement is not None and agreement < policy.min_agreement:
            return (
                f"agreement {agreement:.3f} over {figures.frames} frames is under "
                f"{policy.min_agreement:.3f}"
            )
        ratio = figures.latency_ratio
        slower = figures.latency_gap_ms > policy.latency_slack_ms
        if ratio is not None and ratio > policy.max_latency_ratio and slower:
            return f"latency {ratio:.2f}x the active model's is over {policy.max_latency_ratio:g}x"
        return "promote"
    if elapsed_s > policy.timeout_s:
        return (
            f"only {figures.frames} of {policy.min_frames} frames compared in "
            f"{policy.timeout_s:g} s"
        )
    return None


def agreement(active: dict[str, Any], shadow: dict[str, Any]) -> tuple[float, list[float]] | None:
    """One frame's agreement and the IoUs of matched boxes; None when the task is not one
    this compares."""
    if "top" in active and "top" in shadow:
        return float(_top1(active["top"]) == _top1(shadow["top"])), []
    if "detections" in active and "detections" in shadow:
        return _match_boxes(active["detections"], shadow["detections"])
    return None


def _top1(top: list[dict[str, Any]]) -> Any:
    if not top:
        return None
    best = top[0]
    return best.get("label") if best.get("label") is not None else best.get("index")


def _match_boxes(
    active: list[dict[str, Any]], shadow: list[dict[str, Any]]
) -> tuple[float, list[float]]:
    if not active and not shadow:
        return 1.0, []
    free = list(range(len(shadow)))
    ious = []
    for a in active:
        best, best_iou = None, MATCH_IOU
        for j in free:
            s = shadow[j]
            if s.get("label", s.get("class_id")) != a.get("label", a.get("class_id")):
                continue
            value = iou(a["box"], s["box"])
            if value >= best_iou:
                best, best_iou = j, value
        if best is not None:
            free.remove(best)
            ious.append(best_iou)
    return len(ious) / max(len(active), len(shadow)), ious


def iou(a: list[float], b: list[float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class ShadowTap:
    """What the active model's inference threads call after each batch: picks the sampled
    frames and queues them without ever waiting."""

    def __init__(self, policy: ShadowPolicy, figures: Figures) -> None:
        self.policy = policy
        self.figures = figures
        self.queue: queue.Queue[Offered] = queue.Queue(_QUEUE_FRAMES)
        self._count = 0
        self._lock = threading.Lock()  # replicas offer from several threads

    def offer(
        self, samples: list[npt.NDArray[Any]], raw: list[npt.NDArray[Any]], per_frame_s: float
    ) -> None:
        for i, sample in enumerate(samples):
            with self._lock:
                self._count += 1
                if not self.policy.takes(self._count):
                    continue
                self.figures.sampled += 1
            try:
                # The sample is copied: a frame's buffer may be reused once it is finished.
                self.queue.put_nowait((sample.copy(), [out[i] for out in raw], per_frame_s))
            except queue.Full:
                with self._lock:
                    self.figures.dropped += 1


class Shadow:
    """The candidate on its own thread, fed by a ShadowTap, compared with the active model."""

    def __init__(
        self,
        name: str,
        candidate: LoadedModel,
        active: LoadedModel,
        policy: ShadowPolicy,
    ) -> None:
        self.name = name
        self.candidate = candidate
        self.active = active
        self.policy = policy
        self.figures = Figures()
        self.tap = ShadowTap(policy, self.figures)
        self.busy_since: float | None = None  # the health check finds a hung invoke
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Decoded as results would be, but only for the comparison.
        self._decode_active = Predictor(active).decoder
        self._decode_shadow = Predictor(candidate).decoder
        self._adapt = input_adapter(active, candidate)
        self._thread = threading.Thread(target=self._run, name=f"shadow-{name}", daemon=True)

    def start(self) -> Shadow:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the thread after its current invoke (a hung one is left behind, daemon)."""
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    def stuck_for(self) -> float:
        since = self.busy_since
        return 0.0 if since is None else time.monotonic() - since

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"model": self.candidate.info.version, **self.figures.as_dict()}

    def decision(self) -> str | None:
        with self._lock:
            return decide(self.policy, self.figures, time.monotonic() - self.started)

    def wait(
        self,
        stopping: threading.Event,
        stuck_after_s: float,
        progress: Callable[[dict[str, Any]], None],
        progress_every_s: float,
    ) -> str:
        """Blocks until a decision: "promote", or the reason to drop. Calls `progress` with
        the figures every `progress_every_s`."""
        last = time.monotonic()
        while True:
            if stopping.wait(_POLL_S):
                return "the agent stopped during the shadow run"
            verdict = self.decision()
            if verdict is None and self.stuck_for() > stuck_after_s:
                verdict = f"a shadow inference has not returned for {self.stuck_for():.0f} s"
            if verdict is None and not self._thread.is_alive():
                verdict = "the shadow thread ended"
            if verdict is not None:
                return verdict
            if time.monotonic() - last >= progress_every_s:
                last = time.monotonic()
                progress(self.snapshot())

    # The shadow's thread ------------------------------------------------------------------

    def _run(self) -> None:
        # Time spent invoking may be this share of the wall clock: the CPU budget, with one
        # interpreter thread.
        idle_per_busy = max(0.0, 1.0 / self.policy.cpu_budget - 1.0)
        while not self._stop.is_set():
            try:
                sample, active_raw, active_s = self.tap.queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            started = time.perf_counter()
            self.busy_since = time.monotonic()
            try:
                raw = self.candidate.run(self._adapt(sample)[None])
                took = time.perf_counter() - started
                self.busy_since = None
                shadow_out = self.candidate.dequantize(raw)
                active_out = self.active.dequantize([out[None] for out in active_raw])
                found = agreement(
                    self._decode_active([o[0] for o in active_out], None),
                    self._decode_shadow([o[0] for o in shadow_out], None),
                )
            except Exception as exc:  # a crashing candidate is dropped, never the agent
                took = time.perf_counter() - started
                self.busy_since = None
                with self._lock:
                    self.figures.errors += 1
                    self.figures.last_error = f"{type(exc).__name__}: {exc}"
                    first = self.figures.errors == 1
                if first:  # the rest are counted in the figures
                    log.warning("model %s: shadow inference failed: %s", self.name, exc)
            else:
                self._record(found, took, active_s)
            self._stop.wait(took * idle_per_busy)

    def _record(self, found: tuple[float, list[float]] | None, took: float, active: float) -> None:
        f = self.figures
        with self._lock:
            f.frames += 1
            if found is None:
                f.compared = False
            else:
                f.compared = f.compared is not False
                f.agreed += found[0]
                f.iou_sum += sum(found[1])
                f.iou_count += len(found[1])
            f.shadow_s = [*f.shadow_s[-_LATENCY_WINDOW + 1 :], took]
            f.active_s = [*f.active_s[-_LATENCY_WINDOW + 1 :], active]


def input_adapter(
    active: LoadedModel, candidate: LoadedModel
) -> Callable[[npt.NDArray[Any]], npt.NDArray[Any]]:
    """Turns the active model's input sample into the candidate's: as is when both take the
    same tensor, else dequantized and requantized (a float or requantized candidate).
    ValueError when the shapes differ: such a candidate cannot shadow this model."""
    a, c = active.input, candidate.input
    if tuple(a.sample_shape) != tuple(c.sample_shape):
        raise ValueError(
            f"the update takes input {list(c.sample_shape)}, the active model "
            f"{list(a.sample_shape)}: it cannot run on the same frames"
        )
    same = (
        a.dtype == c.dtype
        and np.array_equal(a.quant.scales, c.quant.scales)
        and np.array_equal(a.quant.zero_points, c.quant.zero_points)
    )
    if same:
        return lambda sample: sample
    return lambda sample: c.quant.quantize(a.quant.dequantize(sample)).astype(c.dtype)
