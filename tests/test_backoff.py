"""The one backoff: the link's reconnects and a source's reopens (full jitter), an HTTP
download's retries (capped exponential, no jitter)."""

from __future__ import annotations

import random

import pytest

from edge_agent.backoff import Backoff


def test_full_jitter_stays_between_the_minimum_and_a_cap_that_doubles() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(7))
    for attempt in range(12):
        cap = min(30.0, 0.5 * 2 ** (attempt + 1))
        waits = [backoff.delay(attempt) for _ in range(400)]
        assert all(0.5 <= wait <= cap for wait in waits)
        assert max(waits) >= 0.5 + 0.8 * (cap - 0.5)  # spread over the whole range
    assert backoff.delay(10_000) <= 30.0  # no overflow however long it failed


def test_a_fleet_that_lost_its_broker_together_spreads_even_its_first_retry() -> None:
    firsts = [Backoff(1.0, 60.0, rng=random.Random(seed)).next() for seed in range(1000)]
    # Over [1 s, 2 s]: no more than about a tenth of the fleet in any 0.1 s.
    assert min(firsts) >= 1.0 and max(firsts) <= 2.0
    busiest = max(
        sum(1 for w in firsts if lo <= w < lo + 0.1) for lo in [1 + i / 10 for i in range(10)]
    )
    assert busiest < 150, busiest


def test_next_counts_attempts_and_reset_starts_over() -> None:
    backoff = Backoff(1.0, 8.0, jitter=False)
    assert [backoff.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next() == 1.0


def test_without_jitter_the_wait_is_the_capped_exponential() -> None:
    backoff = Backoff(0.05, 10.0, jitter=False)
    assert [backoff.delay(n) for n in (-1, 0, 1, 2, 3, 20)] == [0.05, 0.05, 0.1, 0.2, 0.4, 10.0]


def test_a_wait_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match=r"first_s \(0\) and max_s \(5\) must be > 0"):
        Backoff(0, 5)
