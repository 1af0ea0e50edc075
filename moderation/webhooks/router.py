"""The callback log: every delivery and attempt, and redelivery, for a tenant's admins."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from moderation.config import Settings
from moderation.core.pagination import CursorParam, Page
from moderation.core.problems import problem_responses
from moderation.database import DbSession
from moderation.tenants.dependencies import Admin
from moderation.webhooks import service
from moderation.webhooks.models import DeliveryStatus
from moderation.webhooks.schemas import DeliveryRead, EndpointRead

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get(
    "/deliveries",
    response_model=Page[DeliveryRead],
    responses=problem_responses(401, 403, 422),
)
def list_deliveries(
    session: DbSession,
    principal: Admin,
    submission: Annotated[
        uuid.UUID | None, Query(description="only the callbacks of this submission")
    ] = None,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorParam = None,
) -> Page[DeliveryRead]:
    """Every callback, newest first, with each attempt's status, latency and error."""
    return service.list_deliveries(
        session, principal, submission_id=submission, status=status, limit=limit, cursor=cursor
    )


@router.post(
    "/deliveries/{delivery_id}/redeliver",
    response_model=DeliveryRead,
    status_code=202,
    responses=problem_responses(401, 403, 404, 409),
)
def redeliver(
    delivery_id: uuid.UUID, request: Request, session: DbSession, principal: Admin
) -> DeliveryRead:
    """Send the event again now, with the same webhook-id and a fresh retry schedule.

    Re-enables the endpoint if it had answered 410 Gone.
    """
    settings: Settings = request.app.state.settings
    return service.redeliver(session, principal, delivery_id, settings)


@router.get("/endpoints", response_model=list[EndpointRead], responses=problem_responses(401, 403))
def list_endpoints(session: DbSession, principal: Admin) -> list[EndpointRead]:
    """The tenant's receiver URLs, and which of them answered 410 Gone."""
    return service.list_endpoints(session, principal)
