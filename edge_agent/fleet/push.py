"""`edge-fleet push`: serve an update's files (MQTT chunks or HTTP), send `update_model` to
the targets, follow their progress events, and report each device's outcome: for people on
stderr and stdout, or with `--json` as JSON lines on stdout for scripts."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edge_agent.errors import UserError
from edge_agent.fleet import output
from edge_agent.fleet.args import check_positive, client_from, signer_from, target_from
from edge_agent.fleet.client import Request, Target, command_body
from edge_agent.link import topics

if TYPE_CHECKING:
    from edge_agent.updates.manifest import UpdateManifest


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edge_agent.fleet.serve import ChunkServer, RangeHTTPServer
    from edge_agent.updates.manifest import HttpSource, MqttSource

    check_positive(args.timeout, "--timeout")
    check_positive(args.wait_for, "--wait-for")
    target = target_from(args)
    manifest = _read_update(args.dir)
    follow_shadow = bool(getattr(args, "shadow", False))
    if follow_shadow and manifest.shadow is None:
        raise UserError(f"--shadow: {args.dir}: the update has no shadow policy to follow")
    files: dict[str, Path] = {role: args.dir / ref.path for role, ref in manifest.files.items()}
    signer = signer_from(args)
    with client_from(args) as fleet:
        source: MqttSource | HttpSource
        stop: Callable[[], None]
        if args.via == "mqtt":
            try:
                transfer = f"t-{uuid.uuid4().hex[:16]}"  # fresh: devices keep no stale chunks
                source = MqttSource(transfer=transfer, chunk_size=args.chunk_size)
            except ValidationError as exc:
                raise UserError(
                    f"--chunk-size {args.chunk_size}: {exc.errors()[0]['msg']}"
                ) from None
            chunks = ChunkServer(
                fleet.client, fleet.options.prefix, source.transfer, files, source.chunk_size
            ).start()
            fleet.on_reconnect.append(chunks.subscribe)  # a clean session lost it
            stop = chunks.stop
        else:
            bind = args.http_bind or args.http_host
            try:
                http = RangeHTTPServer(args.dir, host=bind, port=args.http_port).start()
            except OSError as exc:
                raise UserError(f"--http-bind {bind}:{args.http_port}: {exc.strerror}") from None
            host = f"[{args.http_host}]" if ":" in args.http_host else args.http_host
            source = HttpSource(url=f"http://{host}:{http.port}/")
            stop = http.stop
        try:
            update = {**manifest.as_dict(), "source": source.model_dump()}
            body = command_body({"manifest": update}, signer)
            request = Request(fleet, target, "update_model", body)
            size = sum(ref.size for ref in manifest.files.values())
            progress = Progress(
                sys.stderr, size, every_shadow_event=follow_shadow, as_json=args.json
            )
            if args.json:
                output.json_line(
                    {
                        "type": "push",
                        "name": manifest.name,
                        "version": manifest.version,
                        "via": args.via,
                        "request_id": request.request_id,
                        "bytes": size,
                    }
                )
            else:
                print(
                    f"pushing {manifest.name} {manifest.version} over {args.via} "
                    f"(request {request.request_id})",
                    file=sys.stderr,
                )
            request.send(topics.Event(fleet.options.prefix, topics.ANY, "update").topic)
            replies = request.wait(
                args.timeout, args.wait_for, progress.event, progress.reply, on_tick=progress.tick
            )
        finally:
            stop()
    return _push_outcome(replies, target, args.timeout, progress, args.json)


def _read_update(folder: Path) -> UpdateManifest:
    """The signed manifest, and its files checked against it before any device asks."""
    from edge_agent.updates.manifest import UPDATE_FILE, parse_manifest
    from edge_agent.updates.signing import verify_file

    path = folder / UPDATE_FILE
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    manifest = parse_manifest(data, max_bytes=2**62)
    if manifest.signature is None:
        logging.getLogger(__name__).warning("%s is unsigned: devices refuse it by default", path)
    for role, ref in manifest.files.items():
        verify_file(folder / ref.path, ref, f"{folder}: {role}")
    if any(folder.glob("*.pem")):
        raise UserError(f"{folder}: holds a .pem file; push serves this folder, move it away")
    return manifest


# Where an update stood when a device last told us, and what failing there means.
_STEP_AFTER = {
    None: "verify",
    "downloading": "download",
    "installed": "staging",
    "staged": "activation",
    "shadow": "shadow",
    "promoted": "activation",
    "activated": "health watch",
}


# The reply's reason names the step itself for the later ones (events come through the
# device's outbox, so they may arrive after the reply).
_REASON_STEPS = {
    "shadow: dropped: ": "shadow",
    "staging: ": "staging",
    "activation failed, rolled back: ": "activation",
    "rolled back after activation: ": "health watch",
}


def _push_outcome(
    replies: dict[str, dict[str, Any]],
    target: Target,
    timeout: float,
    progress: Progress,
    as_json: bool = False,
) -> int:
    ok = bool(replies)
    for device in sorted(replies.keys() | (target.expected or set())):
        reply = replies.get(device)
        outcome: dict[str, Any] = {"type": "outcome", "device": device}
        if reply is None:
            stage = progress.stage.get(device)
            outcome |= {"status": "no reply", "timeout_s": timeout, "last_stage": stage}
            lines = [f"{device}: no reply within {timeout:g} s ({progress.where(device)})"]
            ok = False
        elif reply.get("status") == "ok":
            result = reply.get("result") or {}
            state = result.get("state", "?")
            outcome |= {**result, "status": "ok"}
            was = f" (was {result['previous']})" if result.get("previous") else ""
            lines = [f"{device}: ok {state} {result.get('name')} {result.get('version')}{was}"]
            staged = staging_line(result.get("stage"))
            if staged:
                lines.append(f"  {staged}")
            shadowed = shadow_line(result.get("shadow"))
            if shadowed:
                lines.append(f"  {shadowed}")
            ok = ok and state in ("committed", "already_active")
        else:
            step, reason = progress.failure(device, str(reply.get("reason")))
            outcome |= {"status": "failed", "step": step, "reason": reason}
            lines = [f"{device}: failed at {step}: {reason}"]
            ok = False
        if as_json:
            output.json_line(outcome)
        else:
            print("\n".join(lines))
    if not replies:
        print(f"edge-fleet: no device answered within {timeout:g} s", file=sys.stderr)
    return 0 if ok else 1


def staging_line(stage: Any) -> str:
    """`staged on cpu: golden 98.3% agree, 1.21 ms per inference (running 1.18 ms)`."""
    if not isinstance(stage, dict):
        return ""
    parts = []
    agreement = stage.get("golden_agreement")
    if isinstance(agreement, int | float):
        parts.append(f"golden {agreement:.1%} agree")
    latency = stage.get("latency_ms")
    if isinstance(latency, int | float):
        baseline = stage.get("baseline_ms")
        was = f" (running {_ms(baseline)} ms)" if isinstance(baseline, int | float) else ""
        parts.append(f"{_ms(latency)} ms per inference{was}")
    return f"staged on {stage.get('delegate', '?')}: " + ", ".join(parts or ["no figures"])


def shadow_line(figures: Any) -> str:
    """`shadow: 212 frames, 98.6% agree, latency 1.04x, 0 errors`."""
    if not isinstance(figures, dict):
        return ""
    parts = [f"{figures.get('frames', 0)} frames"]
    agreement = figures.get("agreement")
    if isinstance(agreement, int | float):
        parts.append(f"{agreement:.1%} agree")
    elif figures.get("compared") == "not compared":
        parts.append("outputs not compared")
    iou = figures.get("mean_iou")
    if isinstance(iou, int | float):
        parts.append(f"mean IoU {iou:.2f}")
    ratio = figures.get("latency_ratio")
    if isinstance(ratio, int | float):
        parts.append(f"latency {ratio:.2f}x")
    parts.append(f"{figures.get('errors', 0)} errors")
    return "shadow: " + ", ".join(parts)


def _ms(value: float) -> str:
    """Three significant figures or so: 12.3, 1.23, 0.012."""
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


class Progress:
    """A line per device on stderr: redrawn in place on a terminal (a bar while the files
    download, the staging figures, then the health watch counting down); elsewhere (a
    log, CI) one line each time a device passes another 10 % or reaches another stage.
    `as_json`: instead, each progress event as the device sent it, a JSON line on stdout
    with `"type": "progress"` (the health watch's length is in its `activated` event)."""

    BAR = 20

    def __init__(
        self,
        stream: IO[str],
        total: int,
        every_shadow_event: bool = False,
        as_json: bool = False,
    ) -> None:
        self.stream = stream
        self.as_json = as_json
        # --shadow: a log gets every shadow progress line, not one for the stage.
        self.every_shadow_event = every_shadow_event
        self.total = max(total, 1)
        self.tty = stream.isatty()
        self.rows: dict[str, str] = {}  # device -> its line's text after the name
        self.stage: dict[str, str] = {}  # device -> the last stage it reported
        self.reasons: dict[str, tuple[str, str]] = {}  # device -> (step, why) rolled back
        self.health_ends: dict[str, float] = {}  # device -> end of its health watch
        self._logged: dict[str, str] = {}
        self._drawn = 0

    def event(self, device: str, event: dict[str, Any]) -> None:
        if self.as_json:
            output.json_line({"type": "progress", **event, "device": device})
        stage = str(event.get("stage", "?"))
        detail = event.get("detail") or {}
        self.stage[device] = stage
        self.health_ends.pop(device, None)
        if stage == "downloading" and isinstance(detail.get("done"), int):
            tenth = min(detail["done"], self.total) * 10 // self.total
            self._set(device, self._bar(detail["done"]) + " downloading", f"download {tenth}")
        elif stage == "staged":
            self._set(device, staging_line(detail))
        elif stage == "activated":
            window = detail.get("health_window_s")
            if isinstance(window, int | float):
                self.health_ends[device] = time.monotonic() + window
            self._set(device, self._health(device))
        elif stage == "shadow":
            line = shadow_line(detail)
            self._set(device, line, line if self.every_shadow_event else "shadow")
        elif stage == "promoted":
            self._set(device, "promoted; " + shadow_line(detail))
        elif stage == "dropped":
            reason = str(event.get("reason") or "?")
            self.reasons[device] = ("shadow", reason)
            self._set(device, f"dropped at shadow: {reason} ({shadow_line(detail)})")
        elif stage == "rolled_back":
            step = str(detail.get("step") or "health watch")
            reason = str(event.get("reason") or "?")
            self.reasons[device] = (step, reason)
            self._set(device, f"rolled back at {step}: {reason}")
        else:
            self._set(device, stage)

    def reply(self, device: str, reply: dict[str, Any]) -> None:
        self.health_ends.pop(device, None)
        if reply.get("status") == "ok":  # its last events may still be on their way
            self._set(device, str((reply.get("result") or {}).get("state")))
        else:
            step, reason = self.failure(device, str(reply.get("reason")))
            self._set(device, f"failed at {step}: {reason}")

    def tick(self) -> None:
        """The health watches count down."""
        for device in list(self.health_ends):
            self._set(device, self._health(device))

    def failure(self, device: str, reason: str) -> tuple[str, str]:
        """The step a refused update failed at, and why."""
        if device in self.reasons:
            return self.reasons[device]
        for prefix, step in _REASON_STEPS.items():
            if reason.startswith(prefix):
                return step, reason.removeprefix(prefix)
        stage = self.stage.get(device)
        return _STEP_AFTER.get(stage, stage or "verify"), reason

    def where(self, device: str) -> str:
        stage = self.stage.get(device)
        return f"last at {stage}" if stage else "no event from it"

    def _health(self, device: str) -> str:
        end = self.health_ends.get(device)
        if end is None:
            return "activated; health watch"
        return f"activated; health watch, {max(0.0, end - time.monotonic()):.0f} s left"

    def _bar(self, done: int) -> str:
        done = min(done, self.total)
        filled = done * self.BAR // self.total
        bar = "#" * filled + "-" * (self.BAR - filled)
        unit, scale = ("MB", 1e6) if self.total >= 1e6 else ("kB", 1e3)
        size = f"{done / scale:.1f}/{self.total / scale:.1f} {unit}"
        return f"[{bar}] {done * 100 // self.total:3d}% {size}"

    def _set(self, device: str, text: str, key: str | None = None) -> None:
        self.rows[device] = text
        if self.as_json:
            return  # the events themselves went to stdout
        if self.tty:
            if self._drawn:  # back to the first line, then draw them all again
                self.stream.write(f"\x1b[{self._drawn}F")
            for name in sorted(self.rows):
                self.stream.write("\x1b[2K" + self._line(name) + "\n")
            self._drawn = len(self.rows)
        else:
            # A log gets a line per stage and per 10 % of a download, not every redraw.
            key = key or ("health watch" if "health watch" in text else text)
            if self._logged.get(device) != key:
                self._logged[device] = key
                self.stream.write(self._line(device) + "\n")
        self.stream.flush()

    def _line(self, device: str) -> str:
        width = max(len(name) for name in self.rows)
        return f"{device:<{width}} {self.rows[device]}"
