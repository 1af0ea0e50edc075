"""The decision rules, as pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from moderation.decisions.models import Action, ReviewReason
from moderation.decisions.rules import decide
from moderation.policies.schemas import PolicyDocument
from moderation.vlm.verdict import ModelVerdict, Violation
from tests.fakes.fake_vlm import CATEGORY_IDS

POLICY = PolicyDocument.model_validate(
    yaml.safe_load((Path(__file__).parents[2] / "policies" / "default.yaml").read_text())
)


def unsafe(*violations: tuple[str, int, float]) -> ModelVerdict:
    return ModelVerdict(
        rating="unsafe",
        confidence=max(v[2] for v in violations),
        violations=[
            Violation(category=c, severity=s, confidence=p, source="image", image=0, rationale="r")
            for c, s, p in violations
        ],
        rationale="r",
    )


def safe(confidence: float) -> ModelVerdict:
    return ModelVerdict(rating="safe", confidence=confidence, violations=[], rationale="ok")


def test_default_policy_ships_the_spec_categories():
    assert [c.id for c in POLICY.categories] == list(CATEGORY_IDS)
    assert POLICY.category("child_safety").block_at == 1
    assert POLICY.min_confidence == 0.8


def test_confident_safe_is_allowed():
    assert decide(safe(0.8), POLICY).action is Action.allow


def test_unconfident_safe_goes_to_review():
    outcome = decide(safe(0.79), POLICY)
    assert (outcome.action, outcome.reason) == (Action.review, ReviewReason.low_confidence)


def test_severe_and_confident_is_blocked():
    outcome = decide(unsafe(("violence", 3, 0.8)), POLICY)
    assert outcome.action is Action.block
    assert outcome.categories == [{"category": "violence", "severity": 3, "confidence": 0.8}]


def test_restrict_band():
    assert decide(unsafe(("sexual", 2, 0.9)), POLICY).action is Action.restrict


def test_severe_but_unsure_goes_to_review_never_allow():
    outcome = decide(unsafe(("violence", 4, 0.79)), POLICY)
    assert (outcome.action, outcome.reason) == (Action.review, ReviewReason.below_threshold)


def test_category_without_restrict_band_goes_to_review_below_block():
    outcome = decide(unsafe(("hate", 2, 0.99)), POLICY)
    assert (outcome.action, outcome.reason) == (Action.review, ReviewReason.below_threshold)


def test_block_wins_over_restrict_and_lists_only_blocking_categories():
    outcome = decide(unsafe(("sexual", 2, 0.95), ("weapons_drugs", 4, 0.9)), POLICY)
    assert outcome.action is Action.block
    assert [c["category"] for c in outcome.categories] == ["weapons_drugs"]


def test_threshold_override_for_sweeps():
    verdict = unsafe(("violence", 3, 0.7))
    assert decide(verdict, POLICY).action is Action.review
    assert decide(verdict, POLICY, min_confidence=0.6).action is Action.block


violations = st.tuples(
    st.sampled_from(sorted(POLICY.category_ids)),
    st.integers(1, 4),
    st.floats(0, 1, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(violations, min_size=1, max_size=5))
def test_unsafe_is_never_allowed(found):
    assert decide(unsafe(*found), POLICY).action is not Action.allow


@settings(max_examples=200, deadline=None)
@given(st.lists(violations, min_size=1, max_size=5), st.floats(0, 1, allow_nan=False))
def test_a_higher_threshold_never_acts_more(found, threshold):
    """Raising min_confidence can only move decisions towards review, never towards block."""
    rank = {Action.allow: 0, Action.review: 0, Action.restrict: 1, Action.block: 2}
    verdict = unsafe(*found)
    low = decide(verdict, POLICY, min_confidence=threshold / 2).action
    high = decide(verdict, POLICY, min_confidence=threshold).action
    assert rank[high] <= rank[low]


@pytest.mark.parametrize("reason", list(ReviewReason))
def test_every_failure_reason_reviews(reason):
    from moderation.decisions.rules import failure

    assert failure(reason).action is Action.review
