"""`edge-fleet serve-escalation`: the reference escalation server (edge_agent/escalation/
server.py) until Ctrl-C. The runtime is imported only when it runs."""

from __future__ import annotations

import argparse
import logging
import threading

from edge_agent.errors import UserError
from edge_agent.fleet.client import parse_address


def serve(args: argparse.Namespace) -> int:
    try:
        from edge_agent.escalation.server import EscalationServer
        from edge_agent.runtime.backend import select_backend
        from edge_agent.runtime.loader import load_model
        from edge_agent.runtime.predictor import Predictor
    except ImportError as exc:
        raise UserError(f"serve-escalation needs the agent's runtime: {exc}") from None
    # The CLI logs warnings only (debug with --debug); a server runs for long and says what
    # it serves and each request it drops.
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))
    host, port = parse_address(args.broker or "127.0.0.1:1883", 1883)
    model = load_model(args.model, select_backend("auto"), (), args.threads)
    server = EscalationServer(
        Predictor(model),
        host,
        port,
        prefix=args.prefix,
        group=args.group,
        protocol=args.protocol,
        client_id=args.client_id or "",
    ).start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
