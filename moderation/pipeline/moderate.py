"""The worker's side of a submission: claim it, judge it, store the outcome.

Every path ends in a stored decision. A run that cannot judge the content ends in `review` with
a machine-readable reason, never in `allow`, and a run that dies is picked up by the relay.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.database import session_scope
from moderation.decisions.models import DecisionSource, ReviewReason
from moderation.decisions.rules import failure
from moderation.decisions.service import finish_without_judging, record_decision
from moderation.pipeline.judge import ImageResult, JudgedWork, SourceImage, judge_content
from moderation.pipeline.runtime import WORKER_ACTOR, PipelineRuntime
from moderation.pipeline.shadow import ShadowRun, ShadowVersion, judge_in_shadow
from moderation.pipeline.verdicts import verdict_rows
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import document_for_version, shadow_for
from moderation.submissions import repository
from moderation.submissions.models import SubmissionImageFrame, VerdictRole

logger = logging.getLogger(__name__)

# Time kept back from the soft limit for the final write.
_STORE_MARGIN_S = 10.0


@dataclass(frozen=True)
class WorkItem:
    submission_id: uuid.UUID
    tenant_id: uuid.UUID
    lease_token: uuid.UUID
    attempt: int
    text: str | None
    policy_version_id: uuid.UUID
    policy: PolicyDocument
    images: list[SourceImage]
    # A version of the same policy that judges this submission too, without deciding.
    shadow: ShadowVersion | None = None


def moderate_submission(submission_id: uuid.UUID, runtime: PipelineRuntime) -> None:
    """Safe to run twice: a second delivery finds the row decided or leased and does nothing."""
    work = _claim(submission_id, runtime)
    if work is None:
        return
    try:
        judged = judge_content(
            work.images,
            work.text,
            work.policy,
            runtime,
            deadline=_deadline(runtime),
            cache_tenant=work.tenant_id,
        )
    except Exception as exc:
        logger.exception("moderating %s failed", submission_id)
        judged = JudgedWork(
            # Tenants read this detail: the kind of failure, not its text (which may hold SQL,
            # hosts or reprs); the traceback is in the worker's log above.
            failure(ReviewReason.internal_error),
            detail=f"internal error ({type(exc).__name__}); the worker log has the details",
        )
    if _store(work, judged, runtime) and work.shadow is not None:
        # After the live decision is committed: the shadow can neither delay nor change it.
        judge_in_shadow(
            ShadowRun(
                submission_id=work.submission_id,
                tenant_id=work.tenant_id,
                attempt=work.attempt,
                text=work.text,
                image_count=len(work.images),
                version=work.shadow,
            ),
            judged,
            runtime,
            # A time budget of its own: the submission is decided, no lease is at stake, and
            # the broker's redelivery timeout outlasts two soft limits.
            deadline=_deadline(runtime),
        )


def _deadline(runtime: PipelineRuntime) -> float:
    soft_limit = runtime.settings.task_soft_time_limit_s
    return time.monotonic() + soft_limit - min(_STORE_MARGIN_S, soft_limit * 0.2)


def _claim(submission_id: uuid.UUID, runtime: PipelineRuntime) -> WorkItem | None:
    settings = runtime.settings
    with session_scope(runtime.sessions) as session:
        submission = repository.claim(session, submission_id, timedelta(seconds=settings.lease_s))
        if submission is None:
            logger.info("submission %s is decided or held by another worker", submission_id)
            return None
        if submission.attempts > settings.max_attempts:
            finish_without_judging(
                session,
                submission,
                ReviewReason.processing_failed,
                f"gave up after {settings.max_attempts} attempts that did not finish",
            )
            return None
        record_event(
            session,
            submission.tenant_id,
            submission.id,
            "processing_started",
            WORKER_ACTOR,
            {"attempt": submission.attempts},
        )
        assert submission.lease_token is not None
        shadow = shadow_for(session, submission.policy_version_id)
        return WorkItem(
            submission_id=submission.id,
            tenant_id=submission.tenant_id,
            lease_token=submission.lease_token,
            attempt=submission.attempts,
            text=submission.text,
            policy_version_id=submission.policy_version_id,
            policy=document_for_version(session, submission.policy_version_id),
            images=[
                SourceImage(
                    source.position,
                    source.url,
                    load=functools.partial(_load_source, runtime, submission.id, source.position)
                    if source.has_data
                    else None,
                )
                for source in repository.stored_sources(session, submission.id)
            ],
            shadow=ShadowVersion(shadow[0].id, shadow[1]) if shadow is not None else None,
        )


def _load_source(runtime: PipelineRuntime, submission_id: uuid.UUID, position: int) -> bytes | None:
    with session_scope(runtime.sessions) as session:
        return repository.source_bytes(session, submission_id, position)


def _store(work: WorkItem, judged: JudgedWork, runtime: PipelineRuntime) -> bool:
    """False when the lease was lost and nothing was stored."""
    with session_scope(runtime.sessions) as session:
        submission = repository.lock_if_leased(session, work.submission_id, work.lease_token)
        if submission is None:
            # The lease ran out and another run owns the submission now; its result stands.
            logger.warning("lease on %s lost before storing; discarding", work.submission_id)
            return False
        for result in judged.images:
            _store_image(session, submission.id, result)
        session.add_all(
            verdict_rows(
                judged,
                submission_id=work.submission_id,
                policy_version_id=work.policy_version_id,
                attempt=work.attempt,
                role=VerdictRole.live,
            )
        )
        for sequence, call in enumerate(judged.calls):
            record_event(
                session,
                work.tenant_id,
                work.submission_id,
                "model_verdict",
                f"model:{call.model}",
                {
                    "sequence": sequence,
                    "rating": (call.parsed or {}).get("rating"),
                    "error": call.error,
                    "latency_ms": call.latency_ms,
                },
            )
        if judged.reused is not None:
            source = DecisionSource.cache
        else:
            source = DecisionSource.model if judged.calls else DecisionSource.system
        record_decision(
            session,
            submission,
            judged.outcome,
            source=source,
            detail=judged.detail,
            settings=runtime.settings,
        )
    return True


def _store_image(session: Session, submission_id: uuid.UUID, result: ImageResult) -> None:
    values: dict[str, Any] = {"error": result.error}
    media = result.media
    if media is not None:
        image = media.primary
        values |= {
            "data": image.data,
            "sha256": image.sha256,
            "width": image.width,
            "height": image.height,
            "mime": image.mime,
            "source_mime": image.source_mime,
            "tokens": image.tokens,
            "frame_count": media.frame_count,
        }
        if media.frame_count > 1:
            repository.replace_frames(
                session,
                submission_id,
                result.position,
                [
                    SubmissionImageFrame(
                        submission_id=submission_id,
                        position=result.position,
                        frame=frame.index,
                        time_ms=frame.time_ms,
                        data=frame.image.data,
                        sha256=frame.image.sha256,
                        width=frame.image.width,
                        height=frame.image.height,
                        mime=frame.image.mime,
                        tokens=frame.image.tokens,
                    )
                    for frame in media.frames
                ],
            )
    repository.update_image(session, submission_id, result.position, values)
