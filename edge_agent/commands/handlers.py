"""One small handler per command, found by name in HANDLERS. A handler gets the context
and its validated command, and returns the reply's `result` or raises CommandError."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent.commands import schemas as s
from edge_agent.commands.drawing import picture
from edge_agent.errors import CommandError as CommandError

if TYPE_CHECKING:
    from edge_agent.config.settings import AgentSettings
    from edge_agent.graph import PipelineGraph
    from edge_agent.host import ModelHost
    from edge_agent.payloads import Envelope
    from edge_agent.reload import Applied
    from edge_agent.updates.updater import Updater


@dataclass
class CommandContext:
    """What the handlers may use: the parts themselves, and a few of the agent's answers."""

    device: Envelope
    settings: Callable[[], AgentSettings]  # the settings now running
    host: ModelHost
    graph: PipelineGraph
    updater: Updater
    config_path: Path | None
    # Applies validated settings as a file edit would; raises ReloadRefused, nothing changed.
    apply: Callable[[AgentSettings], Applied]
    status: Callable[[], dict[str, Any]]  # the retained status with live counters
    flush: Callable[[], dict[str, Any]]  # commits the writer, wakes the sender: outbox stats
    restart_pipeline: Callable[[str], list[str]]
    # Held from reading the config files to applying them, by set_config and by a file
    # edit's reload alike: neither applies a reading the other has overtaken.
    config_lock: AbstractContextManager[Any]


@dataclass(frozen=True)
class Handler:
    schema: type[s.Command]
    run: Callable[[CommandContext, Any], Any]
    long_running: bool = False  # runs on its own thread, so other commands are not held


def ping(ctx: CommandContext, cmd: s.Ping) -> Any:
    return {"pong": True, "boot_id": ctx.device.boot_id}


def status(ctx: CommandContext, cmd: s.Status) -> Any:
    return ctx.status()


def get_config(ctx: CommandContext, cmd: s.GetConfig) -> Any:
    # Secrets dump as "**********".
    return ctx.settings().model_dump(mode="json")


def set_config(ctx: CommandContext, cmd: s.SetConfig) -> Any:
    """Checked, applied, then kept in the remote overlay (never in the operator's file): a
    change that cannot take effect is not saved. The reply names the overlay and every key
    it now sets; a null for a key takes it back out."""
    from edge_agent.commands.config_edit import prepare
    from edge_agent.reload import ReloadRefused

    if ctx.config_path is None:
        raise CommandError("the agent runs without a config file: nothing to change")
    with ctx.config_lock:
        edit = prepare(ctx.config_path, cmd.changes)
        try:
            applied = ctx.apply(edit.settings)
        except ReloadRefused as exc:
            edit.discard()
            raise CommandError(f"not applied, nothing changed: {exc}") from exc
        overlay = edit.keep()
    return {
        "applied": applied.done,
        "restart_required": applied.restart_required,
        "overlay": str(overlay),
        "overlay_keys": edit.keys,
    }


def _pipeline(ctx: CommandContext, name: str) -> Any:
    pipeline = ctx.graph.pipeline(name)
    if pipeline is None:
        known = ", ".join(ctx.graph.pipelines()) or "none"
        raise CommandError(f"no running pipeline {name!r} (running: {known})")
    return pipeline


def pause(ctx: CommandContext, cmd: s.PipelineCommand) -> Any:
    _pipeline(ctx, cmd.pipeline).paused.set()
    return {"pipeline": cmd.pipeline, "paused": True}


def resume(ctx: CommandContext, cmd: s.PipelineCommand) -> Any:
    _pipeline(ctx, cmd.pipeline).paused.clear()
    return {"pipeline": cmd.pipeline, "paused": False}


def restart_pipeline(ctx: CommandContext, cmd: s.PipelineCommand) -> Any:
    _pipeline(ctx, cmd.pipeline)
    return {"pipeline": cmd.pipeline, "done": ctx.restart_pipeline(cmd.pipeline)}


def snapshot(ctx: CommandContext, cmd: s.Snapshot) -> Any:
    hub = ctx.graph.hub(cmd.source)
    if hub is None:
        raise CommandError(f"no running source {cmd.source!r}")
    frame = hub.last_frame
    if frame is None or not frame.is_image:
        raise CommandError(f"source {cmd.source!r} has no image frame yet")
    drawn = picture(frame, hub.pipelines, cmd.quality)
    if drawn is None:
        raise CommandError("the frame could not be encoded as JPEG")
    return {
        "source": cmd.source,
        "index": frame.index,
        "ts": frame.wall_time,
        "width": drawn.width,
        "height": drawn.height,
        **drawn.drawn,
        "jpeg_base64": base64.b64encode(drawn.jpeg).decode(),
    }


def list_models(ctx: CommandContext, cmd: s.ListModels) -> Any:
    return ctx.updater.list_models()


def update_model(ctx: CommandContext, cmd: s.UpdateModel) -> Any:
    return ctx.updater.update(cmd.manifest, cmd.request_id)


def activate_model(ctx: CommandContext, cmd: s.ActivateModel) -> Any:
    return ctx.updater.activate(cmd.name, cmd.version)


def rollback_model(ctx: CommandContext, cmd: s.ModelCommand) -> Any:
    return ctx.updater.rollback(cmd.name, "operator asked")


def remove_model(ctx: CommandContext, cmd: s.RemoveModel) -> Any:
    """Deletes an installed version; the active one and the rollback target are refused."""
    installed = ctx.updater.remove(cmd.name, cmd.version)
    return {"name": cmd.name, "removed": cmd.version, "installed": installed}


def flush_outbox(ctx: CommandContext, cmd: s.FlushOutbox) -> Any:
    return ctx.flush()


def set_log_level(ctx: CommandContext, cmd: s.SetLogLevel) -> Any:
    logging.getLogger().setLevel(cmd.level.upper())
    return {"level": cmd.level}


HANDLERS: dict[str, Handler] = {
    "ping": Handler(s.Ping, ping),
    "status": Handler(s.Status, status),
    "get_config": Handler(s.GetConfig, get_config),
    "set_config": Handler(s.SetConfig, set_config),
    "pause": Handler(s.PipelineCommand, pause),
    "resume": Handler(s.PipelineCommand, resume),
    "restart_pipeline": Handler(s.PipelineCommand, restart_pipeline),
    "snapshot": Handler(s.Snapshot, snapshot),
    "list_models": Handler(s.ListModels, list_models),
    "update_model": Handler(s.UpdateModel, update_model, long_running=True),
    "activate_model": Handler(s.ActivateModel, activate_model, long_running=True),
    "rollback_model": Handler(s.ModelCommand, rollback_model, long_running=True),
    "remove_model": Handler(s.RemoveModel, remove_model),
    "flush_outbox": Handler(s.FlushOutbox, flush_outbox),
    "set_log_level": Handler(s.SetLogLevel, set_log_level),
}
