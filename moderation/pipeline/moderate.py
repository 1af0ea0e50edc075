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
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import document_for_version
from moderation.submissions import repository
from moderation.submissions.models import SubmissionImageFrame, Verdict
from moderation.vlm.client import ModelCall

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


def moderate_submission(submission_id: uuid.UUID, runtime: PipelineRuntime) -> None:
    """Safe to run twice: a second delivery finds the row decided or leased and does nothing."""
    work = _claim(submission_id, runtime)
    if work is None:
        return
    soft_limit = runtime.settings.task_soft_time_limit_s
    deadline = time.monotonic() + soft_limit - min(_STORE_MARGIN_S, soft_limit * 0.2)
    try:
        judged = judge_content(
            work.images,
            work.text,
            work.policy,
            runtime,
            deadline=deadline,
            cache_tenant=work.tenant_id,
        )
    except Exception as exc:
        logger.exception("moderating %s failed", submission_id)
        judged = JudgedWork(
            failure(ReviewReason.internal_error), detail=f"{type(exc).__name__}: {exc}"
        )
    _store(work, judged, runtime)


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
        )


def _load_source(runtime: PipelineRuntime, submission_id: uuid.UUID, position: int) -> bytes | None:
    with session_scope(runtime.sessions) as session:
        return repository.source_bytes(session, submission_id, position)


def _store(work: WorkItem, judged: JudgedWork, runtime: PipelineRuntime) -> None:
    with session_scope(runtime.sessions) as session:
        submission = repository.lock_if_leased(session, work.submission_id, work.lease_token)
        if submission is None:
            # The lease ran out and another run owns the submission now; its result stands.
            logger.warning("lease on %s lost before storing; discarding", work.submission_id)
            return
        for result in judged.images:
            _store_image(session, submission.id, result)
        for sequence, call in enumerate(judged.calls):
            session.add(_verdict_row(work, sequence, call, judged.image_refs))
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
            session.add(_reused_verdict_row(work, judged.reused, judged.image_refs))
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


def _verdict_row(
    work: WorkItem, sequence: int, call: ModelCall, image_refs: list[tuple[int, int]]
) -> Verdict:
    return Verdict(
        submission_id=work.submission_id,
        policy_version_id=work.policy_version_id,
        attempt=work.attempt,
        sequence=sequence,
        model=call.model,
        prompt_sha256=call.prompt_sha256,
        raw_output=call.raw_output,
        parsed=call.parsed,
        error=call.error,
        finish_reason=call.finish_reason,
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        latency_ms=call.latency_ms,
        rating_probability=call.rating_probability,
        image_refs=[list(ref) for ref in image_refs],
    )


def _reused_verdict_row(
    work: WorkItem, original: Verdict, image_refs: list[tuple[int, int]]
) -> Verdict:
    return Verdict(
        submission_id=work.submission_id,
        policy_version_id=work.policy_version_id,
        attempt=work.attempt,
        sequence=0,
        model=original.model,
        prompt_sha256=original.prompt_sha256,
        raw_output=original.raw_output,
        parsed=original.parsed,
        error=None,
        finish_reason=original.finish_reason,
        input_tokens=0,
        output_tokens=0,
        latency_ms=0,
        rating_probability=original.rating_probability,
        reused_from_id=original.id,
        image_refs=[list(ref) for ref in image_refs],
    )
