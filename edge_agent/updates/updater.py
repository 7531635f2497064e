"""The update flow, one step after another: verify the manifest, download (resuming),
verify the files, install into the store, stage, hot-swap, watch the new model's health,
then commit or roll back. Every step is reported as an event. After a crash, a version
still on trial is rolled back at start and a half-done download resumes."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config.settings import UpdatesSettings
from edge_agent.errors import UserError
from edge_agent.json_body import BodyError, read_object
from edge_agent.runtime.manifest import MAX_MODEL_MANIFEST_BYTES
from edge_agent.updates.fetch import Fetcher
from edge_agent.updates.manifest import (
    MAX_MANIFEST_BYTES,
    UpdateManifest,
    UpdateRefused,
    check_limits,
    parse_manifest,
    refuse_older,
)
from edge_agent.updates.signing import verify_file, verify_manifest
from edge_agent.updates.staging import StageReport, stage
from edge_agent.updates.store import ModelStore
from edge_agent.updates.transfer import TransferStopped

if TYPE_CHECKING:
    from edge_agent.config.settings import AgentSettings
    from edge_agent.host import ModelHost
    from edge_agent.link.mqtt import MqttLink

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 1.0  # download progress events at most this often
_MIN_SAMPLES = 20  # inferences needed before the running model's p95 counts as a baseline
# The manifest saved beside a half-done download: as received, re-spaced and with
# defaults filled in, so somewhat longer than the limit it arrived under.
_SAVED_MANIFEST_BYTES = 2 * MAX_MANIFEST_BYTES


@dataclass
class Watch:
    """What the health watch compares the new version against."""

    errors: int
    invokes: int
    baseline_p95_ms: float | None


class Updater:
    def __init__(
        self,
        host: ModelHost,
        settings: Callable[[], AgentSettings],
        link: MqttLink | None,
        emit: Callable[[dict[str, Any]], None],
        publish: Callable[[str, bytes], bool],
        retry_refused: Callable[[], None],
    ) -> None:
        self.host = host
        # Tries the models that did not load again, with their pipelines: a new version of
        # one is activated that way.
        self.retry_refused = retry_refused
        self.store: ModelStore = host.store
        self.agent_settings = settings  # read at each use: [updates] applies live
        self.emit = emit  # an update event, through the outbox
        self.downloads = settings().device.state_dir / "downloads"
        self.stopping = threading.Event()
        # The agent's link hands it transfer chunks and reconnects.
        self.fetcher = Fetcher(link, publish, lambda: self.settings, self.stopping)
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # model names with an update or switch under way
        self._crashed = False  # a resumed download's thread ended by an escaping exception

    @property
    def settings(self) -> UpdatesSettings:
        return self.agent_settings().updates

    @property
    def dead(self) -> bool:
        """A thread of the updater's own (a resumed download) ended by a bug, not by the
        agent stopping: the download it was doing stays undone until a restart."""
        return self._crashed and not self.stopping.is_set()

    # Start-up ----------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Before the models load: a version left on trial by a crash is rolled back."""
        done = []
        for name in self.store.list():
            record = self.store.active(name)
            if record is not None and record.state == "trial":
                back = self.store.rollback(name)
                to = back.version if back else "the config's file"
                done.append(f"model {name}: {record.version} was on trial at a crash, back to {to}")
                self._event(
                    name,
                    record.version,
                    "rolled_back",
                    reason="not committed before a restart",
                    detail={"step": "restart"},
                )
        for line in done:
            log.warning("%s", line)
        return done

    def resume_downloads(self) -> None:
        """Half-done downloads go on, each on a thread of its own."""
        if not self.downloads.is_dir():
            return
        for folder in sorted(self.downloads.iterdir()):
            saved = folder / "update.json"
            if saved.is_file():
                threading.Thread(
                    target=self._resume, args=(saved,), name="update-resume", daemon=True
                ).start()

    def _resume(self, saved: Path) -> None:
        try:
            body = read_object(saved, _SAVED_MANIFEST_BYTES)
        except (OSError, BodyError) as exc:
            # Damaged on disk: retrying at every start would only fail again.
            problem = exc if isinstance(exc, BodyError) else f"{saved}: unreadable ({exc})"
            log.warning("%s; download abandoned", problem)
            shutil.rmtree(saved.parent, ignore_errors=True)
            return
        try:
            self.update(body, None)
        except UserError as exc:
            log.warning("resumed update not applied: %s", exc)
        except BaseException:
            self._crashed = True
            raise

    # Commands ----------------------------------------------------------------------------

    def list_models(self) -> dict[str, Any]:
        stored = self.store.list()
        out: dict[str, Any] = {}
        for name, worker in self.host.workers().items():
            info = worker.model.info
            out[name] = {
                "running": {"version": info.version, "sha256": info.sha256},
                "delegate": worker.model.delegate,
                **stored.get(name, {}),
            }
        for name, entry in stored.items():
            out.setdefault(name, entry)
        return out

    def update(self, body: dict[str, Any], request_id: str | None) -> dict[str, Any]:
        manifest = parse_manifest(body, self.settings.max_model_bytes)
        check_limits(manifest, self.settings.max_model_bytes)
        verify_manifest(manifest, self.settings.trusted_keys, self.settings.allow_unsigned)
        name, version = manifest.name, manifest.version
        if name not in self.agent_settings().models:
            raise UpdateRefused(f"no model {name!r} in this device's config")
        record = self.store.active(name)
        if record is not None and record.version == version and record.state == "committed":
            return {"name": name, "version": version, "state": "already_active"}
        if record is not None:
            refuse_older(manifest, record.version, self._created(name, record.version))
        elif (running := self.host.worker(name)) is not None:
            refuse_older(manifest, running.model.info.version, None)
        with self._claim(name):
            folder = self.downloads / f"{name}-{version}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "update.json").write_bytes(manifest.to_json())
            try:
                files = self._fetch(manifest, folder, request_id)
                for role, path in files.items():
                    verify_file(path, manifest.files[role], role)  # type: ignore[index]
                refuse_code_reference(files["manifest"])
            except TransferStopped:
                raise  # the agent is stopping: the next start resumes from the parts
            except UserError:
                # Refused, or the transfer gave up: nothing to resume at the next start; a
                # new update_model starts afresh.
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.store.install(manifest, files)
            shutil.rmtree(folder, ignore_errors=True)
            self._event(name, version, "installed", request_id=request_id)
            report = self._stage(manifest)
            self._event(name, version, "staged", request_id=request_id, detail=report.as_dict())
            shadow = self._shadow(manifest, request_id) if manifest.shadow is not None else None
            result = self._switch(name, version, request_id, report)
            return {**result, "shadow": shadow} if shadow is not None else result

    def _created(self, name: str, version: str) -> float | None:
        try:
            return self.store.manifest(name, version).created
        except (UserError, OSError, ValueError):
            return None  # damaged or pruned: the version number alone decides

    def activate(self, name: str, version: str) -> dict[str, Any]:
        with self._claim(name):
            self.store.manifest(name, version)  # installed?
            return self._switch(name, version, None, None)

    def rollback(self, name: str, reason: str) -> dict[str, Any]:
        with self._claim(name):
            record = self.store.active(name)
            if record is None:
                raise UserError(f"model {name!r} runs the config's file: nothing to roll back")
            back = self.store.rollback(name)
            self._swap_in(name)
            to = back.version if back else "config"
            self._event(name, record.version, "rolled_back", reason=reason)
            return {"name": name, "from": record.version, "to": to}

    def remove(self, name: str, version: str) -> list[str]:
        """Deletes an installed version, never while an update or switch of the same model is
        under way (it could be installing or staging that version); the versions left."""
        with self._claim(name):
            self.store.remove(name, version)
            return self.store.versions(name)

    # Steps -------------------------------------------------------------------------------

    def _fetch(self, m: UpdateManifest, folder: Path, request_id: str | None) -> dict[str, Path]:
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= _PROGRESS_EVERY_S or done == total:
                last = now
                detail = {"done": done, "total": total}
                self._event(m.name, m.version, "downloading", request_id=request_id, detail=detail)

        return self.fetcher.fetch(m, folder, progress)

    def _stage(self, m: UpdateManifest) -> StageReport:
        folder = self.store.version_dir(m.name, m.version)
        plan = self.host.plan(m.name, self.agent_settings())  # as the running model loads
        golden = m.golden_spec()
        return stage(
            folder / m.files["model"].path,
            plan.backend,
            plan.delegates,
            plan.threads,
            golden=folder / m.files["golden"].path if golden else None,
            min_agreement=golden.min_agreement if golden else 0.0,
            required_delegates=m.requires.delegates,
            running_path=plan.path,
        )

    def _shadow(self, m: UpdateManifest, request_id: str | None) -> dict[str, Any]:
        """Runs the update as a shadow beside the running model until its policy decides;
        its figures when it is to be promoted, UpdateRefused (and a `dropped` event) when
        not. The running model is never touched here."""
        # Imported only when an update asks for a shadow.
        from edge_agent.runtime.loader import load_model
        from edge_agent.updates.shadow import Shadow

        assert m.shadow is not None
        name, version = m.name, m.version

        def drop(reason: str, figures: dict[str, Any] | None = None) -> UpdateRefused:
            self._event(
                name, version, "dropped", request_id=request_id, reason=reason, detail=figures
            )
            return UpdateRefused(f"shadow: dropped: {reason}")

        worker = self.host.worker(name)
        if worker is None:
            raise drop("no pipeline runs the model, so there is nothing to compare it with")
        plan = self.host.plan(name, self.agent_settings())
        path = self.store.version_dir(name, version) / m.files["model"].path
        try:
            # One interpreter thread: the CPU budget counts its invoke time as one core's.
            candidate = load_model(path, plan.backend, plan.delegates, 1)
            shadow = Shadow(name, candidate, worker.model, m.shadow)
        except Exception as exc:  # any load failure drops the shadow, never the agent
            raise drop(f"the shadow model does not load: {exc}") from None
        try:
            self.host.attach_shadow(name, shadow)
        except UserError as exc:
            raise drop(str(exc)) from None
        try:
            verdict = shadow.wait(
                self.stopping,
                self.agent_settings().service.stuck_after_s / 2,
                lambda figures: self._event(
                    name, version, "shadow", request_id=request_id, detail=figures
                ),
                _PROGRESS_EVERY_S,
            )
        finally:
            self.host.detach_shadow(name)
        figures = shadow.snapshot()
        if verdict != "promote":
            raise drop(verdict, figures)
        self._event(name, version, "promoted", request_id=request_id, detail=figures)
        return figures

    def _switch(
        self, name: str, version: str, request_id: str | None, report: StageReport | None
    ) -> dict[str, Any]:
        worker = self.host.worker(name)
        watch = None
        if worker is not None:
            p95 = worker.infer_times.percentiles().get("p95")
            enough = worker.infer_times.count >= _MIN_SAMPLES
            watch = Watch(worker.errors, worker.invokes, p95 if enough else None)
        previous = self.store.active(name)
        self.store.activate(name, version)
        try:
            self._swap_in(name)
        except UserError as exc:
            self.store.rollback(name)
            self._event(
                name,
                version,
                "rolled_back",
                request_id=request_id,
                reason=str(exc),
                detail={"step": "activation"},
            )
            raise UpdateRefused(f"activation failed, rolled back: {exc}") from None
        window = self.settings.health_window_s
        self._event(
            name, version, "activated", request_id=request_id, detail={"health_window_s": window}
        )
        result: dict[str, Any] = {
            "name": name,
            "version": version,
            "previous": previous.version if previous else None,
            "stage": report.as_dict() if report else None,
        }
        problem = self._health(name, watch)
        if problem is not None:
            self.store.rollback(name)
            self._swap_in(name)
            self._event(
                name,
                version,
                "rolled_back",
                request_id=request_id,
                reason=problem,
                detail={"step": "health watch"},
            )
            raise UpdateRefused(f"rolled back after activation: {problem}")
        self.store.commit(name)
        self.store.prune(name)
        self._event(name, version, "committed", request_id=request_id)
        return {**result, "state": "committed"}

    def _health(self, name: str, watch: Watch | None) -> str | None:
        """Waits out the health window; the reason to roll back, or None."""
        if self.stopping.wait(self.settings.health_window_s):
            return "the agent stopped during the health watch"
        worker = self.host.worker(name)
        if worker is None or watch is None:
            return None
        invokes = worker.invokes - watch.invokes
        errors = worker.errors - watch.errors
        if invokes + errors and errors / (invokes + errors) > self.settings.max_error_rate:
            return f"{errors} of {invokes + errors} inferences failed"
        p95 = worker.infer_times.percentiles().get("p95")
        base = watch.baseline_p95_ms
        if p95 is None or base is None or worker.infer_times.count < _MIN_SAMPLES:
            return None
        # Both a ratio and an absolute slack: a 10 µs model jitters by more than 1.5x.
        slower = p95 > base * self.settings.max_latency_ratio
        if slower and p95 - base > self.settings.latency_slack_ms:
            return (
                f"p95 infer {p95:.2f} ms is {p95 / base:.1f}x the previous {base:.2f} ms "
                f"(updates.max_latency_ratio {self.settings.max_latency_ratio})"
            )
        return None

    def _swap_in(self, name: str) -> None:
        """The store's active version (or the config's file) runs from here on; UserError,
        with the old model still running, when it does not load, swap, or turns out to be
        another file than the one installed."""
        if self.host.worker(name) is None:
            if name not in self.host.refused():
                return  # no pipeline uses it now: it loads when one does
            self.retry_refused()
            if self.host.worker(name) is None:
                why = self.host.refused().get(name, "not loaded")
                raise UserError(f"model {name}: this version does not load either: {why}")
            return
        settings = self.agent_settings()
        running = self.host.load_current(name, settings)
        wanted = self.host.model_path(name, settings)
        if running.info.path.resolve() != wanted.resolve():
            raise UserError(f"model {name}: {wanted} is active but {running.info.path} runs")

    # Helpers -----------------------------------------------------------------------------

    def _claim(self, name: str) -> _Claim:
        return _Claim(self, name)

    def _event(
        self,
        name: str,
        version: str,
        stage: str,
        *,
        request_id: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        event: dict[str, Any] = {"kind": "update", "name": name, "version": version, "stage": stage}
        if request_id is not None:
            event["request_id"] = request_id
        if reason is not None:
            event["reason"] = reason
        if detail is not None:
            event["detail"] = detail
        self.emit(event)


def refuse_code_reference(model_manifest: Path) -> None:
    """A decoder named as `module:Class` imports code: an update may name a registered
    decoder, and only the device's own config may name a module."""
    try:
        found = read_object(model_manifest, MAX_MODEL_MANIFEST_BYTES, what="files.manifest")
    except BodyError as exc:
        raise UpdateRefused(str(exc)) from None
    except OSError as exc:
        raise UpdateRefused(f"files.manifest: cannot read: {exc.strerror or exc}") from None
    task = found.get("task", "")
    if isinstance(task, str) and ":" in task:
        raise UpdateRefused(
            f"files.manifest: task {task!r} names code to import; an update may only name a "
            "registered decoder (a module:Class decoder is set in the device's own config)"
        )


class _Claim:
    """One update or switch per model at a time."""

    def __init__(self, updater: Updater, name: str) -> None:
        self.updater, self.name = updater, name

    def __enter__(self) -> None:
        with self.updater._lock:
            if self.name in self.updater._busy:
                raise UserError(f"model {self.name!r}: another update or switch is under way")
            self.updater._busy.add(self.name)

    def __exit__(self, *exc: object) -> None:
        with self.updater._lock:
            self.updater._busy.discard(self.name)
