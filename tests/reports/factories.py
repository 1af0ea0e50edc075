"""Rows for report tests: a policy of the test's own, and submissions with their history.

Rows are written directly (no worker, no model), so a test states exactly what was stored:
the verdict, the automatic decision, and what a reviewer decided afterwards.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from moderation.core.time import utcnow
from moderation.decisions.models import Action, Decision, DecisionSource, ShadowOutcome
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import store_policy_version
from moderation.submissions.models import Submission, SubmissionStatus, Verdict, VerdictRole

CATEGORIES = ("hate", "violence", "spam")


def make_policy(
    session: Session,
    tenant_id: uuid.UUID,
    *,
    min_confidence: float = 0.8,
    thresholds: dict[str, tuple[int, int | None]] | None = None,
) -> uuid.UUID:
    """A policy with a unique slug; `thresholds` maps category -> (block_at, restrict_at)."""
    thresholds = thresholds or {"hate": (3, 2), "violence": (3, None), "spam": (3, 1)}
    document = PolicyDocument(
        slug=f"report-{uuid.uuid4().hex[:10]}",
        version=1,
        title="Report test policy",
        instructions="Judge the upload.",
        min_confidence=min_confidence,
        categories=[
            {
                "id": category,
                "name": category.title(),
                "definition": f"{category} content",
                "block_at": block_at,
                "restrict_at": restrict_at,
            }
            for category, (block_at, restrict_at) in thresholds.items()
        ],
    )
    return store_policy_version(session, tenant_id, document).version.id


def verdict(rating: str, confidence: float, *violations: tuple[str, int, float]) -> dict[str, Any]:
    return {
        "rating": rating,
        "confidence": confidence,
        "violations": [
            {
                "category": category,
                "severity": severity,
                "confidence": conf,
                "source": "image",
                "rationale": "test",
            }
            for category, severity, conf in violations
        ],
        "rationale": "test",
    }


def add_item(
    session: Session,
    tenant_id: uuid.UUID,
    version_id: uuid.UUID,
    *,
    parsed: dict[str, Any] | None,
    auto: tuple[str, str | None] | None,
    human: tuple[str, list[str]] | None = None,
    human_source: DecisionSource = DecisionSource.reviewer,
    created_at: datetime | None = None,
    latency_ms: int = 1000,
    tokens: tuple[int, int] = (900, 100),
    rating_probability: float | None = None,
    calls: int = 1,
) -> uuid.UUID:
    """One submission with `calls` model calls (the last holding `parsed`), its automatic
    decision `auto` = (action, reason) and, optionally, a reviewer's `human` =
    (action, categories)."""
    created_at = created_at or utcnow() - timedelta(hours=1)
    submission = Submission(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        external_id=f"item-{uuid.uuid4().hex}",
        payload_sha256=uuid.uuid4().hex * 2,
        metadata_={},
        policy_version_id=version_id,
        status=SubmissionStatus.decided if auto else SubmissionStatus.queued,
        action=Action(auto[0]) if auto else None,
        created_at=created_at,
        attempts=1,
    )
    session.add(submission)
    session.flush()
    for sequence in range(calls):
        last = sequence == calls - 1
        session.add(
            Verdict(
                submission_id=submission.id,
                policy_version_id=version_id,
                attempt=1,
                sequence=sequence,
                model="test-model",
                prompt_sha256="0" * 64,
                raw_output="{}",
                parsed=parsed if last else None,
                error=None if last else "invalid verdict",
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                latency_ms=latency_ms,
                rating_probability=rating_probability if last else None,
                created_at=created_at + timedelta(seconds=1 + sequence),
            )
        )
    if auto is not None:
        action, reason = auto
        session.add(
            Decision(
                submission_id=submission.id,
                action=Action(action),
                source=DecisionSource.model if parsed is not None else DecisionSource.system,
                reason=reason,
                categories=[],
                created_at=created_at + timedelta(seconds=5),
            )
        )
    if human is not None:
        action, categories = human
        session.add(
            Decision(
                submission_id=submission.id,
                action=Action(action),
                source=human_source,
                categories=[{"category": c, "severity": 3} for c in categories],
                actor="reviewer-1",
                created_at=created_at + timedelta(minutes=30),
            )
        )
    session.flush()
    return submission.id


def add_shadow_outcome(
    session: Session,
    submission_id: uuid.UUID,
    shadow_version_id: uuid.UUID,
    action: str,
    *,
    tokens: tuple[int, int] = (90, 10),
) -> None:
    """What a shadow version would have decided, with the one model call behind it."""
    session.add(
        Verdict(
            submission_id=submission_id,
            policy_version_id=shadow_version_id,
            attempt=1,
            sequence=0,
            model="test-model",
            prompt_sha256="1" * 64,
            raw_output="{}",
            parsed=verdict("safe", 0.9),
            input_tokens=tokens[0],
            output_tokens=tokens[1],
            latency_ms=500,
            role=VerdictRole.shadow,
        )
    )
    session.add(
        ShadowOutcome(
            submission_id=submission_id,
            policy_version_id=shadow_version_id,
            action=Action(action),
            categories=[],
            model_calls=1,
        )
    )
    session.flush()
