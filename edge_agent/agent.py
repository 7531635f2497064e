"""The running agent: where the parts are built from settings and wired together. The
models run on a ModelHost, the pipelines and their sources form a PipelineGraph, problems
go on a StatusBoard, and a Report says what runs; reload, updates, commands and the service
each get the parts they need, not the Agent."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.config.settings import AgentSettings
from edge_agent.errors import UserError
from edge_agent.graph import PipelineGraph, SourceHub
from edge_agent.host import ModelHost, needed_models, pipelines_of
from edge_agent.link import topics
from edge_agent.outbox.store import Outbox
from edge_agent.outbox.writer import OutboxWriter
from edge_agent.payloads import Envelope
from edge_agent.pipeline.pipeline import Pipeline
from edge_agent.pipeline.worker import InferenceWorker
from edge_agent.reload import Applied, Reload
from edge_agent.report import Report
from edge_agent.runtime.backend import Backend, select_backend
from edge_agent.sinks import JsonlCopy, ResultSink
from edge_agent.status_board import StatusBoard
from edge_agent.telemetry import Telemetry
from edge_agent.updates.store import ModelStore
from edge_agent.updates.updater import Updater

if TYPE_CHECKING:
    from edge_agent.commands.dispatcher import CommandDispatcher
    from edge_agent.escalation.client import EscalationClient
    from edge_agent.http.endpoint import HttpEndpoint
    from edge_agent.link.mqtt import MqttLink
    from edge_agent.link.sender import Sender

log = logging.getLogger(__name__)


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
        # Held from reading the config files to applying them (a file edit's reload,
        # set_config): a reading overtaken by the other is never applied.
        self.config_lock = threading.RLock()
        self.envelope = Envelope(settings.device.id)
        self.status = StatusBoard()
        state_dir = settings.device.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(outbox_path(settings), settings.outbox)
        if self.outbox.moved_aside is not None:
            self.status.raise_problem(
                "outbox", f"outbox was damaged, moved to {self.outbox.moved_aside}"
            )
        # The JSON-lines copy is fed by the writer, from each batch after its commit.
        copies = [JsonlCopy(settings.output.jsonl)] if settings.output.jsonl else []
        self.writer = OutboxWriter(
            self.outbox, settings.mqtt.topic_prefix, settings.device.id, copies
        )
        self.sink: ResultSink = sink or self.writer
        self.link: MqttLink | None = None
        self.sender: Sender | None = None
        if settings.mqtt.enabled:
            # The link, the sender and the commands (paho, the signing library) are
            # imported only when on: a device that never talks to a broker does not load them.
            from edge_agent.link.mqtt import MqttLink
            from edge_agent.link.sender import Sender

            self.link = MqttLink(
                settings.mqtt, settings.device.id, self.online_status, status=self.status
            )
            self.sender = Sender(self.outbox, self.link, settings.mqtt)
            self.writer.on_commit = self.sender.wake
            self.status.add_listener(self._publish_status)
        store = ModelStore(state_dir / "models", settings.updates.keep_versions)
        self.host = ModelHost(
            backend or select_backend(settings.runtime.backend), store, self.status
        )
        self.escalation: EscalationClient | None = None
        if any(p.escalate.enabled for p in settings.pipelines.values()):
            if self.link is None:
                log.warning("escalation is on in a pipeline but [mqtt] is off: nothing escalates")
            else:
                # Imported only when a pipeline escalates.
                from edge_agent.escalation.client import EscalationClient

                self.escalation = EscalationClient(
                    self.link,
                    self.outbox,
                    self.writer,
                    self.sink,
                    settings.mqtt.topic_prefix,
                    settings.device.id,
                    self.envelope,
                )
        self.graph = PipelineGraph(self.sink, self.envelope, state_dir, self.escalation)
        self.report = Report(
            self.envelope,
            self.current_settings,
            self.host,
            self.graph,
            self.outbox,
            self.status,
            self.link,
            self.escalation,
        )
        self.updater = Updater(
            self.host,
            self.current_settings,
            self.link,
            self._emit_event,
            self._publish_now,
            self.retry_refused,
        )
        self.commands: CommandDispatcher | None = None
        if self.link is not None and settings.commands.enabled:
            self.commands = self._make_commands()  # subscribes to commands when started
            self.link.subscribe(
                # Chunks of every transfer to this device.
                topics.transfer_data_filter(settings.mqtt.topic_prefix, settings.device.id),
                self.updater.fetcher.on_transfer_message,
            )
            self.link.add_connection_listener(self.updater.fetcher.on_connection)
        self.telemetry = Telemetry(
            self.envelope,
            state_dir,
            self.snapshot,
            self.writer.put_message,
            topics.Telemetry(settings.mqtt.topic_prefix, settings.device.id).topic,
        )
        self._link_started = False  # a start that failed on a model never started them
        # The events emitted lately, for the HTTP status.
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=settings.http.recent_events)
        self.http: HttpEndpoint | None = None
        if settings.http.enabled:
            # Imported only when on: a device without the endpoint does not load it.
            from edge_agent.http.endpoint import HttpEndpoint

            self.http = HttpEndpoint(
                settings.http,
                device=self.envelope.device,
                status=self.command_status,
                pipelines=self.graph.pipelines,
                graph=self.graph,
                events=self.recent_events,
                board=self.status,
            )

    def current_settings(self) -> AgentSettings:
        return self.settings

    # Start and stop ----------------------------------------------------------------------

    def start(self) -> None:
        """Loads the models and starts everything. A model that cannot load is named on the
        status and its pipelines wait while the others run; UserError when none loads."""
        settings = self.settings
        for line in self.updater.recover():
            self.status.raise_problem("update recovery", line)
        refused: dict[str, str] = {}
        for name in needed_models(settings):
            try:
                replicas = self.host.load(name, settings)
            except UserError as exc:
                refused[name] = str(exc)
                continue
            self.host.start(name, replicas, settings.models[name].batch)
        if refused and not self.host.names():
            raise UserError("; ".join(f"model {n}: {why}" for n, why in refused.items()))
        for name, why in refused.items():
            self.host.refuse(name, why, pipelines_of(settings, name))
        for name, pipeline_settings in settings.pipelines.items():
            worker = self.host.worker(pipeline_settings.model)
            if pipeline_settings.enabled and worker is not None:
                self.graph.add(name, settings, worker)
        # Models, settings and modules live as long as the process: freezing them keeps the
        # garbage collector from rescanning them on every collection in the frame loop.
        gc.freeze()
        if self.link is not None and self.sender is not None:
            if self.commands is not None:
                self.commands.start()
            if self.escalation is not None:
                self.escalation.start()
            self.sender.start()
            self.link.start()
            self._link_started = True
        self.updater.resume_downloads()
        self.graph.start_sources()
        if self.http is not None:
            self.http.start()  # a taken port is a problem on the status, not a failed start

    def stop(self, timeout: float = 4.0) -> None:
        """Sources stop, frames in flight finish, the sink flushes."""
        if self.http is not None:
            self.http.stop(timeout / 4)
        self.graph.stop_sources(timeout / 2)
        self.updater.stopping.set()
        if self.commands is not None and self._link_started:
            self.commands.stop(timeout / 4)
        self.host.stop_all(timeout / 2)
        if self.escalation is not None and self._link_started:
            self.escalation.stop(timeout / 4)
        self.sink.close(timeout / 2)
        self.writer.close(timeout / 2)  # already closed when it is part of the sink
        if self.link is not None and self.sender is not None and self._link_started:
            self.sender.stop(timeout / 4)
            self.link.stop(timeout / 4)
        self.outbox.close()

    # What runs (read-only views for the CLI, the service and tests) --------------------

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        return self.graph.pipelines()

    @property
    def hubs(self) -> dict[str, SourceHub]:
        return self.graph.hubs()

    @property
    def workers(self) -> dict[str, InferenceWorker]:
        return self.host.workers()

    @property
    def store(self) -> ModelStore:
        return self.host.store

    @property
    def last_error(self) -> str:
        return self.status.last_error

    def model_paths(self) -> dict[str, Path]:
        """The files of the models that run and of those refused (an edit may mend one)."""
        names = [*self.host.names(), *self.host.refused()]
        return {name: self.host.model_path(name, self.settings) for name in names}

    # Live changes --------------------------------------------------------------------------

    def reload(self, new: AgentSettings) -> Applied:
        """Applies what changed, all or nothing; returns what it did and what waits for a
        restart. Raises ReloadRefused, with nothing changed, when a model the change needs
        does not load or swap."""
        with self.host.lock:
            applied = Reload(self.host, self.graph, self.settings, new).apply()
            self.settings = new
            self.host.store.keep_versions = new.updates.keep_versions
        if applied.done:
            self.status.touch()  # models and pipelines in the status may have changed
        return applied

    def retry_refused(self) -> None:
        """The models that did not load are tried again, with the settings that run now."""
        with self.host.lock:
            self.reload(self.settings)

    def restart_pipeline(self, name: str) -> list[str]:
        """Takes the pipeline out and builds it again (its source too when no other
        pipeline reads it)."""
        with self.host.lock:
            model = self.settings.pipelines[name].model
            worker = self.host.worker(model)
            if worker is None:
                why = self.host.refused().get(model, "not loaded")
                raise UserError(f"pipeline {name}: its model {model} does not run: {why}")
            return self.graph.restart(name, self.settings, worker)

    def reload_model_file(self, name: str) -> bool:
        """The model's file changed on disk: load it and swap it in, or keep the old."""
        try:
            self.host.load_current(name, self.settings)
        except UserError:
            return False
        return True

    # Commands and updates ------------------------------------------------------------------

    def _make_commands(self) -> CommandDispatcher:
        from edge_agent.commands.dispatcher import CommandDispatcher
        from edge_agent.commands.handlers import CommandContext
        from edge_agent.commands.journal import CommandJournal

        assert self.link is not None
        settings = self.settings
        context = CommandContext(
            device=self.envelope,
            settings=self.current_settings,
            host=self.host,
            graph=self.graph,
            updater=self.updater,
            config_path=self.config_path,
            apply=self.reload,
            status=self.command_status,
            flush=self.flush,
            restart_pipeline=self.restart_pipeline,
            config_lock=self.config_lock,
        )
        journal = CommandJournal(
            settings.device.state_dir / "commands.db", settings.commands.remember
        )
        return CommandDispatcher(
            settings.commands,
            lambda: self.settings.updates.trusted_keys,
            self.link,
            self.envelope,
            journal,
            context,
            settings.device.groups,
        )

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
        prefix, device = self.settings.mqtt.topic_prefix, self.settings.device.id
        topic = topics.Event(prefix, device, event.get("kind", "agent")).topic
        self.writer.put_message(topic, json.dumps(body).encode(), "event", body["id"])
        self.recent_events.append(body)
        log.info("event: %s", event)

    def _publish_now(self, topic: str, payload: bytes) -> bool:
        if self.link is None:
            return False
        from edge_agent.link.mqtt import PublishError

        try:
            self.link.publish(topic, payload, qos=1)
        except PublishError:
            return False
        return True

    def _publish_status(self) -> None:
        """A problem came or went: the retained status says so."""
        if self.link is not None and self.link.connected.is_set():
            self.link.publish_status()

    def flush(self) -> dict[str, Any]:
        """Commits what the writer holds and wakes the sender; the outbox's counts."""
        self.writer.flush()
        if self.sender is not None:
            self.sender.wake()
        return self.outbox.stats()

    # Status (what the agent says of itself: report.py) --------------------------------------

    def online_status(self) -> dict[str, Any]:
        return self.report.online()

    def command_status(self) -> dict[str, Any]:
        return self.report.command()

    def snapshot(self) -> dict[str, Any]:
        return self.report.snapshot()

    def status_line(self) -> str:
        return self.report.line()

    def health(self, stuck_after_s: float) -> list[str]:
        """What is wrong enough that systemd should restart the agent: an inference that
        has not returned, or a thread that died. Empty when healthy."""
        problems = self.host.health(stuck_after_s) + self.graph.health()
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
        if self.escalation is not None and self.escalation.dead:
            problems.append("escalation thread died")
        if self.http is not None and self.http.dead:
            problems.append("http thread died")
        return problems


def outbox_path(settings: AgentSettings) -> Path:
    return settings.device.state_dir / "outbox.db"
