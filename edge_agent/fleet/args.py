"""From `edge-fleet` arguments to the objects that do the work: the broker connection, the
target devices, the command signer; each bad value named in one line."""

from __future__ import annotations

import argparse
import re

from edge_agent.errors import UserError
from edge_agent.fleet.client import (
    BrokerOptions,
    FleetClient,
    Signer,
    Target,
    check_level,
    parse_address,
)

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a bare TOML key, and a valid signature key_id


def key_id_from(value: str) -> str:
    if _KEY_ID.fullmatch(value) is None:
        raise UserError(f"--key-id {value!r}: use 1 to 64 letters, digits, '_' or '-'")
    return value


def client_from(args: argparse.Namespace) -> FleetClient:
    from edge_agent.config.secrets import read_secret

    tls = any(path is not None for path in (args.ca, args.cert, args.key))
    host, port = parse_address(args.broker, 8883 if tls else 1883)
    password = None
    if args.password_file is not None:
        try:
            password = read_secret(str(args.password_file))
        except ValueError as exc:
            raise UserError(f"--password-file: {exc}") from None
    options = BrokerOptions(
        host=host,
        port=port,
        prefix=check_level(args.prefix, "--prefix"),
        username=args.username,
        password=password,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
        protocol=args.mqtt,
    )
    return FleetClient(options)  # connected by `with`


def target_from(args: argparse.Namespace) -> Target:
    if args.device:
        names = dict.fromkeys(check_level(d, "--device") for d in args.device)
        return Target("device", tuple(names))
    if args.group is not None:
        return Target("group", (check_level(args.group, "--group"),))
    return Target("all")


def signer_from(args: argparse.Namespace) -> Signer | None:
    if args.sign_key is None:
        return None
    return Signer.load(args.sign_key, key_id_from(args.key_id or args.sign_key.stem))


def check_positive(value: float | None, flag: str) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{flag} {value}: must be more than 0")
