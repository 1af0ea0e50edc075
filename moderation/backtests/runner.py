"""The worker's side of a backtest: judge its pending items with the draft, a slice at a time.

A backtest is one row of the `jobs` table, run by the sweeper of whichever worker claims it.
Each run judges items for about MODERATION_BACKTEST_SLICE_S and then asks to be woken again at
once, so a long backtest never holds a sweeper slot for hours, and a worker that dies mid-run
loses at most the items it had in flight: the job's lease runs out, another worker claims it,
and the items still `pending` are judged there. Every item's result is written the moment it is
known, under the condition that the item is still pending, so an item judged twice (a run that
outlived its lease) is stored and counted once.

Items are judged on a small thread pool, one thread per backtest model slot of the process;
each judgement goes through `judge_content` at background priority, so it waits for live work
(see `moderation.vlm.slots`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from moderation.backtests import repository
from moderation.backtests.models import BacktestItemStatus, BacktestStatus
from moderation.backtests.repository import PendingItem
from moderation.core.time import utcnow
from moderation.database import session_scope
from moderation.decisions.models import ReviewReason
from moderation.media.decode import NormalizedFrame, NormalizedImage, NormalizedMedia
from moderation.pipeline.judge import JudgedWork, SourceImage, judge_content
from moderation.pipeline.runtime import PipelineRuntime
from moderation.policies.schemas import PolicyDocument
from moderation.policies.service import document_for_version
from moderation.submissions.models import SubmissionImage, SubmissionImageFrame
from moderation.vlm.slots import CallPriority

logger = logging.getLogger(__name__)

# How long one run of the job may take before another worker may take it over. A run stops
# taking items after the slice and gives each judgement a deadline inside the lease.
LEASE_S = 900.0
_LEASE_MARGIN_S = 30.0
# A job that keeps raising (the database is down, say) is given up after this many runs in a
# row; the backtest is then `failed` with the last error.
MAX_RUN_FAILURES = 5
# Outcomes that say the draft was never asked: try the item again later, not a result.
_NOT_JUDGED = frozenset({ReviewReason.model_unavailable, ReviewReason.internal_error})


@dataclass(frozen=True)
class _Ended:
    # Set when the model could not be reached (or no slot came free): stop feeding items and
    # try again after a delay.
    model_down: str | None = None


_STORED = _Ended()


@dataclass(frozen=True)
class _Run:
    backtest_id: uuid.UUID
    tenant_id: uuid.UUID
    draft: PolicyDocument
    # time.monotonic() values
    stop_taking_at: float
    judge_until: float


def run_backtest_job(backtest_id: uuid.UUID, runtime: PipelineRuntime) -> datetime | None:
    """One run of a backtest's job: when to run it again, or None when it has ended.

    Never raises: a run that fails is counted on the backtest and tried again with backoff, and
    after MAX_RUN_FAILURES in a row the backtest ends `failed`, so it never stays `running`
    with no job behind it.
    """
    try:
        wake_at = _run_slice(backtest_id, runtime)
    except Exception as exc:
        logger.exception("backtest %s: this run failed", backtest_id)
        return _count_run_failure(backtest_id, f"{type(exc).__name__}: {exc}"[:2000], runtime)
    return wake_at


def _run_slice(backtest_id: uuid.UUID, runtime: PipelineRuntime) -> datetime | None:
    settings = runtime.settings
    with session_scope(runtime.sessions) as session:
        backtest = repository.get(session, backtest_id)
        if backtest is None or backtest.status in (BacktestStatus.done, BacktestStatus.failed):
            return None
        repository.mark_running(session, backtest_id)
        draft = document_for_version(session, backtest.draft_version_id)
        tenant_id = backtest.tenant_id
    started = time.monotonic()
    run = _Run(
        backtest_id=backtest_id,
        tenant_id=tenant_id,
        draft=draft,
        stop_taking_at=started + settings.backtest_slice_s,
        judge_until=started + LEASE_S - _LEASE_MARGIN_S,
    )
    model_down = _judge_pending(run, runtime)
    with session_scope(runtime.sessions) as session:
        # The latest problem, for whoever reads the backtest while it waits for the model.
        repository.set_status(
            session,
            backtest_id,
            {"last_error": model_down},
            only_from={BacktestStatus.running},
        )
        left = repository.status_counts(session, [backtest_id])[backtest_id].get(
            BacktestItemStatus.pending, 0
        )
        if left == 0:
            repository.set_status(
                session,
                backtest_id,
                {"status": BacktestStatus.done, "finished_at": utcnow(), "run_failures": 0},
                only_from={BacktestStatus.queued, BacktestStatus.running},
            )
            logger.info("backtest %s done", backtest_id)
            return None
        repository.set_status(
            session, backtest_id, {"run_failures": 0}, only_from={BacktestStatus.running}
        )
    if model_down:
        return utcnow() + timedelta(seconds=settings.backtest_retry_delay_s)
    return utcnow()


def _judge_pending(run: _Run, runtime: PipelineRuntime) -> str | None:
    """Judge pending items until the slice ends or none is left; why the model was out of
    reach, if it was."""
    threads = runtime.model_slots.background_cap
    queued: deque[PendingItem] = deque()
    in_flight: dict[Future[_Ended], PendingItem] = {}
    model_down: str | None = None
    taken = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="backtest") as pool:
        while True:
            while model_down is None and len(in_flight) < threads:
                # Past the slice, no new item; but every run takes at least one, so a slow
                # start (a busy database) cannot keep a backtest from moving at all.
                if taken and time.monotonic() >= run.stop_taking_at:
                    break
                if not queued:
                    with session_scope(runtime.sessions) as session:
                        queued.extend(
                            repository.pending_items(
                                session,
                                run.backtest_id,
                                exclude={item.id for item in in_flight.values()},
                                limit=threads * 4,
                            )
                        )
                    if not queued:
                        break
                item = queued.popleft()
                in_flight[pool.submit(_judge_item, item, run, runtime)] = item
                taken += 1
            if not in_flight:
                return model_down
            finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                del in_flight[future]
                ended = future.result()
                if ended.model_down is not None:
                    model_down = ended.model_down


def _judge_item(item: PendingItem, run: _Run, runtime: PipelineRuntime) -> _Ended:
    settings = runtime.settings
    try:
        with session_scope(runtime.sessions) as session:
            text, rows, frames = repository.submission_content(session, item.submission_id)
        images = _stored_images(rows, frames)
        if isinstance(images, str):
            # Judging again needs the very bytes the live run saw; refetching could see others.
            _finish(item, runtime, status=BacktestItemStatus.skipped, error=images)
            return _STORED
        soft_limit = settings.task_soft_time_limit_s
        deadline = min(time.monotonic() + soft_limit * 0.9, run.judge_until)
        judged = judge_content(
            images,
            text,
            run.draft,
            runtime,
            deadline=deadline,
            cache_tenant=run.tenant_id,
            priority=CallPriority.background,
        )
    except Exception as exc:
        logger.exception("backtest %s: judging %s failed", run.backtest_id, item.submission_id)
        _count_failed_try(item, f"internal_error: {type(exc).__name__}: {exc}", runtime)
        return _STORED
    reason = judged.outcome.reason
    if reason in _NOT_JUDGED:
        error = f"{reason}: {judged.detail or 'no detail'}"
        # A try counts only when the model was asked: an item that waited out its deadline for
        # a slot behind live traffic (or met an open circuit) has not been tried.
        if judged.calls:
            _count_failed_try(item, error, runtime)
        return _Ended(model_down=error) if reason is ReviewReason.model_unavailable else _STORED
    _finish(item, runtime, status=BacktestItemStatus.judged, judged=judged)
    return _STORED


def _stored_images(
    rows: list[SubmissionImage], frames: list[SubmissionImageFrame]
) -> list[SourceImage] | str:
    """The normalized images as the live run stored them, every sampled frame of an animation
    included, or why one of them is missing."""
    later_frames: dict[int, list[SubmissionImageFrame]] = {}
    for frame in frames:
        if frame.frame != 0:
            later_frames.setdefault(frame.position, []).append(frame)
    images = []
    for row in rows:
        if row.data is None or row.sha256 is None or row.mime is None:
            if row.error is not None:
                return f"image_unreadable: the live run could not read image {row.position}"
            return f"images_purged: normalized image {row.position} is no longer stored"
        normalized = NormalizedImage(
            data=row.data,
            sha256=row.sha256,
            width=row.width or 0,
            height=row.height or 0,
            mime=row.mime,
            source_mime=row.source_mime or row.mime,
            tokens=row.tokens or 0,
        )
        shown = [NormalizedFrame(index=0, time_ms=None, image=normalized)]
        for frame in later_frames.get(row.position, []):
            if frame.data is None:
                return f"images_purged: frame {frame.frame} of image {row.position} is gone"
            shown.append(
                NormalizedFrame(
                    index=frame.frame,
                    time_ms=frame.time_ms,
                    image=NormalizedImage(
                        data=frame.data,
                        sha256=frame.sha256,
                        width=frame.width,
                        height=frame.height,
                        mime=frame.mime,
                        source_mime=normalized.source_mime,
                        tokens=frame.tokens,
                    ),
                )
            )
        media = NormalizedMedia(
            source_mime=normalized.source_mime,
            frame_count=row.frame_count or 1,
            duration_ms=None,
            frames=tuple(shown),
        )
        images.append(SourceImage(row.position, url=None, data=None, normalized=media))
    return images


def _finish(
    item: PendingItem,
    runtime: PipelineRuntime,
    *,
    status: BacktestItemStatus,
    judged: JudgedWork | None = None,
    error: str | None = None,
) -> None:
    values: dict[str, Any] = {"status": status, "error": error}
    if judged is not None:
        outcome = judged.outcome
        values |= {
            "draft_action": outcome.action,
            "draft_reason": outcome.reason.value if outcome.reason else None,
            "draft_categories": outcome.categories,
            "detail": judged.detail[:2000] if judged.detail else None,
            "calls": [asdict(call) for call in judged.calls] or None,
            "reused_verdict_id": judged.reused.id if judged.reused is not None else None,
            "model_calls": len(judged.calls),
            "input_tokens": sum(call.input_tokens or 0 for call in judged.calls),
            "output_tokens": sum(call.output_tokens or 0 for call in judged.calls),
        }
    with session_scope(runtime.sessions) as session:
        if not repository.finish_item(session, item.id, values):
            logger.info("backtest item %s was already finished; kept the first result", item.id)


def _count_failed_try(item: PendingItem, error: str, runtime: PipelineRuntime) -> None:
    with session_scope(runtime.sessions) as session:
        repository.count_failed_try(
            session,
            item.id,
            error[:2000],
            max_attempts=runtime.settings.backtest_item_max_attempts,
        )


def _count_run_failure(
    backtest_id: uuid.UUID, error: str, runtime: PipelineRuntime
) -> datetime | None:
    try:
        with session_scope(runtime.sessions) as session:
            backtest = repository.get(session, backtest_id, for_update=True)
            if backtest is None:
                return None
            backtest.run_failures += 1
            backtest.last_error = error
            if backtest.run_failures >= MAX_RUN_FAILURES:
                backtest.status = BacktestStatus.failed
                backtest.finished_at = utcnow()
                logger.error("backtest %s failed after %d runs", backtest_id, MAX_RUN_FAILURES)
                return None
            failures = backtest.run_failures
    except Exception:
        # The database itself is out of reach: the job is claimed again after its lease.
        logger.exception("backtest %s: could not count the failed run", backtest_id)
        return utcnow() + timedelta(seconds=60)
    return utcnow() + timedelta(seconds=min(5.0 * 2**failures, 600.0))
