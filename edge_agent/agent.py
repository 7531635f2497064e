"""The running agent: models loaded once each, one inference thread per model, one
thread per source fanning frames out to its pipelines, and a sink for the results.
It is built from settings, and rebuilt piece by piece when the settings change."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent import __version__
from edge_agent.commands.dispatcher import CommandDispatcher
from edge_agent.commands.handlers import CommandContext
from edge_agent.commands.journal import CommandJournal
from edge_agent.config.settings import AgentSettings, ModelSettings
from edge_agent.errors import UserError
from edge_agent.link.mqtt import MqttLink
from edge_agent.link.sender import Sender
from edge_agent.outbox.store import Outbox
from edge_agent.outbox.writer import OutboxWriter
from edge_agent.payloads import Envelope
from edge_agent.pipeline.pipeline import Pipeline
from edge_agent.pipeline.worker import InferenceWorker
from edge_agent.reload import Applied, Reload
from edge_agent.runtime.backend import Backend, select_backend
from edge_agent.runtime.loader import load_model
from edge_agent.runtime.model import LoadedModel
from edge_agent.sinks import JsonlCopy, ResultSink
from edge_agent.sources import create_source
from edge_agent.sources.base import Frame, Source
from edge_agent.sources.runner import SourceRunner
from edge_agent.updates.store import ModelStore
from edge_agent.updates.updater import Updater

log = logging.getLogger(__name__)


class SourceHub:
    """One source, read once, feeding every pipeline that names it."""

    def __init__(self, name: str, source: Source) -> None:
        self.name = name
        self.pipelines: tuple[Pipeline, ...] = ()  # replaced whole: the reader needs no lock
        self.last_frame: Frame | None = None  # for snapshots
        self.runner = SourceRunner(source, self._dispatch)

    def replace(self, source: Source) -> None:
        self.runner.stop()
        self.runner = SourceRunner(source, self._dispatch)
        self.runner.start()

    def _dispatch(self, frame: Frame) -> None:
        self.last_frame = frame
        pipelines = self.pipelines
        if frame.on_durable is not None and len(pipelines) > 1:
            frame.on_durable = _countdown(len(pipelines), frame.on_durable)
        for pipeline in pipelines:
            pipeline.on_frame(frame)


class Agent:
    def __init__(
        self,
        settings: AgentSettings,
        sink: ResultSink | None = None,
        backend: Backend | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.envelope = Envelope(settings.device.id)
        self.backend = backend or select_backend(settings.runtime.backend)
        settings.device.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(outbox_path(settings), settings.outbox)
        if self.outbox.moved_aside is not None:
            self.last_error = f"outbox was damaged, moved to {self.outbox.moved_aside}"
        # The JSON-lines copy is fed by the writer, from each batch after its commit.
        copies = [JsonlCopy(settings.output.jsonl)] if settings.output.jsonl else []
        self.writer = OutboxWriter(
            self.outbox, settings.mqtt.topic_prefix, settings.device.id, copies
        )
        self.sink: ResultSink = sink or self.writer
        self.link: MqttLink | None = None
        self.sender: Sender | None = None
        if settings.mqtt.enabled:
            self.link = MqttLink(settings.mqtt, settings.device.id, self._online_status)
            self.sender = Sender(self.outbox, self.link, settings.mqtt)
            self.writer.on_commit = self.sender.wake
        self.last_error = ""  # the latest reload or model problem, for status
        self.store = ModelStore(
            settings.device.state_dir / "models", settings.updates.keep_versions
        )
        self.updater = Updater(
            self, self.store, settings.updates, self._emit_event, self._publish_now
        )
        self.commands: CommandDispatcher | None = None
        if self.link is not None and settings.commands.enabled:
            self.commands = self._make_commands()
            self.link.subscriptions = [
                *self.commands.topics,
                # Chunks of every transfer to this device.
                f"{self.link.prefix}/transfer/+/data/#",
            ]
            self.link.on_message = self._on_message
            self.link.connection_listeners.append(self.updater.on_connection)
        self.workers: dict[str, InferenceWorker] = {}
        self.hubs: dict[str, SourceHub] = {}
        self.pipelines: dict[str, Pipeline] = {}
        self._lock = threading.Lock()
        self._link_started = False  # a start that failed on a model never started them

    # Start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        """Loads the models and starts everything; a model that cannot load stops start-up."""
        self.settings.device.state_dir.mkdir(parents=True, exist_ok=True)
        for line in self.updater.recover():
            self.last_error = line
        for name in self.needed_models(self.settings):
            self._start_worker(name, self._load(name, self.settings), self.settings)
        for name, pipeline_settings in self.settings.pipelines.items():
            if pipeline_settings.enabled:
                self._add_pipeline(name, self.settings)
        # Models, settings and modules live as long as the process: freezing them keeps the
        # garbage collector from rescanning them on every collection in the frame loop.
        gc.freeze()
        if self.link is not None and self.sender is not None:
            if self.commands is not None:
                self.commands.start()
            self.sender.start()
            self.link.start()
            self._link_started = True
        self.updater.resume_downloads()
        for hub in self.hubs.values():
            hub.runner.start()

    def stop(self, timeout: float = 4.0) -> None:
        """Sources stop, frames in flight finish, the sink flushes."""
        runners = [hub.runner for hub in self.hubs.values()]
        stoppers = [threading.Thread(target=r.stop, args=(timeout / 2,)) for r in runners]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        self.updater.stopping.set()
        if self.commands is not None and self._link_started:
            self.commands.stop(timeout / 4)
        for worker in self.workers.values():
            worker.stop(timeout / 2)
        self.sink.close(timeout / 2)
        self.writer.close(timeout / 2)  # already closed when it is part of the sink
        if self.link is not None and self.sender is not None and self._link_started:
            self.sender.stop(timeout / 4)
            self.link.stop(timeout / 4)
        self.outbox.close()

    # Building blocks ---------------------------------------------------------------------

    @staticmethod
    def needed_models(settings: AgentSettings) -> list[str]:
        return sorted({p.model for p in settings.pipelines.values() if p.enabled})

    def _load(self, name: str, settings: AgentSettings) -> list[LoadedModel]:
        """The model's replicas (one, unless configured otherwise)."""
        model_settings: ModelSettings = settings.models[name]
        delegates = model_settings.delegates or settings.runtime.delegates
        threads = model_settings.threads or settings.runtime.threads
        path = self.store.model_path(name) or model_settings.path
        overrides = model_settings.overrides()
        replicas = [
            load_model(path, self.backend, delegates, threads, overrides)
            for _ in range(model_settings.replicas)
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

    def _start_worker(
        self, name: str, replicas: list[LoadedModel], settings: AgentSettings
    ) -> None:
        worker = InferenceWorker(name, replicas, settings.models[name].batch)
        self.workers[name] = worker
        worker.start()

    def _add_pipeline(self, name: str, settings: AgentSettings) -> Pipeline:
        pipeline_settings = settings.pipelines[name]
        worker = self.workers[pipeline_settings.model]
        pipeline = Pipeline(name, pipeline_settings, worker, self.sink, self.envelope)
        pipeline.attach(worker)
        hub = self.hubs.get(pipeline_settings.source)
        if hub is None:
            source_settings = settings.sources[pipeline_settings.source]
            source = create_source(
                pipeline_settings.source, source_settings, settings.device.state_dir
            )
            hub = self.hubs[pipeline_settings.source] = SourceHub(pipeline_settings.source, source)
        hub.pipelines = (*hub.pipelines, pipeline)
        self.pipelines[name] = pipeline
        return pipeline

    def _remove_pipeline(self, name: str) -> None:
        pipeline = self.pipelines.pop(name)
        hub = self.hubs[pipeline.settings.source]
        hub.pipelines = tuple(p for p in hub.pipelines if p is not pipeline)
        pipeline.detach()
        if not hub.pipelines:
            hub.runner.stop()
            del self.hubs[hub.name]

    # Live changes --------------------------------------------------------------------------

    def reload(self, new: AgentSettings) -> Applied:
        """Applies only what changed; returns what it did and what waits for a restart.
        Raises ReloadRefused, with nothing changed, when a model the change needs does not
        load."""
        with self._lock:
            return Reload(self, new).apply()

    def reload_model_file(self, name: str) -> bool:
        """The model's file changed on disk: load it and swap it in, or keep the old."""
        with self._lock:
            try:
                replicas = self._load(name, self.settings)
            except UserError as exc:
                self.report(f"model {name}: new file not used, old model keeps running: {exc}")
                return False
            return self._swapped(name, replicas)

    def swap_model(self, name: str) -> None:
        """Loads the model's current file (the store's active version, else the config's)
        and swaps it in between batches; raises UserError and keeps the old on failure."""
        with self._lock:
            replicas = self._load(name, self.settings)
            if not self._swapped(name, replicas):
                raise UserError(f"model {name}: the swap did not finish in time, old model runs")
        if self.link is not None and self.link.connected.is_set():
            self.link.publish_status()  # operators see the version that now runs

    def _swapped(self, name: str, replicas: list[LoadedModel]) -> bool:
        if self.workers[name].swap(replicas):
            return True
        self.report(f"model {name}: the swap did not finish in time, old model keeps running")
        return False

    def restart_pipeline(self, name: str) -> list[str]:
        """Takes the pipeline out and builds it again; its source restarts too when no
        other pipeline reads it."""
        with self._lock:
            source = self.pipelines[name].settings.source
            self._remove_pipeline(name)
            hub_existed = source in self.hubs
            self._add_pipeline(name, self.settings)
            if not hub_existed:
                self.hubs[source].runner.start()
                return [f"pipeline {name} restarted", f"source {source} restarted"]
            return [f"pipeline {name} restarted"]

    def report(self, problem: str) -> None:
        self.last_error = problem
        log.error("%s", problem)
        if self.link is not None and self.link.connected.is_set():
            self.link.publish_status()

    def model_path(self, name: str) -> Path:
        return self.store.model_path(name) or self.settings.models[name].path

    def model_paths(self) -> dict[str, Path]:
        return {name: self.model_path(name) for name in self.workers}

    # Commands and updates ------------------------------------------------------------------

    def _make_commands(self) -> CommandDispatcher:
        assert self.link is not None
        settings = self.settings
        context = CommandContext(self, self.updater, self.config_path, self._apply_for_command)
        journal = CommandJournal(
            settings.device.state_dir / "commands.db", settings.commands.remember
        )
        return CommandDispatcher(
            settings.commands,
            settings.updates.trusted_keys,
            self.link,
            self.envelope,
            journal,
            context,
            settings.device.groups,
        )

    def _apply_for_command(self, new: AgentSettings) -> Applied:
        """set_config: the change takes effect before the file is kept."""
        applied = self.reload(new)
        logging.getLogger().setLevel(new.logging.level.upper())
        return applied

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        if "/transfer/" in message.topic:
            self.updater.on_transfer_message(message)
        elif self.commands is not None:
            self.commands.on_message(message)

    def _emit_event(self, event: dict[str, Any]) -> None:
        body = {
            "schema": "edge-agent/event/1",
            "id": self.envelope.new_id(),
            "seq": self.envelope.next_seq(),
            "ts": time.time(),
            "boot_id": self.envelope.boot_id,
            "device": self.envelope.device,
            **event,
        }
        prefix = f"{self.settings.mqtt.topic_prefix}/{self.settings.device.id}"
        topic = f"{prefix}/events/{event.get('kind', 'agent')}"
        self.writer.put_message(topic, json.dumps(body).encode(), "event", body["id"])
        log.info("event: %s", event)

    def _publish_now(self, topic: str, payload: bytes) -> bool:
        link = self.link
        if link is None or not link.connected.is_set():
            return False
        return link.client.publish(topic, payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    # Status --------------------------------------------------------------------------------

    def online_status(self) -> dict[str, Any]:
        return self._online_status()

    def _online_status(self) -> dict[str, Any]:
        """The retained status published on every connect."""
        return {
            "boot_id": self.envelope.boot_id,
            "version": __version__,
            "started": self.envelope.started,
            "models": {
                name: {
                    "name": w.model.info.name,
                    "version": w.model.info.version,
                    "sha256": w.model.info.sha256,
                    "delegate": w.model.delegate,
                }
                for name, w in self.workers.items()
            },
            "pipelines": sorted(self.pipelines),
            "last_error": self.last_error,
        }

    def snapshot(self) -> dict[str, Any]:
        return {
            "pipelines": {name: p.snapshot() for name, p in self.pipelines.items()},
            "sources": {name: hub.runner.snapshot() for name, hub in self.hubs.items()},
            "models": {
                name: {
                    "name": w.model.info.name,
                    "version": w.model.info.version,
                    "delegate": w.model.delegate,
                    "invokes": w.invokes,
                }
                for name, w in self.workers.items()
            },
            "outbox": self.outbox.stats(),
            "link": self.link.snapshot() if self.link else {"state": "disabled"},
            "last_error": self.last_error,
        }

    def health(self, stuck_after_s: float) -> list[str]:
        """What is wrong enough that systemd should restart the agent: an inference that
        has not returned, or a thread that died. Empty when healthy."""
        problems = []
        for name, worker in self.workers.items():
            stuck = worker.stuck_for()
            if stuck > stuck_after_s:
                problems.append(f"model {name}: an inference has not returned for {stuck:.0f} s")
            if not worker.alive:
                problems.append(f"model {name}: an inference thread died")
        for name, hub in self.hubs.items():
            if hub.runner.dead:
                problems.append(f"source {name}: its thread died")
        if not self.writer.alive:
            problems.append("outbox writer thread died")
        if self.sender is not None and self.sender.died:
            problems.append("mqtt sender thread died")
        if self.link is not None and self.link.dead:
            problems.append("mqtt link thread died")
        if self.commands is not None and self.commands.dead:
            problems.append("commands thread died")
        if self.updater.dead:
            problems.append("update thread died")
        return problems

    def status_line(self) -> str:
        parts = []
        for name, pipeline in self.pipelines.items():
            s = pipeline.stats.snapshot()
            total = s["latency_ms"]["total"].get("p50", 0.0)
            hub = self.hubs.get(pipeline.settings.source)
            state = hub.runner.state.value if hub else "?"
            parts.append(
                f"{name}: {s['fps']:.1f} fps, p50 {total:.1f} ms, {s['results']} results, "
                f"{s['dropped']} dropped, {s['skipped']} skipped, {s['cache_hits']} cached"
                + ("" if state == "running" else f", source {state}")
            )
        if self.link is not None:
            link = self.link.snapshot()
            offline = link["state"] != "online" and link["last_error"]
            problem = f" ({link['last_error']})" if offline else ""
            parts.append(f"mqtt {link['state']}{problem}")
        parts.append(f"outbox {self.outbox.stats()['pending']} pending")
        return " | ".join(parts) or "no pipeline running"


def _countdown(count: int, then: Callable[[], None]) -> Callable[[], None]:
    """Calls `then` on the count-th call: once every pipeline's result is durable."""
    left = [count]
    lock = threading.Lock()

    def one_done() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            then()

    return one_done


def outbox_path(settings: AgentSettings) -> Path:
    return settings.device.state_dir / "outbox.db"
