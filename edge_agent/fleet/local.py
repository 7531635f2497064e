"""The `edge-fleet` commands that work on local files alone: `keygen` makes a signing key,
`sign` packages and signs a model update (its golden set checked first)."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from edge_agent.errors import UserError
from edge_agent.fleet.args import key_id_from, key_values
from edge_agent.fleet.client import Signer


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
    from edge_agent.fleet.golden import check_golden, model_input
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
    count = 0
    if args.golden is not None:
        # The device's staging check, made here: a wrong set is refused before it is signed.
        count, _ = check_golden(args.golden, model_input(args.model))
    try:
        manifest = build_update(
            args.model,
            args.name,
            args.model_version,
            out,
            golden=args.golden,
            min_agreement=args.min_agreement,
            requires=args.requires,
            shadow=None if args.shadow is None else key_values("--shadow", args.shadow),
        )
    except ValidationError as exc:
        raise UserError(validation_lines(exc, "update manifest")[0]) from None
    signed = sign_manifest(manifest, signer.key, signer.key_id)
    (out / UPDATE_FILE).write_text(json.dumps(signed.as_dict(), indent=2, sort_keys=True) + "\n")
    print(f"signed {signed.name} {signed.version} with key {signer.key_id}: {out / UPDATE_FILE}")
    for role, ref in signed.files.items():
        print(f"  {role:<9} {ref.path:<32} {ref.size:>10} bytes  sha256 {ref.sha256[:16]}")
    if signed.golden is not None:
        share = signed.golden.min_agreement
        print(f"  golden set: {count} inputs, at least {share:.0%} must agree")
    if signed.requires.delegates:
        print(f"  requires: {', '.join(signed.requires.delegates)}")
    if signed.shadow is not None:
        policy = signed.shadow.model_dump(exclude_none=True)
        print("  shadow first: " + ", ".join(f"{k}={v}" for k, v in policy.items()))
    return 0
