"""The worker's side of a submission: claim it, judge it, store the outcome.

Every path ends in a stored decision. A run that cannot judge the content ends in `review` with
a machine-readable reason, never in `allow`, and a run that dies is picked up by the relay.
While it runs, the worker's heartbeat keeps its lease alive; an outage-caused review is
scheduled for re-drive; a database that drops away is waited for, with backoff, rather than
losing a judgement already paid for.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from moderation.audit.service import record_event
from moderation.database import session_scope, statement_scope
from moderation.decisions.models import DecisionSource, ReviewReason
from moderation.decisions.rules import failure
from moderation.decisions.service import (
    announce_decision,
    finish_without_judging,
    record_decision,
)
from moderation.pipeline import store
from moderation.pipeline.judge import ImageResult, JudgedWork, SourceImage, judge_content
from moderation.pipeline.redrive import schedule_redrive
from moderation.pipeline.runtime import WORKER_ACTOR, PipelineRuntime
from moderation.pipeline.shadow import ShadowRun, ShadowVersion, judge_in_shadow
from moderation.pipeline.verdicts import verdict_rows
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import document_for_version
from moderation.submissions import repository
from moderation.submissions.models import SubmissionImageFrame, VerdictRole
from moderation.tenants.service import TokenBudget, record_token_usage

logger = logging.getLogger(__name__)

# Time kept back from the soft limit for the final write.
_STORE_MARGIN_S = 10.0
# Waiting out a database outage: first pause, and the longest pause between two tries.
_DATABASE_RETRY_FIRST_S = 0.5
_DATABASE_RETRY_MAX_S = 8.0

_Result = TypeVar("_Result")


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
    # Why the tenant may spend no more model tokens today, if it may not.
    budget_exhausted: str | None = None
    # An earlier decision exists: storing goes through `record_decision`, which settles it.
    decided_before: bool = False
    # A decision is announced to a callback URL: stored in one transaction with its event.
    announces: bool = False


def moderate_submission(submission_id: uuid.UUID, runtime: PipelineRuntime) -> None:
    """Safe to run twice: a second delivery finds the row decided or leased and does nothing."""
    settings = runtime.settings
    # A claim that cannot reach the database waits for it (holding this message, so the worker
    # does not drain its queue meanwhile); past the relay's grace the relay re-sends anyway.
    work = _while_database_down(
        lambda: _claim(submission_id, runtime), settings.relay_grace_s, f"claiming {submission_id}"
    )
    if work is None:
        return
    with runtime.heartbeat.hold(
        work.submission_id, work.lease_token, renew_for_s=settings.task_hard_time_limit_s
    ):
        try:
            judged = judge_content(
                work.images,
                work.text,
                work.policy,
                runtime,
                deadline=_deadline(runtime),
                cache_tenant=work.tenant_id,
                budget_exhausted=work.budget_exhausted,
            )
        except Exception as exc:
            logger.exception("moderating %s failed", submission_id)
            judged = JudgedWork(
                # Tenants read this detail: the kind of failure, not its text (which may hold
                # SQL, hosts or reprs); the traceback is in the worker's log above.
                failure(ReviewReason.internal_error),
                detail=f"internal error ({type(exc).__name__}); the worker log has the details",
            )
        # The judgement is paid for: wait out a database outage of up to a lease to store it.
        # Past that, the lease has run out and another worker will judge the submission again.
        stored = _while_database_down(
            lambda: _store(work, judged, runtime), settings.lease_s, f"storing {submission_id}"
        )
    # A tenant past its token budget gets no shadow judgement either: it would spend tokens.
    if stored and work.shadow is not None and work.budget_exhausted is None:
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


def _while_database_down(
    operation: Callable[[], _Result], give_up_after_s: float, what: str
) -> _Result:
    """Run `operation`, trying again with backoff while the database cannot be reached."""
    give_up_at = time.monotonic() + give_up_after_s
    pause = _DATABASE_RETRY_FIRST_S
    while True:
        try:
            return operation()
        except DBAPIError as exc:
            if not _database_unreachable(exc) or time.monotonic() + pause > give_up_at:
                raise
            logger.warning(
                "database unreachable while %s (%s); trying again in %.1f s",
                what,
                type(exc.orig).__name__,
                pause,
            )
            time.sleep(pause)
            pause = min(pause * 2, _DATABASE_RETRY_MAX_S)


def _database_unreachable(exc: DBAPIError) -> bool:
    """A lost or refused connection, as opposed to an error in the statement itself."""
    return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)


def _claim(submission_id: uuid.UUID, runtime: PipelineRuntime) -> WorkItem | None:
    settings = runtime.settings
    # The claim is one statement, atomic by itself: no transaction around it.
    with statement_scope(runtime.sessions) as session:
        claimed = repository.claim(
            session,
            submission_id,
            timedelta(seconds=settings.lease_s),
            actor=WORKER_ACTOR,
            max_attempts=settings.max_attempts,
        )
        if claimed is None:
            logger.info("submission %s is decided or held by another worker", submission_id)
            return None
        # Attempts that ended in a decision before a re-drive do not count: only runs that died.
        if claimed.attempts - claimed.redrives > settings.max_attempts:
            _give_up(claimed.id, claimed.lease_token, runtime)
            return None
        budget = TokenBudget(budget=claimed.token_budget, used_today=claimed.tokens_today)
        shadow = claimed.shadow_version_id
        return WorkItem(
            submission_id=claimed.id,
            tenant_id=claimed.tenant_id,
            lease_token=claimed.lease_token,
            attempt=claimed.attempts,
            text=claimed.text,
            policy_version_id=claimed.policy_version_id,
            policy=document_for_version(session, claimed.policy_version_id),
            images=[
                SourceImage(
                    source.position,
                    source.url,
                    load=functools.partial(_load_source, runtime, claimed.id, source.position)
                    if source.has_data
                    else None,
                )
                for source in claimed.images
            ],
            shadow=(
                ShadowVersion(shadow, document_for_version(session, shadow))
                if shadow is not None
                else None
            ),
            budget_exhausted=budget.explain() if budget.exhausted else None,
            decided_before=claimed.decided_before,
            announces=claimed.announces,
        )


def _give_up(submission_id: uuid.UUID, lease_token: uuid.UUID, runtime: PipelineRuntime) -> None:
    """Every attempt so far died mid-run: the submission goes to a person."""
    max_attempts = runtime.settings.max_attempts
    with session_scope(runtime.sessions) as session:
        submission = repository.lock_if_leased(session, submission_id, lease_token)
        if submission is None:
            return
        finish_without_judging(
            session,
            submission,
            ReviewReason.processing_failed,
            f"gave up after {max_attempts} attempts that did not finish",
        )


def _load_source(runtime: PipelineRuntime, submission_id: uuid.UUID, position: int) -> bytes | None:
    with session_scope(runtime.sessions) as session:
        return repository.source_bytes(session, submission_id, position)


def _store(work: WorkItem, judged: JudgedWork, runtime: PipelineRuntime) -> bool:
    """False when the lease was lost and nothing was stored."""
    if store.covers(judged, work.decided_before):
        return _store_first(work, judged, runtime)
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
        for actor, data in _model_events(judged):
            record_event(session, work.tenant_id, work.submission_id, "model_verdict", actor, data)
        record_token_usage(session, work.tenant_id, judged.tokens)
        source = _decision_source(judged)
        # The window of an outage that already sent this submission to review, if one did.
        window_until: datetime | None = submission.redrive_until
        record_decision(
            session,
            submission,
            judged.outcome,
            source=source,
            detail=judged.detail,
            settings=runtime.settings,
        )
        if judged.retryable and judged.outcome.reason is not None:
            schedule_redrive(
                session,
                submission,
                judged.outcome.reason,
                runtime.settings,
                window_until=window_until,
            )
    return True


def _decision_source(judged: JudgedWork) -> DecisionSource:
    if judged.reused is not None:
        return DecisionSource.cache
    return DecisionSource.model if judged.calls else DecisionSource.system


def _model_events(judged: JudgedWork) -> list[tuple[str, dict[str, Any]]]:
    """The audit trail's note of each model call: (actor, data)."""
    return [
        (
            f"model:{call.model}",
            {
                "sequence": sequence,
                "rating": (call.parsed or {}).get("rating"),
                "error": call.error,
                "latency_ms": call.latency_ms,
            },
        )
        for sequence, call in enumerate(judged.calls)
    ]


def _store_first(work: WorkItem, judged: JudgedWork, runtime: PipelineRuntime) -> bool:
    """A first decision in one statement; with a receiver to tell, in one transaction with the
    callback event, so a decision is never stored without its announcement."""
    settings = runtime.settings
    uploads = sum(source.load is not None for source in work.images)
    source = _decision_source(judged)
    scope = session_scope if work.announces else statement_scope
    with scope(runtime.sessions) as session:
        stored = store.store_first_judgement(
            session,
            submission_id=work.submission_id,
            lease_token=work.lease_token,
            policy_version_id=work.policy_version_id,
            attempt=work.attempt,
            judged=judged,
            source=source,
            purge_originals=uploads if settings.retain_originals_days <= 0 else 0,
            review_sla_minutes=work.policy.review_sla_minutes,
            model_events=_model_events(judged),
        )
        if stored is None:
            logger.warning("lease on %s lost before storing; discarding", work.submission_id)
            return False
        if stored.announces and work.announces:
            _announce(session, judged, source, stored)
    if stored.announces and not work.announces:
        # A callback URL set between the claim and now: announced in a transaction of its own.
        with session_scope(runtime.sessions) as session:
            _announce(session, judged, source, stored)
    return True


def _announce(
    session: Session, judged: JudgedWork, source: DecisionSource, stored: store.StoredDecision
) -> None:
    outcome = judged.outcome
    announce_decision(
        session,
        stored,
        action=outcome.action,
        source=source,
        reason=outcome.reason.value if outcome.reason else None,
        categories=outcome.categories,
        decided_at=stored.decided_at,
        actor=None,
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
