"""Counters: counts from many threads add up exactly, and a reader on another thread gets
whole copies while new names appear."""

from __future__ import annotations

import threading

from edge_agent.counters import Counters


def test_counts_from_many_threads_add_up_while_another_thread_reads() -> None:
    counters = Counters("errors")
    done = threading.Event()
    reads: list[dict[str, int]] = []
    failures: list[BaseException] = []

    def reader() -> None:
        try:
            while not done.is_set():
                reads.append(dict(counters))  # the way telemetry copies them
        except BaseException as exc:
            failures.append(exc)

    def writer(i: int) -> None:
        for j in range(5000):
            counters.add("frames")
            counters.add(f"reason_{i}_{j % 50}")  # new names keep appearing

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    watching = threading.Thread(target=reader)
    watching.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watching.join()
    assert not failures
    assert counters["frames"] == 8 * 5000
    assert sum(n for name, n in counters.items() if name.startswith("reason_")) == 8 * 5000
    assert len(reads) > 0 and all(read["errors"] == 0 for read in reads)


def test_they_read_like_a_counter() -> None:
    counters = Counters("errors")
    counters.add_each(["result", "telemetry", "result"])
    counters.add("result", 3)
    assert counters == {"errors": 0, "result": 5, "telemetry": 1}
    assert counters["never"] == 0 and "never" not in counters
    assert counters.get("never", 7) == 7 and counters.get("result") == 5
    assert counters.snapshot() == {"errors": 0, "result": 5, "telemetry": 1}
