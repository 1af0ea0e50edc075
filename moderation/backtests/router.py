"""Backtests: try a policy version on past submissions before it goes live (admins)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from moderation.backtests import service
from moderation.backtests.schemas import BacktestCreate, BacktestRead, BacktestSummary
from moderation.core.pagination import Page
from moderation.core.problems import problem_responses
from moderation.database import DbSession
from moderation.tenants.dependencies import Admin

router = APIRouter(prefix="/v1/backtests", tags=["backtests"])


@router.post(
    "",
    response_model=BacktestRead,
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(401, 403, 422),
)
def start_backtest(backtest: BacktestCreate, session: DbSession, principal: Admin) -> BacktestRead:
    """Judge the chosen past submissions again with `draft_version`, in the background.

    The sample is fixed now; workers judge it through the same model path as live traffic, on
    the stored normalized images, at lower priority than live work. Nothing live changes: no
    decision, verdict, callback or audit event of a submission is written. Follow the progress
    with `GET /v1/backtests/{id}`.
    """
    return service.start_backtest(
        session, principal.tenant_id, backtest, requested_by=principal.actor
    )


@router.get("", response_model=Page[BacktestSummary], responses=problem_responses(401, 403, 422))
def list_backtests(
    session: DbSession,
    principal: Admin,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[BacktestSummary]:
    """This tenant's backtests, newest first, with their progress."""
    return service.list_backtests(session, principal.tenant_id, limit=limit, cursor=cursor)


@router.get(
    "/{backtest_id}", response_model=BacktestRead, responses=problem_responses(401, 403, 404)
)
def get_backtest(backtest_id: uuid.UUID, session: DbSession, principal: Admin) -> BacktestRead:
    """Progress, and once done, the comparison: the flips against the stored live decisions
    (with links to the items), precision and recall of both versions against reviewers, and
    the tokens spent."""
    return service.read_backtest(session, principal.tenant_id, backtest_id)
