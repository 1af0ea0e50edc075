"""A review shift: read the queue, claim tasks under a lease, decide, release, escalate, appeal.

Every write re-reads its task under a row lock and checks the caller's lease again, so a lease
that ran out between claim and decision can never let two reviewers decide the same task.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import AwareDatetime, Field, TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.config import Settings
from moderation.core.errors import Conflict, Forbidden, NotFound, ValidationFailed
from moderation.core.fields import INT4_MAX
from moderation.core.pagination import decode_position, encode_position
from moderation.decisions.models import Action, Decision, DecisionSource
from moderation.decisions.rules import Outcome
from moderation.decisions.service import record_decision
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import document_for_version
from moderation.review import repository
from moderation.review.models import (
    ReviewTask,
    TaskKind,
    TaskStatus,
    max_severity,
    task_priority,
)
from moderation.review.repository import QueueFilter, QueuePosition
from moderation.review.schemas import (
    AppealCreate,
    AppealRead,
    AppealView,
    ClaimRequest,
    ClaimResult,
    EscalateRequest,
    ModelVerdictView,
    RenewRequest,
    ReviewDecisionCreate,
    ReviewImage,
    ReviewOutcome,
    ReviewPolicy,
    ReviewPolicyCategory,
    ReviewQueuePage,
    ReviewSubmission,
    ReviewTaskRead,
    TaskState,
)
from moderation.submissions.models import Submission, SubmissionImage, Verdict
from moderation.submissions.schemas import CategoryRead, DecisionRead, PolicyRef
from moderation.submissions.service import violations_with_evidence
from moderation.tenants.models import Role
from moderation.tenants.service import Principal


@dataclass(frozen=True)
class QueueQuery:
    """The reviewer's filters, as the API received them."""

    kind: TaskKind | None = None
    policy: str | None = None
    category: str | None = None
    reason: str | None = None
    source: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None
    sla_breached: bool | None = None
    include_redrive: bool = False


def _is_admin(principal: Principal) -> bool:
    return principal.role is Role.admin


def _reviewer_name(principal: Principal) -> str:
    return principal.name or principal.actor


# Reading the queue


def read_queue(
    session: Session, principal: Principal, query: QueueQuery, *, limit: int, cursor: str | None
) -> ReviewQueuePage:
    """Waiting tasks, most urgent first; escalations only for admins, who alone decide them."""
    filters = QueueFilter(
        include_escalations=_is_admin(principal),
        kind=query.kind,
        policy=query.policy,
        category=query.category,
        reason=query.reason,
        source=query.source,
        older_than=query.older_than,
        newer_than=query.newer_than,
        sla_breached=query.sla_breached,
        include_redrive=query.include_redrive,
    )
    after = _decode_queue_cursor(cursor) if cursor else None
    rows = repository.queue_page(
        session, principal.tenant_id, filters, limit=limit + 1, after=after
    )
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_position(last.priority, last.created_at.isoformat(), str(last.id))
    total, breached = repository.queue_counts(session, principal.tenant_id, filters)
    return ReviewQueuePage(
        items=present_tasks(session, page),
        next_cursor=next_cursor,
        total=total,
        sla_breached=breached,
    )


# The priority is compared with an `integer` column: beyond 32 bits PostgreSQL raises.
_QUEUE_POSITION = TypeAdapter(
    tuple[Annotated[int, Field(ge=-INT4_MAX - 1, le=INT4_MAX)], AwareDatetime, uuid.UUID]
)


def _decode_queue_cursor(cursor: str) -> QueuePosition:
    try:
        priority, created_at, task_id = _QUEUE_POSITION.validate_python(decode_position(cursor, 3))
        return QueuePosition(priority=priority, created_at=created_at, task_id=task_id)
    except ValidationError as exc:
        raise ValidationFailed(
            "cursor is not one this API returned",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from exc


def read_task(session: Session, principal: Principal, task_id: uuid.UUID) -> ReviewTaskRead:
    task = repository.get_task(session, principal.tenant_id, task_id)
    if task is None:
        raise NotFound(f"review task {task_id} does not exist")
    _check_may_handle(principal, task)
    [view] = present_tasks(session, [task])
    return view


def _check_may_handle(principal: Principal, task: ReviewTask) -> None:
    if task.kind is TaskKind.escalation and not _is_admin(principal):
        raise Forbidden("escalated tasks are for admins to decide")


# Claiming and holding


def _lease(settings: Settings, requested: int | None) -> timedelta:
    seconds = settings.review_lease_s if requested is None else requested
    if seconds > settings.review_lease_max_s:
        raise ValidationFailed(
            f"a lease may last at most {settings.review_lease_max_s} seconds",
            errors=[
                {
                    "loc": ["body", "lease_seconds"],
                    "msg": f"at most {settings.review_lease_max_s}",
                    "type": "less_than_equal",
                }
            ],
        )
    return timedelta(seconds=seconds)


def claim_tasks(
    session: Session, principal: Principal, request: ClaimRequest, settings: Settings
) -> ClaimResult:
    """Lease up to `limit` of the most urgent waiting tasks to the caller.

    A task whose previous lease ran out is taken like an open one; the lapse is recorded then,
    when it is first noticed.
    """
    if request.kind is TaskKind.escalation and not _is_admin(principal):
        raise Forbidden("escalated tasks are for admins to decide")
    lease = _lease(settings, request.lease_seconds)
    tasks, now = repository.claimable(
        session,
        principal.tenant_id,
        limit=request.limit,
        include_escalations=_is_admin(principal),
        kind=request.kind,
        reviewer_key_id=principal.key_id,
        reviewer_name=principal.name,
        include_redrive=request.include_redrive,
    )
    for task in tasks:
        if task.status is TaskStatus.claimed:
            _record_expiry(session, task)
        task.status = TaskStatus.claimed
        task.claimed_by_key_id = principal.key_id
        task.claimed_by_name = _reviewer_name(principal)
        task.claimed_at = now
        task.lease_expires_at = now + lease
        _record(session, task, "claimed", principal.actor, {"lease_expires_at": now + lease})
    session.flush()
    return ClaimResult(items=present_tasks(session, tasks, now=now))


def _record_expiry(session: Session, task: ReviewTask) -> None:
    _record(
        session,
        task,
        "expired",
        "system",
        {
            "claimed_by": task.claimed_by_name,
            "claimed_at": task.claimed_at,
            "lease_expired_at": task.lease_expires_at,
        },
    )


def _record(
    session: Session, task: ReviewTask, event: str, actor: str, data: dict[str, Any]
) -> None:
    payload = {"task": str(task.id), "kind": task.kind.value}
    payload |= {
        key: value.isoformat() if isinstance(value, datetime) else value
        for key, value in data.items()
    }
    record_event(session, task.tenant_id, task.submission_id, event, actor, payload)


def _locked_task(
    session: Session, principal: Principal, task_id: uuid.UUID
) -> tuple[ReviewTask, bool]:
    locked = repository.lock_task(session, principal.tenant_id, task_id)
    if locked is None:
        raise NotFound(f"review task {task_id} does not exist")
    task, lease_live = locked
    _check_may_handle(principal, task)
    return task, lease_live


def _holds_lease(principal: Principal, task: ReviewTask, lease_live: bool) -> bool:
    return (
        task.status is TaskStatus.claimed
        and task.claimed_by_key_id == principal.key_id
        and lease_live
    )


def _require_lease(principal: Principal, task: ReviewTask, lease_live: bool) -> None:
    if _holds_lease(principal, task, lease_live):
        return
    if task.status not in (TaskStatus.open, TaskStatus.claimed):
        raise Conflict(f"review task {task.id} is {task.status.value}")
    raise Conflict(f"you do not hold a live lease on review task {task.id}; claim it first")


def renew_lease(
    session: Session,
    principal: Principal,
    task_id: uuid.UUID,
    request: RenewRequest,
    settings: Settings,
) -> TaskState:
    task, lease_live = _locked_task(session, principal, task_id)
    _require_lease(principal, task, lease_live)
    task.lease_expires_at = repository.database_now(session) + _lease(
        settings, request.lease_seconds
    )
    session.flush()
    return _state(task)


def release_task(session: Session, principal: Principal, task_id: uuid.UUID) -> TaskState:
    """Give a task back. An admin may release anyone's claim, e.g. at the end of a shift."""
    task, _ = _locked_task(session, principal, task_id)
    mine = task.status is TaskStatus.claimed and task.claimed_by_key_id == principal.key_id
    if not mine and not (task.status is TaskStatus.claimed and _is_admin(principal)):
        raise Conflict(f"review task {task_id} is not claimed by you")
    _record(session, task, "released", principal.actor, {"claimed_by": task.claimed_by_name})
    _return_to_queue(task)
    session.flush()
    return _state(task)


def _return_to_queue(task: ReviewTask) -> None:
    task.status = TaskStatus.open
    task.claimed_by_key_id = None
    task.claimed_by_name = None
    task.claimed_at = None
    task.lease_expires_at = None


def escalate_task(
    session: Session, principal: Principal, task_id: uuid.UUID, request: EscalateRequest
) -> TaskState:
    """Hand the task to the admins: a new escalation task carries it on, with the same due time
    and, for an appeal, the same rule about who may not decide it."""
    task, lease_live = _locked_task(session, principal, task_id)
    if task.kind is TaskKind.escalation:
        raise Conflict(f"review task {task_id} is already with the admins")
    _require_lease(principal, task, lease_live)
    task.status = TaskStatus.escalated
    task.lease_expires_at = None
    session.flush()  # the escalation takes over the one waiting place the submission has
    escalation = repository.add_task(
        session,
        ReviewTask(
            tenant_id=task.tenant_id,
            submission_id=task.submission_id,
            kind=TaskKind.escalation,
            status=TaskStatus.open,
            priority=task_priority(TaskKind.escalation, task.categories),
            reason=task.reason,
            source=task.source,
            policy_version_id=task.policy_version_id,
            categories=task.categories,
            max_severity=task.max_severity,
            due_at=task.due_at,
            notes=request.notes,
            decision_id=task.decision_id,
            parent_id=task.id,
            excluded_key_id=task.excluded_key_id,
            excluded_name=task.excluded_name,
        ),
    )
    _record(
        session,
        task,
        "escalated",
        principal.actor,
        {"escalation": str(escalation.id), "notes": request.notes},
    )
    return _state(escalation)


# Deciding


def decide_task(
    session: Session, principal: Principal, task_id: uuid.UUID, request: ReviewDecisionCreate
) -> ReviewOutcome:
    """The reviewer's decision is final: it supersedes the automatic one, which stays in the
    history, and records who decided, under which policy version, and how long it took."""
    task, lease_live = _locked_task(session, principal, task_id)
    _check_not_excluded(principal, task)
    _require_lease(principal, task, lease_live)
    policy = document_for_version(session, task.policy_version_id)
    categories = _checked_categories(request, policy)
    submission = repository.get_submission(session, task.submission_id)
    assert submission is not None  # a task is deleted with its submission
    now = repository.database_now(session)
    assert task.claimed_at is not None
    decision_ms = max(0, round((now - task.claimed_at).total_seconds() * 1000))
    task.status = TaskStatus.decided
    task.decided_at = now
    task.decision_ms = decision_ms
    task.lease_expires_at = None
    session.flush()  # decided before the decision is recorded, so it is not cancelled as moot
    source = DecisionSource.appeal if _is_appeal(session, task) else DecisionSource.reviewer
    decision = record_decision(
        session,
        submission,
        Outcome(request.outcome_action, categories=categories),
        source=source,
        detail=request.notes,
        actor=principal.actor,
    )
    task.result_decision_id = decision.id
    _record(
        session,
        task,
        "reviewed",
        principal.actor,
        {
            "reviewer": _reviewer_name(principal),
            "action": request.action,
            "source": source.value,
            "categories": categories,
            "policy": policy.slug,
            "policy_version": policy.version,
            "claim_to_decision_ms": decision_ms,
        },
    )
    session.flush()
    return ReviewOutcome(
        task=_state(task),
        decision=_present_decision(decision),
        claim_to_decision_ms=decision_ms,
        policy=PolicyRef(slug=policy.slug, version=policy.version),
    )


def _check_not_excluded(principal: Principal, task: ReviewTask) -> None:
    same_key = task.excluded_key_id is not None and task.excluded_key_id == principal.key_id
    same_name = task.excluded_name is not None and task.excluded_name == principal.name
    if same_key or same_name:
        raise Forbidden(
            "you made the decision under appeal; another reviewer must decide the appeal"
        )


def _is_appeal(session: Session, task: ReviewTask) -> bool:
    """Appeals stay appeals when escalated: the admin's answer is the appeal's outcome."""
    if task.kind is TaskKind.appeal:
        return True
    if task.kind is TaskKind.escalation and task.parent_id is not None:
        parent = repository.get_by_id(session, task.parent_id)
        return parent is not None and parent.kind is TaskKind.appeal
    return False


def _checked_categories(
    request: ReviewDecisionCreate, policy: PolicyDocument
) -> list[dict[str, Any]]:
    unknown = [
        {
            "loc": ["body", "categories", index, "category"],
            "msg": f"not a category of {policy.slug} version {policy.version}",
            "type": "value_error",
        }
        for index, judgement in enumerate(request.categories)
        if judgement.category not in policy.category_ids
    ]
    if unknown:
        known = ", ".join(sorted(policy.category_ids))
        raise ValidationFailed(
            f"categories must be among the policy version's: {known}", errors=unknown
        )
    return [
        {"category": judgement.category, "severity": judgement.severity}
        for judgement in sorted(request.categories, key=lambda j: (-j.severity, j.category))
    ]


# Appeals


def appeal_submission(
    session: Session,
    principal: Principal,
    submission_id: uuid.UUID,
    request: AppealCreate,
) -> AppealRead:
    """The uploader disputes a final decision: the appeal goes to the front of the queue, for
    a reviewer other than the one who made the decision."""
    submission = repository.lock_submission(session, principal.tenant_id, submission_id)
    if submission is None:
        raise NotFound(f"submission {submission_id} does not exist")
    decision = repository.latest_decision(session, submission.id)
    if decision is None or decision.action is Action.review:
        raise Conflict(f"submission {submission_id} has no final decision to appeal yet")
    for waiting in repository.lock_active_tasks(session, submission.id):
        if waiting.kind is TaskKind.review:
            raise Conflict(f"submission {submission_id} is already waiting for a reviewer")
        raise Conflict(f"submission {submission_id} already has an open appeal")
    decider = repository.task_that_made(session, decision.id)
    policy = document_for_version(session, submission.policy_version_id)
    categories = list(decision.categories)
    task = repository.add_task(
        session,
        ReviewTask(
            tenant_id=submission.tenant_id,
            submission_id=submission.id,
            kind=TaskKind.appeal,
            status=TaskStatus.open,
            priority=task_priority(TaskKind.appeal, categories),
            reason=None,
            source=decision.source.value,
            policy_version_id=submission.policy_version_id,
            categories=categories,
            max_severity=max_severity(categories),
            notes=request.reason,
            decision_id=decision.id,
            excluded_key_id=decider.claimed_by_key_id if decider else None,
            excluded_name=decider.claimed_by_name if decider else None,
        ),
        due_in=timedelta(minutes=policy.review_sla_minutes),
    )
    _record(
        session,
        task,
        "appealed",
        principal.actor,
        {"reason": request.reason, "decision_source": decision.source.value},
    )
    return AppealRead(
        id=task.id,
        submission_id=submission.id,
        status=task.status,
        reason=request.reason,
        due_at=task.due_at,
        created_at=task.created_at,
    )


# Presenting


def _state(task: ReviewTask) -> TaskState:
    return TaskState(
        id=task.id,
        kind=task.kind,
        status=task.status,
        claimed_by=task.claimed_by_name,
        lease_expires_at=task.lease_expires_at,
        due_at=task.due_at,
    )


def present_tasks(
    session: Session, tasks: list[ReviewTask], *, now: datetime | None = None
) -> list[ReviewTaskRead]:
    """Tasks with their submission, images, verdicts, policy, decisions and appeals, read in a
    fixed number of queries whatever the page size."""
    if not tasks:
        return []
    submission_ids = list({task.submission_id for task in tasks})
    submissions = repository.submissions_by_id(session, submission_ids)
    images = repository.images_by_submission(session, submission_ids)
    verdicts = repository.verdicts_by_submission(session, submission_ids)
    decisions = repository.decisions_by_submission(session, submission_ids)
    history = repository.tasks_by_submission(session, submission_ids)
    slugs = repository.policy_slugs(session, list({task.policy_version_id for task in tasks}))
    # A page usually shares one or two policy versions: present each once.
    policies = {
        version_id: _present_policy(document_for_version(session, version_id), slug)
        for version_id, slug in slugs.items()
    }
    now = now or repository.database_now(session)
    return [
        _present_task(
            task,
            submissions[task.submission_id],
            images.get(task.submission_id, []),
            [
                v
                for v in verdicts.get(task.submission_id, [])
                if v.policy_version_id == task.policy_version_id
            ],
            decisions.get(task.submission_id, []),
            history.get(task.submission_id, []),
            policies[task.policy_version_id],
            now,
        )
        for task in tasks
    ]


def _present_task(
    task: ReviewTask,
    submission: Submission,
    images: list[SubmissionImage],
    verdicts: list[Verdict],
    decisions: list[Decision],
    history: list[ReviewTask],
    policy: ReviewPolicy,
    now: datetime,
) -> ReviewTaskRead:
    lapsed = (
        task.status is TaskStatus.claimed
        and task.lease_expires_at is not None
        and task.lease_expires_at <= now
    )
    held = task.status is TaskStatus.claimed and not lapsed
    return ReviewTaskRead(
        id=task.id,
        kind=task.kind,
        status=TaskStatus.open if lapsed else task.status,
        priority=task.priority,
        reason=task.reason,
        source=task.source,
        categories=[CategoryRead.model_validate(c) for c in task.categories],
        notes=task.notes,
        escalated_from=task.parent_id,
        due_at=task.due_at,
        sla_breached=task.due_at < (task.decided_at or now),
        created_at=task.created_at,
        claimed_by=task.claimed_by_name if held or task.status is TaskStatus.decided else None,
        claimed_at=task.claimed_at if held else None,
        lease_expires_at=task.lease_expires_at if held else None,
        submission=ReviewSubmission(
            id=submission.id,
            external_id=submission.external_id,
            status=submission.status,
            action=submission.action,
            text=submission.text,
            metadata=submission.metadata_,
            images=[_present_image(submission.id, image) for image in images],
            created_at=submission.created_at,
        ),
        policy=policy,
        verdicts=[_present_verdict(verdict) for verdict in verdicts],
        decisions=[_present_decision(decision) for decision in decisions],
        appeals=[
            AppealView(
                id=appeal.id,
                status=appeal.status,
                reason=appeal.notes,
                created_at=appeal.created_at,
                decided_at=appeal.decided_at,
            )
            for appeal in history
            if appeal.kind is TaskKind.appeal
        ],
    )


def _present_image(submission_id: uuid.UUID, image: SubmissionImage) -> ReviewImage:
    return ReviewImage(
        position=image.position,
        href=f"/v1/submissions/{submission_id}/images/{image.position}",
        width=image.width,
        height=image.height,
        mime=image.mime,
        sha256=image.sha256,
        error=image.error,
    )


def _present_policy(policy: PolicyDocument, slug: str) -> ReviewPolicy:
    return ReviewPolicy(
        slug=slug,
        version=policy.version,
        title=policy.title,
        min_confidence=policy.min_confidence,
        review_sla_minutes=policy.review_sla_minutes,
        severity_scale=dict(policy.severity_scale),
        categories=[
            ReviewPolicyCategory(
                id=category.id,
                name=category.name,
                definition=category.definition,
                allowed=list(category.allowed),
                block_at=category.block_at,
                restrict_at=category.restrict_at,
            )
            for category in policy.categories
        ],
    )


def _present_verdict(verdict: Verdict) -> ModelVerdictView:
    parsed = verdict.parsed or {}
    return ModelVerdictView(
        model=verdict.model,
        rating=parsed.get("rating"),
        confidence=parsed.get("confidence"),
        rationale=parsed.get("rationale"),
        violations=violations_with_evidence(verdict),
        rating_probability=verdict.rating_probability,
        error=verdict.error,
        reused=verdict.reused_from_id is not None,
        created_at=verdict.created_at,
    )


def _present_decision(decision: Decision) -> DecisionRead:
    return DecisionRead.model_validate(
        {
            "action": decision.action,
            "source": decision.source,
            "reason": decision.reason,
            "detail": decision.detail,
            "categories": decision.categories,
            "actor": decision.actor,
            "decided_at": decision.created_at,
        }
    )
