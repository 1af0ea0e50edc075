"""Turn a model verdict into an action under a policy's thresholds.

Pure functions, so the same rules serve the worker, backtests and threshold sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moderation.decisions.models import Action, ReviewReason
from moderation.policies.schemas import PolicyDocument
from moderation.vlm.verdict import ModelVerdict, Violation


@dataclass(frozen=True)
class Outcome:
    action: Action
    reason: ReviewReason | None = None
    categories: list[dict[str, Any]] = field(default_factory=list)


def _category_summary(violations: list[Violation]) -> list[dict[str, Any]]:
    strongest: dict[str, Violation] = {}
    for violation in violations:
        held = strongest.get(violation.category)
        if held is None or (violation.severity, violation.confidence) > (
            held.severity,
            held.confidence,
        ):
            strongest[violation.category] = violation
    return [
        {"category": v.category, "severity": v.severity, "confidence": v.confidence}
        for v in sorted(strongest.values(), key=lambda v: (-v.severity, v.category))
    ]


def decide(
    verdict: ModelVerdict, policy: PolicyDocument, *, min_confidence: float | None = None
) -> Outcome:
    """Apply the thresholds; `min_confidence` overrides the policy's for threshold sweeps."""
    threshold = policy.min_confidence if min_confidence is None else min_confidence
    if verdict.rating == "safe":
        if verdict.confidence >= threshold:
            return Outcome(Action.allow)
        return Outcome(Action.review, ReviewReason.low_confidence)

    confident = [v for v in verdict.violations if v.confidence >= threshold]
    blocking = [v for v in confident if v.severity >= policy.category(v.category).block_at]
    if blocking:
        return Outcome(Action.block, categories=_category_summary(blocking))
    restricting = []
    for violation in confident:
        restrict_at = policy.category(violation.category).restrict_at
        if restrict_at is not None and violation.severity >= restrict_at:
            restricting.append(violation)
    if restricting:
        return Outcome(Action.restrict, categories=_category_summary(restricting))
    # Unsafe but neither confident nor severe enough: never allow what the model flagged.
    return Outcome(
        Action.review, ReviewReason.below_threshold, _category_summary(verdict.violations)
    )


def failure(reason: ReviewReason) -> Outcome:
    return Outcome(Action.review, reason)
