"""Recording a decision: the one place that changes what a submission's outcome is.

A decision, its audit event and the callback event to the tenant are written in the caller's
transaction, so either all of them exist or none does. Every kind of decision (model, system,
reviewer, appeal) passes through here, so every one of them reaches the tenant's receiver.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.decisions.models import Action, Decision, DecisionSource, ReviewReason
from moderation.decisions.rules import Outcome, failure
from moderation.policies.service import document_for_version
from moderation.submissions.models import Submission, SubmissionStatus
from moderation.webhooks.service import DecisionNotice, notify_decision


def record_decision(
    session: Session,
    submission: Submission,
    outcome: Outcome,
    *,
    source: DecisionSource,
    detail: str | None = None,
    actor: str | None = None,
) -> Decision:
    decision = Decision(
        submission_id=submission.id,
        action=outcome.action,
        source=source,
        reason=outcome.reason.value if outcome.reason else None,
        detail=detail[:2000] if detail else None,
        categories=outcome.categories,
        actor=actor,
    )
    session.add(decision)
    submission.action = outcome.action
    submission.status = (
        SubmissionStatus.in_review if outcome.action is Action.review else SubmissionStatus.decided
    )
    submission.lease_token = None
    submission.lease_expires_at = None
    event = "review_required" if outcome.action is Action.review else "decided"
    data: dict[str, Any] = {"action": outcome.action.value, "source": source.value}
    if outcome.reason:
        data["reason"] = outcome.reason.value
    record_event(session, submission.tenant_id, submission.id, event, actor or "system", data)
    session.flush()
    policy = document_for_version(session, submission.policy_version_id)
    notify_decision(
        session,
        DecisionNotice(
            tenant_id=submission.tenant_id,
            submission_id=submission.id,
            external_id=submission.external_id,
            callback_url=submission.callback_url,
            action=decision.action.value,
            source=decision.source.value,
            reason=decision.reason,
            categories=list(decision.categories),
            decided_at=decision.created_at,
            actor=decision.actor,
            policy_slug=policy.slug,
            policy_version=policy.version,
        ),
    )
    return decision


def finish_without_judging(
    session: Session, submission: Submission, reason: ReviewReason, detail: str
) -> Decision:
    """The pipeline could not judge: the submission goes to a person, never to allow."""
    return record_decision(
        session, submission, failure(reason), source=DecisionSource.system, detail=detail
    )
