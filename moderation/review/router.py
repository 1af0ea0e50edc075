"""The reviewer's routes, and the uploader's appeal (which lives under its submission)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status

from moderation.config import Settings
from moderation.core.fields import Duration, Text
from moderation.core.pagination import CursorParam
from moderation.core.problems import problem_responses
from moderation.database import DbSession
from moderation.decisions.models import DecisionSource, ReviewReason
from moderation.policies.schemas import CategoryId
from moderation.review import service
from moderation.review.models import TaskKind
from moderation.review.schemas import (
    AppealCreate,
    AppealRead,
    ClaimRequest,
    ClaimResult,
    EscalateRequest,
    RenewRequest,
    ReviewDecisionCreate,
    ReviewOutcome,
    ReviewQueuePage,
    ReviewTaskRead,
    TaskState,
)
from moderation.tenants.dependencies import Ingest, Reviewer

router = APIRouter(prefix="/v1/review", tags=["review"])
appeals_router = APIRouter(prefix="/v1/submissions", tags=["review"])

_TASK_ERRORS = problem_responses(401, 403, 404, 409, 422)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@router.get("/queue", response_model=ReviewQueuePage, responses=problem_responses(401, 403, 422))
def read_queue(
    session: DbSession,
    principal: Reviewer,
    kind: TaskKind | None = None,
    policy: Annotated[Text | None, Query(max_length=64, description="policy slug")] = None,
    category: Annotated[CategoryId | None, Query(description="a category the task names")] = None,
    reason: Annotated[ReviewReason | None, Query(description="why it went to review")] = None,
    source: Annotated[
        DecisionSource | None, Query(description="what decided it should go to review")
    ] = None,
    older_than: Annotated[
        Duration | None, Query(description="waiting at least this long: seconds or ISO 8601")
    ] = None,
    newer_than: Annotated[
        Duration | None, Query(description="waiting at most this long: seconds or ISO 8601")
    ] = None,
    sla_breached: Annotated[bool | None, Query(description="only late, or only on-time")] = None,
    include_redrive: Annotated[
        bool,
        Query(
            description="also list tasks of submissions an outage sent here, which are judged "
            "again automatically while their re-drive window lasts"
        ),
    ] = False,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: CursorParam = None,
) -> ReviewQueuePage:
    """Waiting tasks, most urgent first: appeals, escalations (admins only), child safety,
    severity, then the oldest. Each task carries what a reviewer needs to decide it."""
    query = service.QueueQuery(
        kind=kind,
        policy=policy,
        category=category,
        reason=reason.value if reason else None,
        source=source.value if source else None,
        older_than=older_than,
        newer_than=newer_than,
        sla_breached=sla_breached,
        include_redrive=include_redrive,
    )
    return service.read_queue(session, principal, query, limit=limit, cursor=cursor)


@router.post("/claim", response_model=ClaimResult, responses=problem_responses(401, 403, 422))
def claim_tasks(
    request: Request, body: ClaimRequest, session: DbSession, principal: Reviewer
) -> ClaimResult:
    """Lease the most urgent waiting tasks to the caller; nobody else can take them until the
    lease runs out or they are released. An empty list means nothing is waiting."""
    return service.claim_tasks(session, principal, body, _settings(request))


@router.get(
    "/tasks/{task_id}",
    response_model=ReviewTaskRead,
    responses=problem_responses(401, 403, 404, 422),
)
def read_task(task_id: uuid.UUID, session: DbSession, principal: Reviewer) -> ReviewTaskRead:
    return service.read_task(session, principal, task_id)


@router.post("/tasks/{task_id}/renew", response_model=TaskState, responses=_TASK_ERRORS)
def renew_lease(
    request: Request,
    task_id: uuid.UUID,
    session: DbSession,
    principal: Reviewer,
    body: Annotated[RenewRequest | None, Body()] = None,
) -> TaskState:
    """Extend the caller's live lease; a lease that already ran out must be claimed again."""
    return service.renew_lease(
        session, principal, task_id, body or RenewRequest(), _settings(request)
    )


@router.post("/tasks/{task_id}/release", response_model=TaskState, responses=_TASK_ERRORS)
def release_task(task_id: uuid.UUID, session: DbSession, principal: Reviewer) -> TaskState:
    """Give a claimed task back to the queue (admins may release anyone's)."""
    return service.release_task(session, principal, task_id)


@router.post(
    "/tasks/{task_id}/escalate",
    response_model=TaskState,
    status_code=status.HTTP_201_CREATED,
    responses=_TASK_ERRORS,
)
def escalate_task(
    task_id: uuid.UUID, body: EscalateRequest, session: DbSession, principal: Reviewer
) -> TaskState:
    """Send the task to the admins' escalation queue; the answer is the new escalation task."""
    return service.escalate_task(session, principal, task_id, body)


@router.post("/tasks/{task_id}/decision", response_model=ReviewOutcome, responses=_TASK_ERRORS)
def decide_task(
    task_id: uuid.UUID, body: ReviewDecisionCreate, session: DbSession, principal: Reviewer
) -> ReviewOutcome:
    """Decide a task the caller holds a live lease on; the decision is final and replaces the
    automatic one. 409 without a live lease, 403 on an appeal of one's own decision."""
    return service.decide_task(session, principal, task_id, body)


@appeals_router.post(
    "/{submission_id}/appeals",
    response_model=AppealRead,
    status_code=status.HTTP_201_CREATED,
    responses=_TASK_ERRORS,
)
def appeal_submission(
    submission_id: uuid.UUID,
    body: AppealCreate,
    response: Response,
    session: DbSession,
    principal: Ingest,
) -> AppealRead:
    """Appeal a final decision on the uploader's behalf. 409 when nothing is decided yet or an
    appeal is already open. The appeal is answered by a reviewer other than the one who
    decided before, with a decision of source `appeal`."""
    appeal = service.appeal_submission(session, principal, submission_id, body)
    response.headers["Location"] = f"/v1/submissions/{submission_id}"
    return appeal
