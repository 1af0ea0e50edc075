"""The worker's side of SPEC §2: claim, fetch, decode, prompt, decide, store.

Every path ends in a stored decision. A run that cannot judge the content ends in `review` with
a machine-readable reason, never in `allow`, and a run that dies is picked up by the relay.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings, get_settings
from moderation.core.time import utcnow
from moderation.database import get_sessionmaker, resolve_database_url, session_scope
from moderation.decisions.rules import Outcome, ReviewReason, decide, failure
from moderation.media.decode import NormalizedImage, normalize_image
from moderation.media.errors import MediaError
from moderation.media.fetch import fetch_image
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import document_for_version
from moderation.queue import MODERATE_SUBMISSION, enqueue_after_commit
from moderation.submissions import repository
from moderation.submissions.models import (
    Action,
    Decision,
    DecisionSource,
    Submission,
    SubmissionStatus,
    Verdict,
)
from moderation.vlm.client import ModelCall, VLMClient
from moderation.vlm.prompt import ModelImage
from moderation.vlm.verdict import ModelVerdict

logger = logging.getLogger(__name__)

# Which process did the work, for the audit trail.
WORKER_ACTOR = f"worker:{socket.gethostname()}:{os.getpid()}"

# Time kept back from the soft limit for the final write.
_STORE_MARGIN_S = 10.0


@dataclass
class PipelineRuntime:
    settings: Settings
    sessions: sessionmaker[Session]
    vlm: VLMClient

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PipelineRuntime:
        settings = settings or get_settings()
        # Half the threads hold a connection at once at most (claim and store are short);
        # the overflow covers bursts, so threads + relay never wait for a connection.
        pool = max(5, settings.vlm_max_concurrency // 2 + 1)
        return cls(
            settings=settings,
            sessions=get_sessionmaker(resolve_database_url(settings), pool),
            vlm=VLMClient(settings),
        )


@dataclass(frozen=True)
class SourceImage:
    position: int
    url: str | None
    data: bytes | None


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


@dataclass
class ImageResult:
    position: int
    normalized: NormalizedImage | None = None
    error: str | None = None


@dataclass
class JudgedWork:
    outcome: Outcome
    detail: str | None = None
    images: list[ImageResult] = field(default_factory=list)
    calls: list[ModelCall] = field(default_factory=list)
    # An earlier verdict for the identical prompt, used instead of a model call.
    reused: Verdict | None = None


def moderate_submission(submission_id: uuid.UUID, runtime: PipelineRuntime) -> None:
    """Safe to run twice: a second delivery finds the row decided or leased and does nothing."""
    work = _claim(submission_id, runtime)
    if work is None:
        return
    soft_limit = runtime.settings.task_soft_time_limit_s
    deadline = time.monotonic() + soft_limit - min(_STORE_MARGIN_S, soft_limit * 0.2)
    try:
        judged = _judge(work, runtime, deadline)
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
        repository.add_audit_event(
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
                SourceImage(image.position, image.source_url, image.source_data)
                for image in repository.images_of(session, submission.id, with_source=True)
            ],
        )


def _judge(work: WorkItem, runtime: PipelineRuntime, deadline: float) -> JudgedWork:
    settings = runtime.settings
    results: list[ImageResult] = []
    for source in work.images:
        result = ImageResult(position=source.position)
        results.append(result)
        try:
            raw = (
                source.data if source.data is not None else fetch_image(source.url or "", settings)
            )
            result.normalized = normalize_image(
                raw,
                max_bytes=settings.image_max_bytes,
                max_pixels=settings.image_max_pixels,
                unit=settings.patch_unit,
                max_tokens=settings.image_token_budget,
            )
        except MediaError as exc:
            # One image we cannot see makes the whole upload unjudgeable.
            result.error = str(exc)
            return JudgedWork(
                failure(ReviewReason(exc.reason)),
                detail=f"image {source.position}: {exc}",
                images=results,
            )

    model_images = [
        ModelImage(data=r.normalized.data, mime=r.normalized.mime, sha256=r.normalized.sha256)
        for r in results
        if r.normalized is not None
    ]
    if settings.verdict_cache:
        reused = _reusable_verdict(work, model_images, runtime)
        if reused is not None:
            verdict = ModelVerdict.model_validate(reused.parsed)
            return JudgedWork(
                decide(verdict, work.policy),
                detail=verdict.rationale,
                images=results,
                reused=reused,
            )
    judgement = runtime.vlm.judge(work.policy, model_images, work.text, deadline=deadline)
    if judgement.failure_reason is not None or judgement.verdict is None:
        last_error = next((c.error for c in reversed(judgement.calls) if c.error), None)
        reason = ReviewReason(judgement.failure_reason or "invalid_model_output")
        return JudgedWork(failure(reason), detail=last_error, images=results, calls=judgement.calls)
    outcome = decide(judgement.verdict, work.policy)
    return JudgedWork(
        outcome, detail=judgement.verdict.rationale, images=results, calls=judgement.calls
    )


def _reusable_verdict(
    work: WorkItem, images: list[ModelImage], runtime: PipelineRuntime
) -> Verdict | None:
    """SPEC §2 step 5: the same images, text, policy version and model were judged before."""
    fingerprint = runtime.vlm.prompt_fingerprint(work.policy, images, work.text)
    with session_scope(runtime.sessions) as session:
        verdict = repository.find_reusable_verdict(
            session, work.tenant_id, fingerprint, runtime.vlm.model
        )
        if verdict is not None:
            session.expunge(verdict)
        return verdict


def _store(work: WorkItem, judged: JudgedWork, runtime: PipelineRuntime) -> None:
    with session_scope(runtime.sessions) as session:
        submission = repository.lock_if_leased(session, work.submission_id, work.lease_token)
        if submission is None:
            # The lease ran out and another run owns the submission now; its result stands.
            logger.warning("lease on %s lost before storing; discarding", work.submission_id)
            return
        for result in judged.images:
            values: dict[str, Any] = {"error": result.error}
            if result.normalized is not None:
                image = result.normalized
                values |= {
                    "data": image.data,
                    "sha256": image.sha256,
                    "width": image.width,
                    "height": image.height,
                    "mime": image.mime,
                    "source_mime": image.source_mime,
                    "tokens": image.tokens,
                }
            repository.update_image(session, submission.id, result.position, values)
        for sequence, call in enumerate(judged.calls):
            session.add(_verdict_row(work, sequence, call))
            repository.add_audit_event(
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
            session.add(_reused_verdict_row(work, judged.reused))
            source = DecisionSource.cache
        else:
            source = DecisionSource.model if judged.calls else DecisionSource.system
        record_decision(session, submission, judged.outcome, source=source, detail=judged.detail)


def _verdict_row(work: WorkItem, sequence: int, call: ModelCall) -> Verdict:
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
    )


def _reused_verdict_row(work: WorkItem, original: Verdict) -> Verdict:
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
    )


def record_decision(
    session: Session,
    submission: Submission,
    outcome: Outcome,
    *,
    source: DecisionSource,
    detail: str | None = None,
    actor: str | None = None,
) -> Decision:
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
    event = "review_required" if outcome.action is Action.review else "decided"
    data: dict[str, Any] = {"action": outcome.action.value, "source": source.value}
    if outcome.reason:
        data["reason"] = outcome.reason.value
    repository.add_audit_event(
        session,
        submission.tenant_id,
        submission.id,
        event,
        actor or "system",
        data,
    )
    session.flush()
    return decision


def finish_without_judging(
    session: Session, submission: Submission, reason: ReviewReason, detail: str
) -> None:
    record_decision(
        session, submission, failure(reason), source=DecisionSource.system, detail=detail
    )


def requeue_stalled_submissions(runtime: PipelineRuntime, *, limit: int = 500) -> int:
    """The relay's sweep: re-send work the broker or a worker lost. Returns how many."""
    settings = runtime.settings
    with session_scope(runtime.sessions) as session:
        if not repository.try_relay_lock(session):
            return 0
        stalled = repository.stalled(
            session, grace=timedelta(seconds=settings.relay_grace_s), limit=limit
        )
        for submission in stalled:
            lost_worker = submission.status is SubmissionStatus.processing
            if lost_worker and submission.attempts >= settings.max_attempts:
                finish_without_judging(
                    session,
                    submission,
                    ReviewReason.processing_failed,
                    f"{submission.attempts} attempts ended without a result",
                )
                continue
            submission.status = SubmissionStatus.queued
            submission.queued_at = utcnow()
            submission.lease_token = None
            submission.lease_expires_at = None
            repository.add_audit_event(
                session,
                submission.tenant_id,
                submission.id,
                "requeued",
                "relay",
                {"why": "lease_expired" if lost_worker else "not_picked_up"},
            )
            enqueue_after_commit(session, MODERATE_SUBMISSION, str(submission.id))
        return len(stalled)
