"""Re-drive: judge again, by itself, what an outage sent to review.

When the model server or an image host is down, the submission cannot be judged and goes to
review (`model_unavailable`, or `fetch_failed` for a timeout, a refused connection or a 5xx).
A reviewer could not do better than the model once it is back, and one outage would otherwise
fill the review queue. So such a submission keeps its review decision (nothing is allowed that
was not judged) and is scheduled to be judged again with exponential backoff and jitter, for
`redrive_window_s` after its first failure. Meanwhile review queues hide it (see
`moderation.submissions.repository.awaiting_redrive`). If the window closes first, it stays in
review like any other.

The schedule lives on the submission row (`redrive_at`, `redrive_until`, `redrives`) and the
relay sweeps it, so a re-drive survives any restart. Every step is an audit event:
`redrive_scheduled`, `redriven`, and `redrive_ended` when the window closes.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.config import Settings
from moderation.core.time import utcnow
from moderation.database import session_scope
from moderation.decisions.models import ReviewReason
from moderation.pipeline.runtime import PipelineRuntime
from moderation.queue import MODERATE_SUBMISSION, enqueue_after_commit
from moderation.submissions import repository
from moderation.submissions.models import Submission, SubmissionStatus

REDRIVE_ACTOR = "relay"


def redrive_delay_s(redrives: int, settings: Settings) -> float:
    """Exponential from the base delay, capped; ±20 % jitter keeps an outage's items apart."""
    exponential = settings.redrive_base_delay_s * 2.0 ** min(redrives, 30)
    return min(settings.redrive_max_delay_s, exponential) * random.uniform(0.8, 1.2)  # noqa: S311


def schedule_redrive(
    session: Session,
    submission: Submission,
    reason: ReviewReason,
    settings: Settings,
    *,
    window_until: datetime | None,
) -> bool:
    """After a retryable failure was recorded: schedule the next re-drive if the window allows.

    `window_until` is the window of an earlier failure of the same outage (None for the first
    one). Returns whether a re-drive was scheduled.
    """
    if settings.redrive_window_s <= 0:
        return False
    now = utcnow()
    until = window_until or now + timedelta(seconds=settings.redrive_window_s)
    at = now + timedelta(seconds=redrive_delay_s(submission.redrives, settings))
    if at > until:
        record_event(
            session,
            submission.tenant_id,
            submission.id,
            "redrive_ended",
            REDRIVE_ACTOR,
            {"reason": reason.value, "redrives": submission.redrives, "why": "window_closed"},
        )
        return False
    submission.redrive_at = at
    submission.redrive_until = until
    record_event(
        session,
        submission.tenant_id,
        submission.id,
        "redrive_scheduled",
        REDRIVE_ACTOR,
        {
            "reason": reason.value,
            "at": at.isoformat(),
            "until": until.isoformat(),
            "redrive": submission.redrives + 1,
        },
    )
    return True


def redrive_due_submissions(runtime: PipelineRuntime, *, limit: int = 200) -> int:
    """Send every submission whose re-drive is due back to the workers; returns how many.

    Rows are taken with SKIP LOCKED, so several relays sweep side by side without taking the
    same row, and a reviewer's decision in flight (which locks the row) is never overtaken.
    """
    with session_scope(runtime.sessions) as session:
        due = repository.due_for_redrive(session, limit=limit)
        for submission in due:
            submission.status = SubmissionStatus.queued
            submission.queued_at = utcnow()
            submission.redrive_at = None
            submission.redrives += 1
            submission.lease_token = None
            submission.lease_expires_at = None
            record_event(
                session,
                submission.tenant_id,
                submission.id,
                "redriven",
                REDRIVE_ACTOR,
                {"redrive": submission.redrives},
            )
            enqueue_after_commit(session, MODERATE_SUBMISSION, str(submission.id))
        return len(due)
