"""`edge-fleet`: the operator's command line. `keygen` and `sign` work on local files; `push`,
`cmd`, `devices` and `watch` reach the devices through the broker (fleet/client.py).

User errors print one line and exit 2, as `edge-agent` does; a command that reached the
devices exits 1 when one of them refused it or did not answer."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from edge_agent import __version__
from edge_agent.errors import UserError, run_command
from edge_agent.fleet import push
from edge_agent.fleet.args import (
    check_positive,
    client_from,
    key_id_from,
    signer_from,
    target_from,
)
from edge_agent.fleet.client import (
    Request,
    Seen,
    Signer,
    check_level,
    command_body,
    json_object,
)
from edge_agent.link import topics

if TYPE_CHECKING:
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-fleet", description="Operate edge-agent devices: keys, signed updates, commands."
    )
    parser.add_argument("--version", action="version", version=f"edge-fleet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    broker = argparse.ArgumentParser(add_help=False)
    b = broker.add_argument_group("broker")
    b.add_argument("--broker", default="127.0.0.1", help="HOST[:PORT] (default 127.0.0.1:1883)")
    b.add_argument("--prefix", default="edge", help="first topic level (default edge)")
    b.add_argument("--username", help="MQTT user name")
    b.add_argument("--password-file", type=Path, help="file holding the MQTT password")
    b.add_argument("--ca", type=Path, help="CA certificate (PEM): TLS, port 8883 by default")
    b.add_argument("--cert", type=Path, help="client certificate (PEM)")
    b.add_argument("--key", type=Path, help="client certificate's private key (PEM)")
    b.add_argument("--mqtt", choices=("5", "3.1.1"), default="5", help="protocol (default 5)")

    p = commands.add_parser("keygen", help="a new Ed25519 signing key")
    p.add_argument("--out", type=Path, required=True, help="folder to write ID.pem into")
    p.add_argument("--key-id", default="ops", help="the key's id (default ops)")
    p.set_defaults(handler=keygen)

    p = commands.add_parser("sign", help="package and sign a model update")
    p.add_argument("model", type=Path, help="the .tflite file (its .json manifest beside it)")
    p.add_argument("--name", required=True, help="the model's name on the devices ([models.NAME])")
    p.add_argument("--version", required=True, dest="model_version", help="the update's version")
    p.add_argument("--key", required=True, type=Path, help="private key PEM (from keygen)")
    p.add_argument("--key-id", help="the key's id (default: the PEM file's stem)")
    p.add_argument("--golden", type=Path, help=".npz golden set checked on the device")
    p.add_argument("--min-agreement", type=float, default=0.95, help="golden share (0.95)")
    p.add_argument("--requires", nargs="+", default=[], metavar="DELEGATE", help="delegates")
    p.add_argument("--out", type=Path, required=True, help="folder for the files + update.json")
    p.set_defaults(handler=sign)

    p = commands.add_parser("push", parents=[broker], help="send a signed update to devices")
    p.add_argument("dir", type=Path, help="folder made by sign (update.json and the files)")
    _target_options(p)
    p.add_argument("--via", choices=("mqtt", "http"), default="mqtt", help="transport (mqtt)")
    p.add_argument("--http-host", default="127.0.0.1", help="host devices fetch from")
    p.add_argument("--http-port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--http-bind", help="address to listen on (default: --http-host)")
    p.add_argument("--chunk-size", type=int, default=262144, help="MQTT chunk bytes (262144)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    p.add_argument("--wait-for", type=int, help="stop once N devices answered")
    _sign_options(p)
    p.set_defaults(handler=push.run)

    p = commands.add_parser("cmd", parents=[broker], help="send any command, print the replies")
    p.add_argument("name", help="the command (ping, status, set_config, ...)")
    _target_options(p)
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="a field")
    p.add_argument("--json", dest="body", help="the whole body as a JSON object")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    p.add_argument("--wait-for", type=int, help="stop after N replies")
    _sign_options(p)
    p.add_argument("--expires-in", type=float, help="refused by devices after S seconds")
    p.set_defaults(handler=cmd)

    p = commands.add_parser("devices", parents=[broker], help="the devices' retained status")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait at most (2)")
    p.add_argument("--json", action="store_true", help="one JSON object per device")
    p.set_defaults(handler=devices)

    p = commands.add_parser("watch", parents=[broker], help="print messages as JSON lines")
    p.add_argument("--device", help="one device (default: all)")
    p.add_argument("--telemetry", action="store_true", help="telemetry messages")
    p.add_argument("--results", action="store_true", help="inference results")
    p.add_argument("--events", action="store_true", help="events (updates, ...)")
    p.add_argument("--count", type=int, help="stop after N messages")
    p.set_defaults(handler=watch)
    return parser


def _target_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--device", nargs="+", metavar="ID", help="these devices")
    group.add_argument("--group", metavar="G", help="the devices in [device] groups G")
    group.add_argument("--all", action="store_true", help="every device")
    parser.epilog = "For --group/--all the wait lasts until --timeout, --wait-for or Ctrl-C."


def _sign_options(parser: argparse.ArgumentParser) -> None:
    # For devices with [commands] require_signed = true: the command itself is signed.
    parser.add_argument("--sign-key", type=Path, help="sign the command with this private key")
    parser.add_argument("--key-id", help="the signing key's id (default: the PEM file's stem)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("edge-fleet", build_parser().parse_args(argv), "edge-fleet: %(message)s")


# Local files -------------------------------------------------------------------------------


def keygen(args: argparse.Namespace) -> int:
    from edge_agent.updates.signing import generate_keypair

    key_id = key_id_from(args.key_id)
    pem, public = generate_keypair()
    path: Path = args.out / f"{key_id}.pem"
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        # O_EXCL: an existing key is never replaced; 0600 from the start, never readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UserError(f"{path}: already exists; not overwritten") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    print(f"private key: {path} (keep it secret)")
    print(f"public key:  {public}")
    print("trust it on a device, in its config:")
    print("[updates]")
    print(f'trusted_keys = {{ {key_id} = "{public}" }}')
    return 0


def sign(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edge_agent.errors import validation_lines
    from edge_agent.fleet.package import build_update
    from edge_agent.updates.manifest import NAME_PATTERN, UPDATE_FILE, VERSION_PATTERN
    from edge_agent.updates.signing import sign_manifest

    for flag, value, pattern in (
        ("--name", args.name, NAME_PATTERN),
        ("--version", args.model_version, VERSION_PATTERN),
    ):
        if re.fullmatch(pattern, value) is None:
            raise UserError(f"{flag} {value!r}: must match {pattern}")
    if not args.model.is_file():
        raise UserError(f"{args.model}: no such model file")
    out: Path = args.out
    if out.resolve() == args.model.resolve().parent:
        raise UserError(f"--out {out}: must not be the model's own folder")
    if args.key.resolve().parent == out.resolve():
        raise UserError(f"--key {args.key}: keep it out of --out (push serves that folder)")
    signer = Signer.load(args.key, key_id_from(args.key_id or args.key.stem))
    try:
        manifest = build_update(
            args.model,
            args.name,
            args.model_version,
            out,
            golden=args.golden,
            min_agreement=args.min_agreement,
            requires=args.requires,
        )
    except ValidationError as exc:
        raise UserError(validation_lines(exc, "update manifest")[0]) from None
    signed = sign_manifest(manifest, signer.key, signer.key_id)
    (out / UPDATE_FILE).write_text(json.dumps(signed.as_dict(), indent=2, sort_keys=True) + "\n")
    print(f"signed {signed.name} {signed.version} with key {signer.key_id}: {out / UPDATE_FILE}")
    for role, ref in signed.files.items():
        print(f"  {role:<9} {ref.path:<32} {ref.size:>10} bytes  sha256 {ref.sha256[:16]}")
    if signed.golden is not None:
        print(f"  golden set: at least {signed.golden.min_agreement:.0%} must agree")
    if signed.requires.delegates:
        print(f"  requires: {', '.join(signed.requires.delegates)}")
    return 0


def cmd(args: argparse.Namespace) -> int:
    for flag in ("timeout", "wait_for", "expires_in"):
        check_positive(getattr(args, flag), "--" + flag.replace("_", "-"))
    check_level(args.name, "command")
    target = target_from(args)
    fields = _fields(args.body, args.arg)
    body = command_body(fields, signer_from(args), args.expires_in)
    with client_from(args) as fleet:
        request = Request(fleet, target, args.name, body, args.expires_in)
        request.send()

        def show(device: str, reply: dict[str, Any]) -> None:
            print(json.dumps(reply, sort_keys=True), flush=True)

        replies = request.wait(args.timeout, args.wait_for, on_reply=show)
    missing = sorted((target.expected or set()) - replies.keys())
    for device in missing:
        print(f"edge-fleet: no reply from {device} within {args.timeout:g} s", file=sys.stderr)
    if not replies and not missing:
        print(f"edge-fleet: no reply within {args.timeout:g} s", file=sys.stderr)
    failed = any(reply.get("status") != "ok" for reply in replies.values())
    return 1 if failed or missing or not replies else 0


def _fields(body: str | None, pairs: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if body is not None:
        try:
            loaded = json.loads(body)
        except ValueError as exc:
            raise UserError(f"--json: not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UserError("--json: must be a JSON object")
        fields.update(loaded)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--arg {pair!r}: expected KEY=VALUE")
        try:
            fields[key] = json.loads(text)  # numbers, true/false, lists, objects
        except ValueError:
            fields[key] = text  # anything else is a plain string
    return fields


def devices(args: argparse.Namespace) -> int:
    check_positive(args.timeout, "--timeout")
    found: dict[str, dict[str, Any]] = {}
    with client_from(args) as fleet:
        prefix = fleet.options.prefix
        status_filter = topics.Status(prefix, topics.ANY).topic
        fleet.subscribe(status_filter)
        # Retained statuses come in one burst after the SUBACK: stop once it is over.
        deadline = time.monotonic() + args.timeout
        for message in fleet.messages_until(deadline, quiet=0.5):
            status = json_object(bytes(message.payload))
            topic = topics.parse(message.topic)
            if status is not None and isinstance(topic, topics.Status):
                found[topic.device] = status
    if args.json:
        for device, status in sorted(found.items()):
            print(json.dumps({"device": device, **status}, sort_keys=True))
        return 0
    if not found:
        print(f"no device status under {status_filter}", file=sys.stderr)
        return 0
    rows: list[tuple[str, ...]] = [("DEVICE", "STATE", "BOOT", "VERSION", "MODELS", "LAST_ERROR")]
    rows += [_status_row(device, status) for device, status in sorted(found.items())]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True))
            + "  "
            + row[-1]
        )
    return 0


def _status_row(device: str, status: dict[str, Any]) -> tuple[str, ...]:
    started = status.get("started")
    age = _age(time.time() - started) if isinstance(started, int | float) else "-"
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


def _age(seconds: float) -> str:
    """The two largest units: 45s, 3m07s, 5h02m, 12d03h."""
    left, parts = max(0, int(seconds)), list[str]()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count or parts or unit == "s":
            parts.append(f"{count:02d}{unit}" if parts else f"{count}{unit}")
    return "".join(parts[:2])


def watch(args: argparse.Namespace) -> int:
    check_positive(args.count, "--count")
    device = check_level(args.device, "--device") if args.device else topics.ANY
    kinds = [k for k in ("telemetry", "results", "events") if getattr(args, k)]
    printed = 0
    seen = Seen()
    out: IO[str] = sys.stdout
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
                if body is None:
                    body = {"topic": message.topic, "payload": bytes(message.payload).hex()}
                elif not seen.first(body):
                    continue
                out.write(json.dumps(body, sort_keys=True) + "\n")
                out.flush()
                printed += 1
                if args.count is not None and printed >= args.count:
                    break
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a watch ends
        except BrokenPipeError:
            # The reader (head, a pager) is gone: stop quietly, stdout is unusable now.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return 0
