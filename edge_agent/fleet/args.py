"""From `edge-fleet` arguments to the objects that do the work: the broker connection, the
target devices, the command signer; each bad value named in one line."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

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
    """The connection the flags, the environment and the profile describe (fleet/profile.py)."""
    return FleetClient(broker_options(args))  # connected by `with`


def broker_options(args: argparse.Namespace) -> BrokerOptions:
    """The broker, credentials and TLS from the flags, the environment and the profile."""
    from edge_agent.config.secrets import read_secret
    from edge_agent.fleet.profile import resolve

    found = resolve(args)
    files = {key: found.get(key) for key in ("ca", "cert", "key")}
    tls = bool(found.get("tls")) or any(path is not None for path in files.values())
    host, port = parse_address(found.get("broker"), 8883 if tls else 1883, found.sources["broker"])
    password = found.get("password")
    if found.get("password_file") is not None:
        try:
            password = read_secret(str(found.get("password_file")))
        except ValueError as exc:
            raise UserError(f"{found.sources['password_file']}: {exc}") from None
    if password is not None and found.get("username") is None:
        where = found.sources.get("password") or found.sources["password_file"]
        raise UserError(f"{where}: a password needs a user name (--username)")
    return BrokerOptions(
        host=host,
        port=port,
        prefix=check_level(found.get("prefix", "edge"), found.sources.get("prefix", "--prefix")),
        username=found.get("username"),
        password=password,
        ca=files["ca"],
        cert=files["cert"],
        key=files["key"],
        protocol=found.get("mqtt", "auto"),
        use_tls=tls,
    )


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


def key_values(flag: str, pairs: list[str]) -> dict[str, Any]:
    """Fields from repeated `FLAG KEY=VALUE`: a value that reads as JSON is that (numbers,
    true/false, lists, objects), anything else a plain string."""
    fields: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            fields[key] = json.loads(text)
        except ValueError:
            fields[key] = text
    return fields
