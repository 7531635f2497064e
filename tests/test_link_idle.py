"""An idle link costs the device nothing: the thread that writes acknowledgements to the
outbox sleeps until there is one, rather than waking on a timer (a fleet of idle agents
on one host, or a battery board, pays for every wake-up)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.agent_helpers import wait_until
from tests.mqtt_fixtures import Broker, Subscriber
from tests.test_link import make_agent, result_ids


def switches(thread_name: str) -> int:
    """Voluntary context switches of this process's thread by that name (each wake-up from
    a wait is one)."""
    [thread] = [t for t in threading.enumerate() if t.name == thread_name]
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("voluntary_ctxt_switches"))
    return int(line.split()[1])


def test_the_marks_thread_sleeps_while_the_link_is_idle_and_marks_when_rows_go(
    tmp_path: Path, broker: Broker
) -> None:
    with Subscriber(broker, "edge/+/results/#") as sub:
        agent = make_agent(tmp_path, broker.port, count=20)
        agent.start()
        try:
            wait_until(lambda: len(result_ids(sub)) == 20, what="20 results delivered")
            wait_until(lambda: agent.outbox.stats()["pending"] == 0, what="all marked")
            before = switches("outbox-marks")
            time.sleep(2.0)
            # On a 50 ms timer this was about 40; a stray wake (a status publish's ack) is fine.
            assert switches("outbox-marks") - before <= 3
        finally:
            agent.stop()
