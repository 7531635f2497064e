"""`edge-fleet serve-escalation`: the reference escalation server (edge_agent/escalation/
server.py) until Ctrl-C. The runtime is imported only when it runs."""

from __future__ import annotations

import argparse
import logging
import threading

from edge_agent.errors import UserError
from edge_agent.fleet.args import broker_options
from edge_agent.fleet.client import use_credentials


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
    # The broker, credentials and TLS as every edge-fleet command takes them (flags, then
    # EDGE_FLEET_*, then the profile).
    options = broker_options(args)
    model = load_model(args.model, select_backend("auto"), (), args.threads)
    server = EscalationServer(
        Predictor(model),
        options.host,
        options.port,
        prefix=options.prefix,
        group=args.group,
        # Answers need MQTT 5's response topics only where the device asked with them; a
        # 3.1.1 broker gets 3.1.1 (--mqtt 3.1.1), anything else MQTT 5.
        protocol="3.1.1" if options.protocol == "3.1.1" else "5",
        client_id=args.client_id or "",
        setup=lambda client: use_credentials(client, options),
    ).start()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
