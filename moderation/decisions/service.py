"""Recording a decision: the one place that changes what a submission's outcome is.

A decision, its audit event and the notice to the tenant are written in the caller's
transaction, so either all of them exist or none does.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.decisions.models import Action, Decision, DecisionSource, ReviewReason
from moderation.decisions.rules import Outcome, failure
from moderation.submissions.models import Submission, SubmissionStatus


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
    # Any new decision ends a pending re-drive; the pipeline schedules the next one afresh.
    submission.redrive_at = None
    submission.redrive_until = None
    event = "review_required" if outcome.action is Action.review else "decided"
    data: dict[str, Any] = {"action": outcome.action.value, "source": source.value}
    if outcome.reason:
        data["reason"] = outcome.reason.value
    record_event(session, submission.tenant_id, submission.id, event, actor or "system", data)
    session.flush()
    return decision


def finish_without_judging(
    session: Session, submission: Submission, reason: ReviewReason, detail: str
) -> Decision:
    """The pipeline could not judge: the submission goes to a person, never to allow."""
    return record_decision(
        session, submission, failure(reason), source=DecisionSource.system, detail=detail
    )
