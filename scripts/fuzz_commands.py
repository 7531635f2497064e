#!/usr/bin/env python3
"""Fuzz the agent's commands: random command names and bodies (valid, malformed, not JSON
at all, nested up to 20,000 levels, UTF-16/32 or broken UTF-8, NaN and infinite numbers)
sent through a local Mosquitto to a running agent. Every one must get exactly one reply,
and the agent must keep running its pipeline and answering.

    .venv/bin/python scripts/fuzz_commands.py [--cases 10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_link import start_broker  # noqa: E402

from edge_agent.agent import Agent  # noqa: E402
from edge_agent.config.load import load_settings  # noqa: E402
from tests.command_fuzz import FuzzClient, duplicates, fuzz, summary  # noqa: E402

CONFIG = """
[device]
id = "fuzz"
state_dir = "{state}"

[models.detector]
path = "{root}/models/detector_int8.tflite"
threads = 1

[sources.pattern]
kind = "synthetic"
pattern = "moving_box"
fps = 15

[pipelines.boxes]
source = "pattern"
model = "detector"

[mqtt]
enabled = true
port = {port}

[logging]
level = "error"
status_interval_s = 0
"""


def main() -> int:
    logging.basicConfig(level=logging.ERROR)  # each refusal is a warning: thousands here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None, help="repeatable cases")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker, port = start_broker(folder, "set_tcp_nodelay true")
        config = folder / "agent.toml"
        config.write_text(CONFIG.format(state=folder / "state", root=ROOT, port=port))
        agent = Agent(load_settings(config), config_path=config)
        agent.start()
        client = FuzzClient("127.0.0.1", port, "edge", "fuzz")
        try:
            while agent.link is None or not agent.link.connected.is_set():
                time.sleep(0.05)
            started = time.perf_counter()
            fuzz(client, args.cases, args.seed)
            elapsed = time.perf_counter() - started
            client.one_reply("ping", b'{"request_id": "still-alive"}')
            time.sleep(0.5)
            twice = duplicates(client)
            results = agent.pipelines["boxes"].stats.results if "boxes" in agent.pipelines else 0
        finally:
            client.close()
            agent.stop()
            broker.terminate()
            broker.wait(5)
    print(f"{args.cases} random commands in {elapsed:.1f} s ({args.cases / elapsed:.0f}/s)")
    report = summary(client)
    print(f"replies: {report}")
    print(f"answered twice: {len(twice)}; pipeline results meanwhile: {results}")
    print("agent alive: answered a ping after the last case")
    # Every case waited for its reply; the extra one is the ping.
    return 1 if twice or report["replies"] != args.cases + 1 else 0


if __name__ == "__main__":
    raise SystemExit(main())
