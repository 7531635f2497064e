"""`edge-fleet`: the operator's command line (docs/fleet.md). The parser lives here; each
command's work lives in the module for its kind of job:

    local.py    keygen, sign                   local files only
    golden.py   golden make                    runs the model (the agent's runtime, lazily)
    push.py     push                           an update to devices, followed to its end
    remote.py   cmd, devices, watch, snapshot, models    through the broker
    escalation.py  serve-escalation                runs a bigger model (the runtime, lazily)

The broker and credentials come from flags, then `EDGE_FLEET_*`, then a profile
(fleet/profile.py). User errors print one line and exit 2, as `edge-agent` does; a command
that reached the devices exits 1 when one of them refused it or did not answer."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from edge_agent import __version__
from edge_agent.errors import run_command
from edge_agent.fleet import escalation, golden, local, push, remote


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-fleet",
        description="Operate edge-agent devices: keys, golden sets, signed updates, commands.",
        epilog="Broker: --broker, else $EDGE_FLEET_BROKER, else the profile "
        "(~/.config/edge-fleet/profiles.toml). See docs/fleet.md.",
    )
    parser.add_argument("--version", action="version", version=f"edge-fleet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    broker = _broker_options()
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="JSON lines for scripts")

    p = commands.add_parser("keygen", help="a new Ed25519 signing key")
    p.add_argument("--out", type=Path, required=True, help="folder to write ID.pem into")
    p.add_argument("--key-id", default="ops", help="the key's id (default ops)")
    p.set_defaults(handler=local.keygen)

    p = commands.add_parser("golden", help="make a golden set for an update's staging check")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("make", parents=[as_json], help="run the model on inputs, save .npz")
    p.add_argument("model", type=Path, help="the .tflite file (its .json manifest beside it)")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="images or .npy")
    p.add_argument("-o", "--out", type=Path, required=True, help="the golden set (.npz)")
    p.add_argument("--runtime", choices=["auto", "litert", "tflite-runtime"], default="auto")
    p.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    p.set_defaults(handler=golden.make)

    p = commands.add_parser("sign", help="package and sign a model update")
    p.add_argument("model", type=Path, help="the .tflite file (its .json manifest beside it)")
    p.add_argument("--name", required=True, help="the model's name on the devices ([models.NAME])")
    p.add_argument("--version", required=True, dest="model_version", help="the update's version")
    p.add_argument("--key", required=True, type=Path, help="private key PEM (from keygen)")
    p.add_argument("--key-id", help="the key's id (default: the PEM file's stem)")
    p.add_argument("--golden", type=Path, help=".npz golden set (golden make), checked here")
    p.add_argument("--min-agreement", type=float, default=0.95, help="golden share (0.95)")
    p.add_argument("--requires", nargs="+", default=[], metavar="DELEGATE", help="delegates")
    p.add_argument(
        "--shadow",
        action="append",
        metavar="KEY=VALUE",
        help="run beside the active model first, promoted only if it agrees: sample=0.25, "
        "min_frames=200, min_agreement=0.95, ... (docs/shadow.md); repeat for each field",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for the files + update.json")
    p.set_defaults(handler=local.sign)

    p = commands.add_parser(
        "push", parents=[broker, as_json], help="send a signed update to devices"
    )
    p.add_argument("dir", type=Path, help="folder made by sign (update.json and the files)")
    _target_options(p)
    p.add_argument("--via", choices=("mqtt", "http"), default="mqtt", help="transport (mqtt)")
    p.add_argument("--http-host", default="127.0.0.1", help="host devices fetch from")
    p.add_argument("--http-port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--http-bind", help="address to listen on (default: --http-host)")
    p.add_argument("--chunk-size", type=int, default=262144, help="MQTT chunk bytes (262144)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")
    p.add_argument("--wait-for", type=int, help="stop once N devices answered")
    p.add_argument("--shadow", action="store_true", help="print each shadow agreement update")
    _sign_options(p)
    p.set_defaults(handler=push.run)

    p = commands.add_parser(
        "cmd", parents=[broker, as_json], help="send any command, show the replies"
    )
    p.add_argument("name", help="the command (ping, status, set_config, ...)")
    _target_options(p)
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE", help="a field")
    p.add_argument("--body", help="the command's fields as one JSON object")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    p.add_argument("--wait-for", type=int, help="stop after N replies")
    _sign_options(p)
    p.add_argument("--expires-in", type=float, help="refused by devices after S seconds")
    p.set_defaults(handler=remote.cmd)

    p = commands.add_parser(
        "devices", parents=[broker, as_json], help="the devices' retained status"
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait at most (2)")
    p.set_defaults(handler=remote.devices)

    p = commands.add_parser(
        "watch", parents=[broker, as_json], help="print messages with their topic and device"
    )
    p.add_argument("--device", help="one device (default: all)")
    p.add_argument("--telemetry", action="store_true", help="telemetry messages")
    p.add_argument("--results", action="store_true", help="inference results")
    p.add_argument("--events", action="store_true", help="events (updates, ...)")
    p.add_argument("--count", type=int, help="stop after N messages")
    p.set_defaults(handler=remote.watch)

    p = commands.add_parser(
        "snapshot", parents=[broker, as_json], help="a source's last frame, as a JPEG file"
    )
    p.add_argument("--device", required=True, metavar="ID", help="the device")
    p.add_argument("--source", required=True, help="a camera or image source ([sources.NAME])")
    p.add_argument("--out", type=Path, required=True, help="the JPEG file to write")
    p.add_argument("--quality", type=int, default=85, help="JPEG quality, 10 to 100 (85)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
    _sign_options(p)
    p.set_defaults(handler=remote.snapshot)

    p = commands.add_parser("models", help="model versions on the devices")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=[broker, as_json], help="installed versions, and which runs"
    )
    remove = actions.add_parser(
        "remove", parents=[broker, as_json], help="remove an installed version that is not active"
    )
    remove.add_argument("name", help="the model ([models.NAME])")
    remove.add_argument("model_version", metavar="VERSION", help="the version to remove")
    for action in (listing, remove):
        _target_options(action)
        action.add_argument("--timeout", type=float, default=10.0, help="seconds to wait (10)")
        action.add_argument("--wait-for", type=int, help="stop after N replies")
        _sign_options(action)
        action.set_defaults(handler=remote.models)

    p = commands.add_parser(
        "serve-escalation",
        parents=[broker],
        help="answer devices' escalations with a bigger model (Ctrl-C)",
    )
    p.add_argument("--model", type=Path, required=True, help="the .tflite (manifest beside it)")
    p.add_argument("--group", default="escalation", help="shared subscription group")
    p.add_argument("--client-id", help="MQTT client id, named in answers")
    p.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    p.set_defaults(handler=escalation.serve)
    return parser


def _broker_options() -> argparse.ArgumentParser:
    """Each one overrides $EDGE_FLEET_<NAME> and the profile's key of the same name."""
    broker = argparse.ArgumentParser(add_help=False)
    b = broker.add_argument_group("broker (flags, else $EDGE_FLEET_*, else the profile)")
    b.add_argument("--profile", help="profile in the profiles file ($EDGE_FLEET_PROFILE)")
    b.add_argument("--broker", help="HOST[:PORT]; port 1883, 8883 with TLS")
    b.add_argument("--prefix", help="first topic level (default edge)")
    b.add_argument("--username", help="MQTT user name")
    b.add_argument("--password-file", type=Path, help="file holding the MQTT password")
    b.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    b.add_argument("--ca", type=Path, help="CA certificate (PEM): TLS, port 8883 by default")
    b.add_argument("--cert", type=Path, help="client certificate (PEM)")
    b.add_argument("--key", type=Path, help="client certificate's private key (PEM)")
    b.add_argument(
        "--mqtt",
        choices=("auto", "5", "3.1.1"),
        help="protocol (default auto: 5, or 3.1.1 where the broker refuses 5)",
    )
    return broker


def _target_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--device", nargs="+", metavar="ID", help="these devices")
    group.add_argument("--group", metavar="G", help="the devices in [device] groups G")
    group.add_argument("--all", action="store_true", help="every device")
    parser.epilog = (
        "For --group/--all the wait ends once every device known from its retained status "
        "answered, or at --timeout, --wait-for or Ctrl-C."
    )


def _sign_options(parser: argparse.ArgumentParser) -> None:
    # For devices with [commands] require_signed = true: the command itself is signed.
    parser.add_argument("--sign-key", type=Path, help="sign the command with this private key")
    parser.add_argument("--key-id", help="the signing key's id (default: the PEM file's stem)")


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("edge-fleet", build_parser().parse_args(argv), "edge-fleet: %(message)s")
