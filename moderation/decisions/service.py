"""Recording a decision: the one place that changes what a submission's outcome is.

A decision, its audit event, the callback event to the tenant and, for `review`, the task
a reviewer will claim are written in the caller's transaction, so either all of them exist
or none does. Every kind of decision (model, system, reviewer, appeal) passes through here,
so every one reaches the tenant's receiver, and every `review` gets its task unasked.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.config import Settings, get_settings
from moderation.decisions.models import Action, Decision, DecisionSource, ReviewReason
from moderation.decisions.rules import Outcome, failure
from moderation.policies.service import document_for_version
from moderation.review import repository as review_tasks
from moderation.review.models import ReviewTask, TaskKind, TaskStatus, max_severity, task_priority
from moderation.submissions import repository as submissions_repository
from moderation.submissions.models import Submission, SubmissionStatus
from moderation.webhooks.service import DecisionNotice, notify_decision


class SubmissionRef(Protocol):
    """What announcing a decision needs of its submission: a stored row, or the few columns a
    one-statement store read back."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def external_id(self) -> str: ...
    @property
    def callback_url(self) -> str | None: ...
    @property
    def policy_version_id(self) -> uuid.UUID: ...


def record_decision(
    session: Session,
    submission: Submission,
    outcome: Outcome,
    *,
    source: DecisionSource,
    detail: str | None = None,
    actor: str | None = None,
    settings: Settings | None = None,
) -> Decision:
    """Record the outcome; a final one (anything but review) also deletes the uploaded originals
    unless the retention settings keep them for a while."""
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
    if outcome.action is not Action.review:
        _purge_originals_at_final_decision(session, submission, settings or get_settings())
    session.flush()
    _settle_review_tasks(session, submission, decision, source)
    announce_decision(
        session,
        submission,
        action=decision.action,
        source=decision.source,
        reason=decision.reason,
        categories=decision.categories,
        decided_at=decision.created_at,
        actor=decision.actor,
    )
    return decision


def announce_decision(
    session: Session,
    submission: SubmissionRef,
    *,
    action: Action,
    source: DecisionSource,
    reason: str | None,
    categories: list[Any],
    decided_at: datetime,
    actor: str | None,
) -> None:
    """Queue the callback event for a stored decision, in the caller's transaction (nothing
    when neither the submission nor its tenant has a callback URL)."""
    policy = document_for_version(session, submission.policy_version_id)
    notify_decision(
        session,
        DecisionNotice(
            tenant_id=submission.tenant_id,
            submission_id=submission.id,
            external_id=submission.external_id,
            callback_url=submission.callback_url,
            action=action.value,
            source=source.value,
            reason=reason,
            categories=list(categories),
            decided_at=decided_at,
            actor=actor,
            policy_slug=policy.slug,
            policy_version=policy.version,
        ),
    )


def _purge_originals_at_final_decision(
    session: Session, submission: Submission, settings: Settings
) -> None:
    """The original upload may carry EXIF GPS positions and device serials; once the outcome is
    final only the metadata-free normalized copy is needed. In review the original stays, since
    judging the item again (after a model outage, say) starts from it."""
    if settings.retain_originals_days > 0:
        return  # the periodic retention job deletes it later
    purged = submissions_repository.purge_originals(session, submission.id)
    if purged:
        record_event(
            session,
            submission.tenant_id,
            submission.id,
            "media_purged",
            "retention",
            {"originals": purged, "normalized": 0, "why": "final_decision"},
        )


def _settle_review_tasks(
    session: Session, submission: Submission, decision: Decision, source: DecisionSource
) -> None:
    """A new decision makes any task still waiting on the submission moot; a `review` decision
    opens the task that puts the submission in front of a reviewer.

    Decisions own this step, and write the task through the review room's repository, because
    every path to `review` passes here; the review room, which records reviewers' decisions
    through `record_decision`, is the one that imports this module, never the other way round.
    A reviewer's own task is marked decided before this runs, so it is not cancelled here.
    """
    for waiting in review_tasks.lock_active_tasks(session, submission.id):
        waiting.status = TaskStatus.cancelled
        waiting.lease_expires_at = None
        record_event(
            session,
            submission.tenant_id,
            submission.id,
            "review_cancelled",
            "system",
            {"task": str(waiting.id), "kind": waiting.kind.value, "superseded_by": source.value},
        )
    session.flush()
    if decision.action is not Action.review:
        return
    policy = document_for_version(session, submission.policy_version_id)
    review_tasks.add_task(
        session,
        ReviewTask(
            tenant_id=submission.tenant_id,
            submission_id=submission.id,
            kind=TaskKind.review,
            status=TaskStatus.open,
            priority=task_priority(TaskKind.review, decision.categories),
            reason=decision.reason,
            source=source.value,
            policy_version_id=submission.policy_version_id,
            categories=decision.categories,
            max_severity=max_severity(decision.categories),
            decision_id=decision.id,
        ),
        due_in=timedelta(minutes=policy.review_sla_minutes),
    )


def finish_without_judging(
    session: Session, submission: Submission, reason: ReviewReason, detail: str
) -> Decision:
    """The pipeline could not judge: the submission goes to a person, never to allow."""
    return record_decision(
        session, submission, failure(reason), source=DecisionSource.system, detail=detail
    )
