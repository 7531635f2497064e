"""Service glue: the main thread's loop. Signals, file watches and the status line all
arrive here as events; reloads happen here, one at a time. Under systemd it tells the
service manager where it stands (sd_notify) and pings the watchdog only while the agent
is healthy, so a stuck inference or a dead thread gets the service restarted."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from edge_agent.agent import Agent
from edge_agent.config.load import ConfigError, Layers, load_layers
from edge_agent.reload import ReloadRefused
from edge_agent.systemd import Notifier, ReloadOutcome
from edge_agent.watch import DirectoryWatcher

log = logging.getLogger(__name__)

# Files land in several writes (cp, editors): act once they have been quiet this long.
_SETTLE_S = 0.3
# Expired and long-delivered outbox rows are removed this often.
_HOUSEKEEPING_S = 60.0
# systemd's STATUS= line is refreshed at least this often.
_NOTIFY_STATUS_S = 5.0
_JOURNAL_STATUS_S = 60.0
# The figures in a health problem ("has not returned for 12 s"), left out when comparing.
_FIGURES = re.compile(r"\d+(?:\.\d+)?")


class Service:
    def __init__(
        self, agent: Agent, config_path: Path | None, notifier: Notifier | None = None
    ) -> None:
        self.agent = agent
        self.config_path = config_path.resolve() if config_path else None
        self.notifier = notifier or Notifier()
        self._unhealthy: list[str] = []
        self.events: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self._watchers: list[DirectoryWatcher] = []

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            self.agent.start()
            self._watch()
            log.info("running %d pipeline(s)", len(self.agent.pipelines))
            self.notifier.ready(self._status_text())
            self._loop()
        finally:
            self.notifier.stopping()
            for watcher in self._watchers:
                watcher.close()
            self.agent.stop()
            self.notifier.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.events.put(("reload", "SIGHUP"))
        else:
            self.events.put(("stop", signal.Signals(signum).name))

    def _loop(self) -> None:
        now = time.monotonic()
        next_housekeeping = now + _HOUSEKEEPING_S
        next_telemetry = now + self.agent.settings.telemetry.interval_s
        next_status = now + (self._status_every() or float("inf"))
        self._ping()
        while True:
            try:
                # Periods are read at every turn: [logging], [telemetry] and [service]
                # apply live.
                kind, detail = self.events.get(timeout=self._tick())
            except queue.Empty:
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + (self._status_every() or float("inf"))
                    log.info("%s", self.agent.status_line())
                if now >= next_telemetry:
                    next_telemetry = now + self.agent.settings.telemetry.interval_s
                    self.agent.telemetry.publish()
                if now >= next_housekeeping:
                    next_housekeeping = now + _HOUSEKEEPING_S
                    self.agent.outbox.expire()
                self._ping()
                continue
            if kind == "stop":
                log.info("stopping (%s)", detail)
                self.stopping.set()
                return
            pending = {(kind, detail), *self._settle()}
            if any(k == "stop" for k, _ in pending):
                self.stopping.set()
                return
            if any(k == "reload" for k, _ in pending):
                self.reload(", ".join(d for k, d in pending if k == "reload"))
            for name in sorted({d for k, d in pending if k == "model"}):
                if name in self.agent.workers:
                    self.agent.reload_model_file(name)
                elif name in self.agent.host.refused():
                    self.reload(f"model {name}'s file changed")  # tried again, with the rest
            self._ping()

    def _status_every(self) -> float:
        every = self.agent.settings.logging.status_interval_s
        if every and self.notifier.enabled:
            # Under systemd, STATUS= carries it: the journal gets it once a minute at most.
            every = max(every, _JOURNAL_STATUS_S)
        return every

    def _tick(self) -> float:
        periods = (
            self._status_every(),
            self.agent.settings.telemetry.interval_s,
            _HOUSEKEEPING_S,
            self.notifier.watchdog_s,
        )
        tick = min(x for x in periods if x)
        return min(tick, _NOTIFY_STATUS_S) if self.notifier.enabled else tick

    def _ping(self) -> None:
        """WATCHDOG=1 and a fresh STATUS=, only while the agent is healthy."""
        problems = self.agent.health(self.agent.settings.service.stuck_after_s)
        if problems:
            # Logged once per problem: a hang that goes on (its age growing) is the same one.
            kinds = [_FIGURES.sub("#", problem) for problem in problems]
            if kinds != self._unhealthy:
                log.error("unhealthy, watchdog pings stopped: %s", "; ".join(problems))
            self._unhealthy = kinds
            self.notifier.status("unhealthy: " + "; ".join(problems))
            return
        if self._unhealthy:
            log.info("healthy again, watchdog pings resumed")
            self._unhealthy = []
        self.notifier.send(WATCHDOG=1, STATUS=self._status_text())

    def _status_text(self) -> str:
        problem = self.agent.last_error
        line = self.agent.status_line()
        return f"{line} | last problem: {problem}" if problem else line

    def _settle(self) -> set[tuple[str, str]]:
        more = set()
        while True:
            try:
                more.add(self.events.get(timeout=_SETTLE_S))
            except queue.Empty:
                return more

    def reload(self, reason: str) -> None:
        """Applies the config file (old settings kept when it is refused), then leaves the
        outcome where `edge-agent reload` waits for it."""
        started = time.monotonic()
        if self.config_path is None:
            self._record_reload(started, False, "the agent runs without a config file")
            return
        self.notifier.reloading()
        with self.agent.config_lock:
            ok, message = self._reload(self.config_path, reason)
        self.notifier.ready(self._status_text())
        self._record_reload(started, ok, message)

    def _record_reload(self, started: float, ok: bool, message: str) -> None:
        state_dir = self.agent.settings.device.state_dir
        try:
            ReloadOutcome(os.getpid(), started, ok, message).write(state_dir)
        except OSError as exc:
            log.warning("reload outcome not written in %s: %s", state_dir, exc.strerror)

    def _reload(self, path: Path, reason: str) -> tuple[bool, str]:
        try:
            layers = load_layers(path, set_aside=True)
        except ConfigError as exc:
            problem = (
                f"config not reloaded ({reason}), old settings kept: {'; '.join(exc.problems)}"
            )
            self.agent.status.raise_problem("config", problem)
            return False, problem
        report_left_out(self.agent, layers)
        try:
            applied = self.agent.reload(layers.settings)
        except ReloadRefused as exc:
            problem = f"config not applied ({reason}), old settings kept: {exc}"
            self.agent.status.raise_problem("config", problem)
            return False, problem
        summary = f"reloaded ({reason}): {applied.summary()}"
        log.info("%s", summary)
        if applied.restart_required:
            log.warning(
                "changed in the config, takes effect at the next start: %s",
                ", ".join(applied.restart_required),
            )
        self.agent.status.resolve("config")
        self._rewatch()
        return True, summary

    # File watches --------------------------------------------------------------------

    def _watch(self) -> None:
        folders: dict[Path, None] = {}
        if self.config_path is not None:
            folders[self.config_path.parent] = None
        for path in self.agent.model_paths().values():
            folders[path.parent] = None
        for folder in folders:
            watcher = DirectoryWatcher(folder)
            self._watchers.append(watcher)
            threading.Thread(
                target=self._watch_folder, args=(watcher, folder), name="watch", daemon=True
            ).start()

    def _rewatch(self) -> None:
        watched = {w.directory for w in self._watchers}
        wanted = {p.parent for p in self.agent.model_paths().values()}
        if not wanted <= watched:
            for watcher in self._watchers:
                watcher.close()
            self._watchers = []
            self._watch()

    def _watch_folder(self, watcher: DirectoryWatcher, folder: Path) -> None:
        while not self.stopping.is_set():
            names = watcher.wait(None)
            if not names:
                if watcher.closed:
                    return
                continue
            config = self.config_path
            if config is not None and folder == config.parent and config.name in names:
                self.events.put(("reload", f"{config.name} changed"))
            for model, path in self.agent.model_paths().items():
                if path.parent == folder and (
                    path.name in names or path.with_suffix(".json").name in names
                ):
                    self.events.put(("model", model))


def report_left_out(agent: Agent, layers: Layers) -> None:
    """A remote overlay that could not be used stays on the status: the remote changes it
    held no longer apply."""
    if layers.left_out is not None:
        agent.status.raise_problem(
            "remote overlay",
            f"{layers.remote_path} not used, its remote changes do not apply: {layers.left_out}",
            logged=True,  # load_layers said so, in one line
        )
