"""The escalation policy alone: band, class list, audit sample, budget."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from edge_agent.config.settings import EscalateSettings
from edge_agent.escalation.policy import Budget, Policy, top1, wanted


def classes(*pairs: tuple[str, float]) -> dict[str, object]:
    return {"top": [{"index": i, "label": label, "score": s} for i, (label, s) in enumerate(pairs)]}


def test_top1_of_a_classifier_and_a_detector() -> None:
    assert top1(classes(("3", 0.5), ("8", 0.3))) == ("3", 0.5)
    dets = {"detections": [{"label": "face", "score": 0.4}, {"label": "cat", "score": 0.7}]}
    assert top1(dets) == ("cat", 0.7)
    assert top1({"detections": []}) == (None, None)


def test_the_band_and_the_class_list() -> None:
    s = EscalateSettings(enabled=True, min_score=0.3, max_score=0.6)
    assert wanted(s, classes(("3", 0.45)), 0.9) == "band"
    assert wanted(s, classes(("3", 0.3)), 0.9) == "band"
    assert wanted(s, classes(("3", 0.61)), 0.9) is None
    assert wanted(s, classes(("3", 0.2)), 0.9) is None
    only = s.model_copy(update={"classes": ["8"]})
    assert wanted(only, classes(("3", 0.45)), 0.9) is None
    assert wanted(only, classes(("8", 0.45)), 0.9) == "band"


def test_the_audit_sample() -> None:
    s = EscalateSettings(enabled=True, sample_rate=0.05)
    policy = Policy(s, rng=random.Random(1))
    decisions = [policy.decide(classes(("1", 0.99))) for _ in range(1000)]
    audits = decisions.count("audit")
    assert 20 <= audits <= 60  # about 5%, and at most the 60 a minute the budget allows
    assert set(decisions) <= {"audit", "no", "over_budget"}


def test_the_budget_refills_evenly() -> None:
    now = [0.0]
    budget = Budget(per_minute=2, bytes_per_hour=3600, clock=lambda: now[0])
    assert budget.take_request() and budget.take_request()
    assert not budget.take_request()
    now[0] += 30  # one request's worth
    assert budget.take_request() and not budget.take_request()
    assert budget.take_bytes(3000) and not budget.take_bytes(1000)
    now[0] += 1000
    assert budget.take_bytes(1000)


def test_a_band_upside_down_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_score is above max_score"):
        EscalateSettings(min_score=0.7, max_score=0.2)
