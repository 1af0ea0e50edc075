"""The relay's sweep: re-send work that the broker or a worker lost."""

from __future__ import annotations

from datetime import timedelta

from moderation.audit.service import record_event
from moderation.core.time import utcnow
from moderation.database import session_scope
from moderation.decisions.models import ReviewReason
from moderation.decisions.service import finish_without_judging
from moderation.pipeline.runtime import PipelineRuntime
from moderation.queue import MODERATE_SUBMISSION, enqueue_after_commit
from moderation.submissions import repository
from moderation.submissions.models import SubmissionStatus


def requeue_stalled_submissions(runtime: PipelineRuntime, *, limit: int = 500) -> int:
    """Queued too long (a lost message) or processing past its lease (a lost worker).

    Returns how many submissions were re-sent or given up on.
    """
    settings = runtime.settings
    with session_scope(runtime.sessions) as session:
        if not repository.try_relay_lock(session):
            return 0
        stalled = repository.stalled(
            session, grace=timedelta(seconds=settings.relay_grace_s), limit=limit
        )
        for submission in stalled:
            lost_worker = submission.status is SubmissionStatus.processing
            unfinished = submission.attempts - submission.redrives
            if lost_worker and unfinished >= settings.max_attempts:
                finish_without_judging(
                    session,
                    submission,
                    ReviewReason.processing_failed,
                    f"{unfinished} attempts ended without a result",
                )
                continue
            submission.status = SubmissionStatus.queued
            submission.queued_at = utcnow()
            submission.lease_token = None
            submission.lease_expires_at = None
            record_event(
                session,
                submission.tenant_id,
                submission.id,
                "requeued",
                "relay",
                {"why": "lease_expired" if lost_worker else "not_picked_up"},
            )
            enqueue_after_commit(session, MODERATE_SUBMISSION, str(submission.id))
        return len(stalled)
