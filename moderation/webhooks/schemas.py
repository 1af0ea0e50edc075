from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from moderation.webhooks.models import AttemptOutcome, DeliveryStatus, EventType


class AttemptRead(BaseModel):
    number: int
    outcome: AttemptOutcome
    status_code: int | None = Field(description="the receiver's HTTP status, if it answered")
    latency_ms: int
    error: str | None
    response_snippet: str | None = Field(description="the first bytes of the receiver's answer")
    attempted_at: datetime


class EndpointRead(BaseModel):
    """A receiver URL callbacks go to, and whether it asked to stop receiving them."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "5f0c2d4e-9b1a-4c7e-8d3f-1a2b3c4d5e6f",
                    "url": "https://uploads.example.com/hooks/moderation",
                    "disabled_at": None,
                    "disabled_reason": None,
                }
            ]
        }
    }

    id: uuid.UUID
    url: str
    disabled_at: datetime | None = Field(
        description="set when the receiver answered 410 Gone; nothing is sent there since"
    )
    disabled_reason: str | None


class DeliveryRead(BaseModel):
    """One event for one receiver: its schedule and every attempt so far."""

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "0b5a3c1e-6a43-4c1b-9a35-2f5d8f3a1b77",
                    "webhook_id": "msg_0b5a3c1e6a434c1b9a352f5d8f3a1b77",
                    "event_type": "moderation.decided",
                    "submission_id": "7d0c6f4e-0000-4000-8000-000000000000",
                    "sequence": 1,
                    "url": "https://uploads.example.com/hooks/moderation",
                    "status": "pending",
                    "attempts": [
                        {
                            "number": 1,
                            "outcome": "failed",
                            "status_code": 503,
                            "latency_ms": 41,
                            "error": "HTTP 503",
                            "response_snippet": "upstream unavailable",
                            "attempted_at": "2026-11-24T10:00:00Z",
                        }
                    ],
                    "next_attempt_at": "2026-11-24T10:00:05Z",
                    "delivered_at": None,
                    "last_error": "HTTP 503",
                    "endpoint_disabled_at": None,
                    "created_at": "2026-11-24T10:00:00Z",
                }
            ]
        }
    }

    id: uuid.UUID
    webhook_id: str = Field(description="the `webhook-id` header: the same on every attempt")
    event_type: EventType
    submission_id: uuid.UUID
    sequence: int = Field(description="per submission, from 1; a higher one supersedes")
    url: str
    status: DeliveryStatus
    attempts: list[AttemptRead]
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    endpoint_disabled_at: datetime | None
    created_at: datetime
