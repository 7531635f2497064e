"""The `edge-fleet` commands that talk to devices through the broker and print what comes
back: `cmd`, `devices`, `watch`, `snapshot` and `models list|remove`. Tables by default,
JSON lines with `--json`.

For `--all` and `--group` the broker alone knows who listens, so the devices' retained
statuses are read first: the wait ends once every known online device answered, and the
known devices that stayed silent are named."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_agent.errors import UserError
from edge_agent.fleet import output
from edge_agent.fleet.args import (
    check_positive,
    client_from,
    key_values,
    signer_from,
    target_from,
)
from edge_agent.fleet.client import (
    FleetClient,
    Request,
    Seen,
    Target,
    check_level,
    command_body,
    json_object,
)
from edge_agent.link import topics

_STATUS_WAIT_S = 2.0  # retained statuses come in one burst right after the SUBACK
_STATUS_QUIET_S = 0.3  # the burst is over once nothing came for this long


@dataclass
class Outcome:
    """A command's replies, how long each took, and the devices that should have answered."""

    request: Request
    timeout: float
    known: dict[str, dict[str, Any]] = field(default_factory=dict)  # device -> its status

    @property
    def replies(self) -> dict[str, dict[str, Any]]:
        return self.request.replies

    @property
    def silent(self) -> list[str]:
        """Devices that should have answered and did not: the targeted ones, or for a group
        or all, every known device in it."""
        wanted = self.request.target.expected or set(self.known)
        return sorted(wanted - self.replies.keys())

    @property
    def failed(self) -> bool:
        """An error reply, a targeted device or a known online one silent, or no reply."""
        if any(reply.get("status") != "ok" for reply in self.replies.values()):
            return True
        if self.request.target.expected is not None:
            return bool(self.silent) or not self.replies
        online = [d for d in self.silent if self.known[d].get("state") == "online"]
        return bool(online) or not self.replies

    def rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for device, reply in sorted(self.replies.items()):
            ok = reply.get("status") == "ok"
            shown = output.compact(reply.get("result")) if ok else str(reply.get("reason"))
            rtt = self.request.round_trip_ms.get(device)
            rows.append((device, "ok" if ok else "error", output.ms(rtt), shown))
        for device in self.silent:
            state = self.known.get(device, {}).get("state")
            rows.append((device, "no reply", "-", f"device is {state}" if state else "-"))
        return rows

    def report(self, as_json: bool) -> int:
        """The table (or JSON lines), the silent devices on stderr; the exit code."""
        if as_json:
            for _, reply in sorted(self.replies.items()):
                output.json_line(reply)
        elif self.replies or self.silent:
            output.table(("DEVICE", "STATUS", "MS", "RESULT"), self.rows())
        if self.silent:
            print(
                f"edge-fleet: no reply within {self.timeout:g} s from {len(self.silent)} "
                f"device(s): {', '.join(self.silent)}",
                file=sys.stderr,
            )
        elif not self.replies:
            print(f"edge-fleet: no reply within {self.timeout:g} s", file=sys.stderr)
        return 1 if self.failed else 0


def retained_statuses(
    fleet: FleetClient, timeout: float = _STATUS_WAIT_S
) -> dict[str, dict[str, Any]]:
    """Every device's retained status, by device id."""
    found: dict[str, dict[str, Any]] = {}
    fleet.subscribe(topics.Status(fleet.options.prefix, topics.ANY).topic)
    deadline = time.monotonic() + timeout
    for message in fleet.messages_until(deadline, quiet=_STATUS_QUIET_S):
        status = json_object(bytes(message.payload))
        topic = topics.parse(message.topic)
        if status is not None and isinstance(topic, topics.Status):
            found[topic.device] = status
    return found


def known_targets(fleet: FleetClient, target: Target) -> dict[str, dict[str, Any]]:
    """The devices a group or broadcast should reach, as far as their statuses tell: a
    status without `groups` cannot say it is in a group, so it is left out."""
    if target.kind == "device":
        return {}
    statuses = retained_statuses(fleet)
    if target.kind == "all":
        return statuses
    return {
        device: status
        for device, status in statuses.items()
        if isinstance(status.get("groups"), list) and target.names[0] in status["groups"]
    }


def send(
    args: argparse.Namespace,
    command: str,
    fields: dict[str, Any],
    timeout: float,
    target: Target | None = None,
) -> Outcome:
    """Sends `command` to `target` (default: the arguments') and gathers the replies."""
    target = target or target_from(args)
    body = command_body(fields, signer_from(args), getattr(args, "expires_in", None))
    with client_from(args) as fleet:
        known = known_targets(fleet, target)
        request = Request(fleet, target, command, body, getattr(args, "expires_in", None))
        request.send()
        online = {d for d, status in known.items() if status.get("state") == "online"}
        wait_for = getattr(args, "wait_for", None)
        request.wait(timeout, wait_for, expected=online if known and not wait_for else None)
    return Outcome(request, timeout, known)


# The commands --------------------------------------------------------------------------


def cmd(args: argparse.Namespace) -> int:
    for flag in ("timeout", "wait_for", "expires_in"):
        check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_level(args.name, "command")
    outcome = send(args, args.name, fields_from(args.body, args.arg), args.timeout)
    return outcome.report(args.json)


def fields_from(body: str | None, pairs: list[str]) -> dict[str, Any]:
    """The command's fields: --body's JSON object, then each --arg KEY=VALUE over it."""
    fields: dict[str, Any] = {}
    if body is not None:
        try:
            loaded = json.loads(body)
        except ValueError as exc:
            raise UserError(f"--body: not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UserError("--body: must be a JSON object")
        fields.update(loaded)
    fields.update(key_values("--arg", pairs))
    return fields


def devices(args: argparse.Namespace) -> int:
    check_positive(args.timeout, "--timeout")
    with client_from(args) as fleet:
        found = retained_statuses(fleet, args.timeout)
        status_filter = topics.Status(fleet.options.prefix, topics.ANY).topic
    if args.json:
        for device, status in sorted(found.items()):
            output.json_line({"device": device, **status})
        return 0
    if not found:
        print(f"no device status under {status_filter}", file=sys.stderr)
        return 0
    header = ("DEVICE", "STATE", "BOOT", "VERSION", "MODELS", "LAST_ERROR")
    output.table(header, [_status_row(device, status) for device, status in sorted(found.items())])
    return 0


def _status_row(device: str, status: dict[str, Any]) -> tuple[str, ...]:
    started = status.get("started")
    age = output.age(time.time() - started) if isinstance(started, int | float) else "-"
    models = status.get("models") or {}
    shown = ",".join(
        f"{name}={m.get('version', '?')}@{m.get('delegate', '?')}"
        for name, m in sorted(models.items())
        if isinstance(m, dict)
    )
    return (
        device,
        str(status.get("state", "?")),
        age,
        str(status.get("version") or "-"),
        shown or "-",
        str(status.get("last_error") or "-"),
    )


def watch(args: argparse.Namespace) -> int:
    """One line per message: time, device, topic and the payload without its envelope;
    with --json the payload as it came."""
    check_positive(args.count, "--count")
    device = check_level(args.device, "--device") if args.device else topics.ANY
    kinds = [k for k in ("telemetry", "results", "events") if getattr(args, k)]
    printed = 0
    seen = Seen()
    with client_from(args) as fleet:
        prefix = fleet.options.prefix
        filters = {
            "telemetry": topics.Telemetry(prefix, device).topic,
            "results": topics.Result(prefix, device, topics.ANY).topic,
            "events": topics.Event(prefix, device, topics.ANY).topic,
        }
        fleet.subscribe(*(filters[kind] for kind in kinds or filters))
        try:
            for message in fleet.messages_until(None):
                body = json_object(bytes(message.payload))
                if body is not None and not seen.first(body):
                    continue
                _show_message(message.topic, bytes(message.payload), body, args.json)
                printed += 1
                if args.count is not None and printed >= args.count:
                    break
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends
        except BrokenPipeError:
            # The reader (head, a pager) is gone: stop quietly, stdout is unusable now.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return 0


def _show_message(topic: str, payload: bytes, body: dict[str, Any] | None, as_json: bool) -> None:
    parsed = topics.parse(topic)
    device = getattr(parsed, "device", "?")
    if as_json:
        output.json_line(body if body is not None else {"topic": topic, "payload": payload.hex()})
        return
    ts = body.get("ts") if body is not None else None
    when = datetime.fromtimestamp(ts if isinstance(ts, int | float) else time.time())
    shown = output.compact(output.without_envelope(body)) if body is not None else payload.hex()
    sys.stdout.write(f"{when:%H:%M:%S.%f}"[:-3] + f"  {device}  {topic}  {shown}\n")
    sys.stdout.flush()


def snapshot(args: argparse.Namespace) -> int:
    """The source's last frame with its detections drawn, written as a JPEG file."""
    check_positive(args.timeout, "--timeout")
    out: Path = args.out
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name (e.g. {out}/snap.jpg)")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no folder {out.parent}")
    device = check_level(args.device, "--device")
    fields = {"source": args.source, "quality": args.quality}
    outcome = send(args, "snapshot", fields, args.timeout, Target("device", (device,)))
    reply = outcome.replies.get(device)
    if reply is None or reply.get("status") != "ok":
        return outcome.report(as_json=args.json)
    result = dict(reply.get("result") or {})
    try:
        jpeg = base64.b64decode(result.pop("jpeg_base64", ""), validate=True)
    except (binascii.Error, ValueError):
        raise UserError(f"{device}: the snapshot reply holds no valid JPEG") from None
    try:
        out.write_bytes(jpeg)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write: {exc.strerror}") from None
    rtt = outcome.request.round_trip_ms.get(device)
    if args.json:
        output.json_line({"device": device, "out": str(out), "bytes": len(jpeg), **result})
        return 0
    drawn = result.get("detections_drawn", 0)
    print(
        f"{out}: {result.get('width')}x{result.get('height')} JPEG, {len(jpeg)} bytes, "
        f"frame {result.get('index')} of {device}/{args.source}, "
        f"{drawn} detection(s) drawn, {output.ms(rtt)} ms"
    )
    return 0


def models(args: argparse.Namespace) -> int:
    """`models list` (what each device has installed and runs) or `models remove`."""
    check_positive(args.timeout, "--timeout")
    if args.action == "remove":
        fields = {"name": args.name, "version": args.model_version}
        return send(args, "remove_model", fields, args.timeout).report(args.json)
    outcome = send(args, "list_models", {}, args.timeout)
    if args.json or not outcome.replies:
        return outcome.report(args.json)
    rows = []
    for device, reply in sorted(outcome.replies.items()):
        listing = reply.get("result") if reply.get("status") == "ok" else None
        if not isinstance(listing, dict):
            rows.append((device, "-", "-", "-", "-", str(reply.get("reason"))))
            continue
        for name, entry in sorted(listing.items()):
            if not isinstance(entry, dict):
                continue
            running = entry.get("running") or {}
            rows.append(
                (
                    device,
                    name,
                    str(running.get("version") or entry.get("active") or "-"),
                    str(entry.get("state") or "config file"),
                    str(entry.get("previous") or "-"),
                    ", ".join(entry.get("versions") or []) or "-",
                )
            )
    output.table(("DEVICE", "MODEL", "RUNS", "STATE", "ROLLBACK_TO", "INSTALLED"), rows)
    silent = outcome.silent
    if silent:
        print(f"edge-fleet: no reply from: {', '.join(silent)}", file=sys.stderr)
    return 1 if outcome.failed else 0
